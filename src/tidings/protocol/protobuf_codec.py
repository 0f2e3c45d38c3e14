"""The Protobuf format of the Centrifugo client protocol v2.

A binary frame carries one or more messages, each prefixed by its length as
a varint. Payload fields are opaque bytes. The wire work is done by the
``protobuf`` library on the schema in ``protobuf_schema``; this module only
maps its messages to and from the protocol's dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf.message import DecodeError

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
from .protobuf_schema import MESSAGES
from .protobuf_schema import Command as CommandMessage
from .protobuf_schema import Reply as ReplyMessage

# The ping the server sends, and the pong a client answers with: an empty message.
PING = b"\x00"


def _bad_request(reason: str = "bad request") -> DisconnectError:
    return DisconnectError.of(DisconnectCode.BAD_REQUEST, reason)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """Decode a varint at ``position``; return it and the position after it."""
    result = 0
    for shift in range(0, 64, 7):
        if position >= len(data):
            raise _bad_request("truncated length")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
    raise _bad_request("length varint too long")


def write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _delimited(message: Any) -> bytes:
    body: bytes = message.SerializeToString()
    return write_varint(len(body)) + body


def _data(message: Any) -> bytes | None:
    return bytes(message.data) if message.data else None


def _subscribe(m: Any) -> SubscribeRequest:
    return SubscribeRequest(
        channel=m.channel,
        token=m.token,
        recover=m.recover,
        epoch=m.epoch,
        offset=m.offset,
        data=_data(m),
        positioned=m.positioned,
        recoverable=m.recoverable,
        join_leave=m.join_leave,
    )


def _connect(m: Any) -> ConnectRequest:
    subs = {channel: _subscribe(sub) for channel, sub in m.subs.items()}
    subs = {
        channel: SubscribeRequest(
            channel=channel, recover=s.recover, epoch=s.epoch, offset=s.offset, token=s.token
        )
        for channel, s in subs.items()
    }
    return ConnectRequest(token=m.token, data=_data(m), subs=subs, name=m.name, version=m.version)


def _history(m: Any) -> HistoryRequest:
    since = StreamPosition(m.since.offset, m.since.epoch) if m.HasField("since") else None
    return HistoryRequest(channel=m.channel, limit=m.limit, since=since, reverse=m.reverse)


def _required_data(m: Any) -> bytes:
    return bytes(m.data)


_DECODERS: dict[Method, Callable[[Any], Request]] = {
    Method.CONNECT: _connect,
    Method.SUBSCRIBE: _subscribe,
    Method.UNSUBSCRIBE: lambda m: UnsubscribeRequest(channel=m.channel),
    Method.PUBLISH: lambda m: PublishRequest(channel=m.channel, data=_required_data(m)),
    Method.PRESENCE: lambda m: PresenceRequest(channel=m.channel),
    Method.PRESENCE_STATS: lambda m: PresenceStatsRequest(channel=m.channel),
    Method.HISTORY: _history,
    Method.PING: lambda m: PingRequest(),
    Method.SEND: lambda m: SendRequest(data=_required_data(m)),
    Method.RPC: lambda m: RPCRequest(method=m.method, data=_data(m)),
    Method.REFRESH: lambda m: RefreshRequest(token=m.token),
    Method.SUB_REFRESH: lambda m: SubRefreshRequest(channel=m.channel, token=m.token),
}


def decode_command(body: bytes) -> Command | BadCommand:
    message = CommandMessage()
    try:
        message.ParseFromString(body)
    except DecodeError:
        raise _bad_request() from None
    # Take the first request present, in field-number order, as the schema says.
    method = next((m for m in Method if message.HasField(m.value)), None)
    if method is None:
        if message.id:  # as in JSON: an id asks for a reply, and no method is known
            return BadCommand(message.id, int(ErrorCode.METHOD_NOT_FOUND), "no method")
        return Command(id=0, method=None, request=None)
    if message.id == 0 and method is not Method.SEND:
        raise _bad_request()
    request = _DECODERS[method](getattr(message, method.value))
    data = getattr(request, "data", None)
    if data is not None and not _is_json(data):
        # Payloads reach JSON connections too (and handlers get them decoded),
        # so they must be JSON whatever format carried them.
        return BadCommand(message.id, int(ErrorCode.BAD_REQUEST), "data must be JSON")
    return Command(message.id, method, request)


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def decode_frame(frame: bytes) -> list[Command | BadCommand]:
    """Decode every length-delimited command of a binary frame."""
    commands: list[Command | BadCommand] = []
    position = 0
    while position < len(frame):
        length, position = read_varint(frame, position)
        end = position + length
        if end > len(frame):
            raise _bad_request("truncated message")
        commands.append(decode_command(frame[position:end]))
        position = end
    return commands


# --- encoding ---------------------------------------------------------------


def _fill_info(target: Any, info: ClientInfo) -> None:
    target.user = info.user
    target.client = info.client
    if info.conn_info is not None:
        target.conn_info = info.conn_info
    if info.chan_info is not None:
        target.chan_info = info.chan_info


def _fill_publication(target: Any, pub: Publication) -> None:
    target.data = pub.data
    if pub.info is not None:
        _fill_info(target.info, pub.info)
    target.offset = pub.offset
    if pub.tags:
        target.tags.update(pub.tags)
    target.time = pub.time


def _fill_subscribe_result(target: Any, r: SubscribeResult) -> None:
    target.expires = r.expires
    target.ttl = r.ttl
    target.recoverable = r.recoverable
    target.epoch = r.epoch
    for pub in r.publications:
        _fill_publication(target.publications.add(), pub)
    target.recovered = r.recovered
    target.offset = r.offset
    target.positioned = r.positioned
    if r.data is not None:
        target.data = r.data
    target.was_recovering = r.was_recovering


def _fill_result(reply: Any, method: Method, result: Result) -> None:
    match result:
        case EmptyResult():
            getattr(reply, method.value).SetInParent()
        case ConnectResult():
            c = reply.connect
            c.client, c.version, c.expires, c.ttl = (
                result.client,
                result.version,
                result.expires,
                result.ttl,
            )
            if result.data is not None:
                c.data = result.data
            for channel, sub in result.subs.items():
                _fill_subscribe_result(c.subs[channel], sub)
            c.ping, c.pong, c.session, c.node = (
                result.ping,
                result.pong,
                result.session,
                result.node,
            )
            c.SetInParent()
        case SubscribeResult():
            _fill_subscribe_result(reply.subscribe, result)
            reply.subscribe.SetInParent()
        case PresenceResult():
            for client_id, info in result.presence.items():
                _fill_info(reply.presence.presence[client_id], info)
            reply.presence.SetInParent()
        case PresenceStatsResult():
            reply.presence_stats.num_clients = result.num_clients
            reply.presence_stats.num_users = result.num_users
            reply.presence_stats.SetInParent()
        case HistoryResult():
            for pub in result.publications:
                _fill_publication(reply.history.publications.add(), pub)
            reply.history.epoch = result.epoch
            reply.history.offset = result.offset
            reply.history.SetInParent()
        case RPCResult():
            if result.data is not None:
                reply.rpc.data = result.data
            reply.rpc.SetInParent()
        case RefreshResult():
            r = reply.refresh
            r.client, r.version, r.expires, r.ttl = (
                result.client,
                result.version,
                result.expires,
                result.ttl,
            )
            r.SetInParent()
        case SubRefreshResult():
            reply.sub_refresh.expires = result.expires
            reply.sub_refresh.ttl = result.ttl
            reply.sub_refresh.SetInParent()


def encode_reply(command_id: int, method: Method, result: Result) -> bytes:
    reply = ReplyMessage(id=command_id)
    _fill_result(reply, method, result)
    return _delimited(reply)


def encode_error(command_id: int, error: ProtocolError) -> bytes:
    reply = ReplyMessage(id=command_id)
    reply.error.code = error.code
    reply.error.message = error.message
    reply.error.temporary = error.temporary
    return _delimited(reply)


def _fill_push(push: Any, body: PushBody) -> None:
    match body:
        case Publication():
            _fill_publication(push.pub, body)
            push.pub.SetInParent()
        case JoinPush():
            _fill_info(push.join.info, body.info)
        case LeavePush():
            _fill_info(push.leave.info, body.info)
        case UnsubscribePush():
            push.unsubscribe.code = body.code
            push.unsubscribe.reason = body.reason
        case SubscribePush():
            s = push.subscribe
            s.recoverable, s.epoch, s.offset, s.positioned = (
                body.recoverable,
                body.epoch,
                body.offset,
                body.positioned,
            )
            if body.data is not None:
                s.data = body.data
            s.SetInParent()
        case MessagePush():
            push.message.data = body.data
        case DisconnectPush():
            push.disconnect.code = body.code
            push.disconnect.reason = body.reason


def encode_push(channel: str, body: PushBody) -> bytes:
    reply = ReplyMessage()
    reply.push.channel = channel
    _fill_push(reply.push, body)
    reply.push.SetInParent()
    return _delimited(reply)


__all__ = [
    "MESSAGES",
    "PING",
    "decode_command",
    "decode_frame",
    "encode_error",
    "encode_push",
    "encode_reply",
]
