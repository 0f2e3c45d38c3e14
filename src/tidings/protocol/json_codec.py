"""The JSON format of the Centrifugo client protocol v2.

A text frame carries one or more commands separated by newlines; the server
answers with replies and pushes, also newline-separated, several to a frame.
Payload fields (``data``, ``conn_info``...) are JSON values embedded as they
are, so the codec keeps them as raw JSON bytes and embeds them back with
``orjson.Fragment`` instead of re-parsing them.

Decoding is strict about the types of known fields and ignores unknown ones,
as Protobuf and JSON decoders conventionally do (newer SDKs send extra fields).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .codes import Disconnect as DisconnectError
from .codes import DisconnectCode, ErrorCode, ProtocolError
from .messages import (
    BadCommand,
    ClientInfo,
    Command,
    ConnectRequest,
    ConnectResult,
    DisconnectPush,
    EmptyResult,
    HistoryRequest,
    HistoryResult,
    JoinPush,
    LeavePush,
    MessagePush,
    Method,
    PingRequest,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    Publication,
    PublishRequest,
    PushBody,
    RefreshRequest,
    RefreshResult,
    Request,
    Result,
    RPCRequest,
    RPCResult,
    SendRequest,
    StreamPosition,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribePush,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribePush,
    UnsubscribeRequest,
)

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

# The ping the server sends, and the pong a client answers with: an empty object.
PING = b"{}"


class _WrongType(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


Obj = Mapping[str, Any]


def _get_obj(obj: Obj, key: str) -> Obj:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _WrongType(key)
    return value


def _str(obj: Obj, key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _WrongType(key)
    return value


def _bool(obj: Obj, key: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _WrongType(key)
    return value


def _uint(obj: Obj, key: str, maximum: int = _UINT64_MAX) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    # The Protobuf JSON mapping writes 64-bit integers as strings.
    # isascii: str.isdigit() also accepts digits int() refuses ("²") or that JSON never means.
    if (
        isinstance(value, str)
        and maximum == _UINT64_MAX
        and value.isascii()
        and value.isdigit()
        and len(value) <= 20
    ):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise _WrongType(key)
    return value


def _int32(obj: Obj, key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not _INT32_MIN <= value <= _INT32_MAX
    ):
        raise _WrongType(key)
    return value


def _data(obj: Obj, key: str) -> bytes | None:
    value = obj.get(key)
    if value is None:
        return None
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels of nesting but writes only 254.
        raise _WrongType(key) from None


def _channel(obj: Obj) -> str:
    return _str(obj, "channel")


def _subscribe(obj: Obj) -> SubscribeRequest:
    return SubscribeRequest(
        channel=_channel(obj),
        token=_str(obj, "token"),
        recover=_bool(obj, "recover"),
        epoch=_str(obj, "epoch"),
        offset=_uint(obj, "offset"),
        data=_data(obj, "data"),
        positioned=_bool(obj, "positioned"),
        recoverable=_bool(obj, "recoverable"),
        join_leave=_bool(obj, "join_leave"),
    )


def _connect(obj: Obj) -> ConnectRequest:
    subs_obj = _get_obj(obj, "subs")
    subs: dict[str, SubscribeRequest] = {}
    for channel, sub in subs_obj.items():
        if not isinstance(sub, dict):
            raise _WrongType("subs")
        request = _subscribe(sub)
        subs[channel] = SubscribeRequest(
            channel=channel,
            token=request.token,
            recover=request.recover,
            epoch=request.epoch,
            offset=request.offset,
            data=request.data,
        )
    return ConnectRequest(
        token=_str(obj, "token"),
        data=_data(obj, "data"),
        subs=subs,
        name=_str(obj, "name"),
        version=_str(obj, "version"),
    )


def _publish(obj: Obj) -> PublishRequest:
    data = _data(obj, "data")
    if data is None:
        raise _WrongType("data")
    return PublishRequest(channel=_channel(obj), data=data)


def _history(obj: Obj) -> HistoryRequest:
    since_obj = obj.get("since")
    since = None
    if since_obj is not None:
        if not isinstance(since_obj, dict):
            raise _WrongType("since")
        since = StreamPosition(offset=_uint(since_obj, "offset"), epoch=_str(since_obj, "epoch"))
    return HistoryRequest(
        channel=_channel(obj),
        limit=_int32(obj, "limit"),
        since=since,
        reverse=_bool(obj, "reverse"),
    )


def _send(obj: Obj) -> SendRequest:
    data = _data(obj, "data")
    if data is None:
        raise _WrongType("data")
    return SendRequest(data=data)


_DECODERS: dict[Method, Callable[[Obj], Request]] = {
    Method.CONNECT: _connect,
    Method.SUBSCRIBE: _subscribe,
    Method.UNSUBSCRIBE: lambda o: UnsubscribeRequest(channel=_channel(o)),
    Method.PUBLISH: _publish,
    Method.PRESENCE: lambda o: PresenceRequest(channel=_channel(o)),
    Method.PRESENCE_STATS: lambda o: PresenceStatsRequest(channel=_channel(o)),
    Method.HISTORY: _history,
    Method.PING: lambda o: PingRequest(),
    Method.SEND: _send,
    Method.RPC: lambda o: RPCRequest(method=_str(o, "method"), data=_data(o, "data")),
    Method.REFRESH: lambda o: RefreshRequest(token=_str(o, "token")),
    Method.SUB_REFRESH: lambda o: SubRefreshRequest(channel=_channel(o), token=_str(o, "token")),
}

# Keys of a command that are neither its id nor a known method. A command with
# an id and only such keys asks for a method this server does not have.
_KNOWN_KEYS = frozenset(m.value for m in Method) | {"id"}


# Methods by name, and in the order that decides when a command names several.
_METHODS = {m.value: m for m in Method}
_METHOD_ORDER = tuple(Method)


def _method_of(obj: Obj) -> Method | None:
    """The method a command asks for: its one method key, the first in order if several."""
    found: Method | None = None
    for key, value in obj.items():  # a command has two keys, Method has twelve
        method = _METHODS.get(key)
        if method is not None and value is not None:
            if found is not None:
                return next(m for m in _METHOD_ORDER if obj.get(m.value) is not None)
            found = method
    return found


def _bad_request() -> DisconnectError:
    return DisconnectError.of(DisconnectCode.BAD_REQUEST)


def decode_command(line: bytes | str) -> Command | BadCommand:
    """Decode one command.

    Raises ``Disconnect`` (3501) when the command cannot even be answered: the
    line is not a JSON object, or its id is unusable. Returns ``BadCommand``
    when it can be answered with an error reply.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        # Malformed JSON, or nesting past orjson's recursion limit.
        raise _bad_request() from None
    if not isinstance(obj, dict):
        raise _bad_request()
    try:
        command_id = _uint(obj, "id", _UINT32_MAX)
    except _WrongType:
        raise _bad_request() from None

    method = _method_of(obj)
    if method is None:
        if command_id == 0:
            return Command(id=0, method=None, request=None)  # an empty command is a pong
        unknown = sorted(k for k in obj if k not in _KNOWN_KEYS)
        what = f"unknown method {unknown[0]!r}" if unknown else "no method"
        return BadCommand(command_id, int(ErrorCode.METHOD_NOT_FOUND), what)
    if command_id == 0 and method is not Method.SEND:
        # Only send expects no reply; anything else without an id cannot be answered.
        raise _bad_request()
    body = obj[method.value]
    if not isinstance(body, dict):
        return BadCommand(
            command_id, int(ErrorCode.BAD_REQUEST), f"{method.value} is not an object"
        )
    try:
        request = _DECODERS[method](body)
    except _WrongType as e:
        return BadCommand(
            command_id, int(ErrorCode.BAD_REQUEST), f"wrong type of field {e.field!r}"
        )
    return Command(id=command_id, method=method, request=request)


def decode_frame(frame: str) -> list[Command | BadCommand]:
    """Decode every newline-separated command of a text frame."""
    return [decode_command(line) for line in frame.split("\n") if line.strip()]


# --- encoding ---------------------------------------------------------------


def _raw(data: bytes | None) -> orjson.Fragment | None:
    return None if data is None else orjson.Fragment(data)


def client_info_dict(info: ClientInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"user": info.user, "client": info.client}
    if info.conn_info is not None:
        out["conn_info"] = orjson.Fragment(info.conn_info)
    if info.chan_info is not None:
        out["chan_info"] = orjson.Fragment(info.chan_info)
    return out


def publication_dict(pub: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {"data": orjson.Fragment(pub.data)}
    if pub.info is not None:
        out["info"] = client_info_dict(pub.info)
    if pub.offset:
        out["offset"] = pub.offset
    if pub.tags:
        out["tags"] = dict(pub.tags)
    if pub.time:
        out["time"] = pub.time
    return out


def _drop_defaults(out: dict[str, Any]) -> dict[str, Any]:
    """Leave out zero values, as the Protobuf JSON mapping does."""
    return {k: v for k, v in out.items() if isinstance(v, orjson.Fragment) or v}


def _subscribe_result(r: SubscribeResult) -> dict[str, Any]:
    return _drop_defaults(
        {
            "expires": r.expires,
            "ttl": r.ttl,
            "recoverable": r.recoverable,
            "epoch": r.epoch,
            "publications": [publication_dict(p) for p in r.publications],
            "recovered": r.recovered,
            "offset": r.offset,
            "positioned": r.positioned,
            "data": _raw(r.data),
            "was_recovering": r.was_recovering,
        }
    )


def _result_dict(result: Result) -> tuple[str, dict[str, Any]]:
    match result:
        case ConnectResult():
            return "connect", _drop_defaults(
                {
                    "client": result.client,
                    "version": result.version,
                    "expires": result.expires,
                    "ttl": result.ttl,
                    "data": _raw(result.data),
                    "subs": {ch: _subscribe_result(s) for ch, s in result.subs.items()},
                    "ping": result.ping,
                    "pong": result.pong,
                    "session": result.session,
                    "node": result.node,
                }
            )
        case SubscribeResult():
            return "subscribe", _subscribe_result(result)
        case PresenceResult():
            return "presence", {
                "presence": {k: client_info_dict(v) for k, v in result.presence.items()}
            }
        case PresenceStatsResult():
            return "presence_stats", {
                "num_clients": result.num_clients,
                "num_users": result.num_users,
            }
        case HistoryResult():
            return "history", _drop_defaults(
                {
                    "publications": [publication_dict(p) for p in result.publications],
                    "epoch": result.epoch,
                    "offset": result.offset,
                }
            )
        case RPCResult():
            return "rpc", _drop_defaults({"data": _raw(result.data)})
        case RefreshResult():
            return "refresh", _drop_defaults(
                {
                    "client": result.client,
                    "version": result.version,
                    "expires": result.expires,
                    "ttl": result.ttl,
                }
            )
        case SubRefreshResult():
            return "sub_refresh", _drop_defaults({"expires": result.expires, "ttl": result.ttl})
        case EmptyResult():
            raise AssertionError("EmptyResult is encoded by encode_reply with its method")


def encode_reply(command_id: int, method: Method, result: Result) -> bytes:
    """Encode the reply to a command."""
    if isinstance(result, EmptyResult):
        return orjson.dumps({"id": command_id, method.value: {}})
    key, body = _result_dict(result)
    return orjson.dumps({"id": command_id, key: body})


def encode_error(command_id: int, error: ProtocolError) -> bytes:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.temporary:
        body["temporary"] = True
    return orjson.dumps({"id": command_id, "error": body})


def push_body(body: PushBody) -> tuple[str, dict[str, Any]]:
    match body:
        case Publication():
            return "pub", publication_dict(body)
        case JoinPush():
            return "join", {"info": client_info_dict(body.info)}
        case LeavePush():
            return "leave", {"info": client_info_dict(body.info)}
        case UnsubscribePush():
            return "unsubscribe", {"code": body.code, "reason": body.reason}
        case SubscribePush():
            return "subscribe", _drop_defaults(
                {
                    "recoverable": body.recoverable,
                    "epoch": body.epoch,
                    "offset": body.offset,
                    "positioned": body.positioned,
                    "data": _raw(body.data),
                }
            )
        case MessagePush():
            return "message", {"data": orjson.Fragment(body.data)}
        case DisconnectPush():
            return "disconnect", {"code": body.code, "reason": body.reason}


def encode_push(channel: str, body: PushBody) -> bytes:
    """Encode an asynchronous push. ``channel`` is empty for connection-level pushes."""
    key, value = push_body(body)
    push: dict[str, Any] = {key: value}
    if channel:
        push = {"channel": channel, key: value}
    return orjson.dumps({"push": push})
