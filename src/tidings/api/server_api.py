"""The server API: ``POST /api/<method>`` with a JSON body, as Centrifugo's HTTP API.

Answers ``{"result": ...}`` or ``{"error": {"code", "message"}}``. Errors of the
request itself are HTTP 4xx with a JSON body: 401 for a missing or wrong key,
400 for a body that is not a JSON object, 404 for an unknown method, 413 for a
body over the size limit. Errors of the operation (an unknown channel, say)
are HTTP 200 with an error body, as Centrifugo does and ``cent`` expects;
parameters of the wrong type or missing are HTTP 400. A broker that cannot
deliver gives HTTP 503, never a false success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from ..auth.tokens import ApiKeyring
from ..brokers import BrokerUnavailable
from ..hub import Hub, personal_channel
from ..hub.cluster import NodeInfo
from ..protocol import (
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ProtocolError,
    StreamPosition,
)
from ..protocol.json_codec import client_info_dict, publication_dict

MAX_BODY = 1 << 20

Params = dict[str, Any]
ApiMethod = Callable[[Hub, Params], Awaitable[Any]]


class ApiError(Exception):
    """A request the server cannot act on: wrong or missing parameters (HTTP 400)."""

    def __init__(self, code: ErrorCode, message: str | None = None, status: int = 400) -> None:
        error = ProtocolError.of(code, message)
        super().__init__(error.message)
        self.code = error.code
        self.message = error.message
        self.status = status


def _str(params: Params, name: str, *, required: bool = True) -> str:
    value = params.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ApiError(ErrorCode.BAD_REQUEST, f"{name} must be a non-empty string")
    return value


def _int(params: Params, name: str, default: int = 0) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(ErrorCode.BAD_REQUEST, f"{name} must be an integer")
    return value


def _data(params: Params) -> bytes:
    if "data" not in params:
        raise ApiError(ErrorCode.BAD_REQUEST, "data is required")
    return orjson.dumps(params["data"])


def _tags(params: Params) -> dict[str, str] | None:
    tags = params.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise ApiError(ErrorCode.BAD_REQUEST, "tags must map strings to strings")
    return tags


def _position(position: StreamPosition) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if position.offset:
        out["offset"] = position.offset
    if position.epoch:
        out["epoch"] = position.epoch
    return out


async def api_publish(hub: Hub, params: Params) -> Any:
    channel = hub.channel(_str(params, "channel"))
    position = await hub.publish(
        channel,
        _data(params),
        tags=_tags(params),
        skip_history=bool(params.get("skip_history", False)),
    )
    return _position(position)


async def api_broadcast(hub: Hub, params: Params) -> Any:
    channels = params.get("channels")
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ApiError(ErrorCode.BAD_REQUEST, "channels must be a list of strings")
    data = _data(params)
    tags = _tags(params)
    skip_history = bool(params.get("skip_history", False))

    async def one(name: str) -> dict[str, Any]:
        try:
            position = await hub.publish(
                hub.channel(name), data, tags=tags, skip_history=skip_history
            )
        except ProtocolError as e:
            return {"error": {"code": e.code, "message": e.message}}
        return {"result": _position(position)}

    return {"responses": list(await asyncio.gather(*(one(c) for c in channels)))}


async def api_send_notification(hub: Hub, params: Params) -> Any:
    try:
        name = personal_channel(_str(params, "user"))
    except ProtocolError as e:
        raise ApiError(ErrorCode.BAD_REQUEST, e.message) from None
    channel = hub.channel(name)
    return _position(await hub.publish(channel, _data(params)))


async def api_subscribe(hub: Hub, params: Params) -> Any:
    await hub.subscribe_user(
        _str(params, "user"), _str(params, "channel"), _str(params, "client", required=False)
    )
    return {}


async def api_unsubscribe(hub: Hub, params: Params) -> Any:
    await hub.unsubscribe_user(
        _str(params, "user"), _str(params, "channel"), _str(params, "client", required=False)
    )
    return {}


async def api_disconnect(hub: Hub, params: Params) -> Any:
    reason = Disconnect.of(DisconnectCode.FORCE_NO_RECONNECT)
    custom = params.get("disconnect")
    if custom is not None:
        if not isinstance(custom, dict):
            raise ApiError(ErrorCode.BAD_REQUEST, "disconnect must be an object")
        code = _int(custom, "code", int(reason.code))
        if not 3001 <= code <= 4999:
            raise ApiError(ErrorCode.BAD_REQUEST, "disconnect code must be in 3001-4999")
        reason = Disconnect(code, str(custom.get("reason", ""))[:120])
    await hub.adisconnect_user(_str(params, "user"), reason, _str(params, "client", required=False))
    return {}


async def api_send(hub: Hub, params: Params) -> Any:
    await hub.asend_message(_str(params, "user"), _data(params))
    return {}


async def api_presence(hub: Hub, params: Params) -> Any:
    clients = await hub.presence(hub.channel(_str(params, "channel")))
    return {"presence": {k: client_info_dict(v) for k, v in clients.items()}}


async def api_presence_stats(hub: Hub, params: Params) -> Any:
    clients = await hub.presence(hub.channel(_str(params, "channel")))
    return {"num_clients": len(clients), "num_users": len({c.user for c in clients.values()})}


async def api_history(hub: Hub, params: Params) -> Any:
    since = None
    since_obj = params.get("since")
    if since_obj is not None:
        if not isinstance(since_obj, dict):
            raise ApiError(ErrorCode.BAD_REQUEST, "since must be an object")
        since = StreamPosition(_int(since_obj, "offset"), _str(since_obj, "epoch", required=False))
    result = await hub.history(
        hub.channel(_str(params, "channel")),
        limit=_int(params, "limit"),
        since=since,
        reverse=bool(params.get("reverse", False)),
    )
    out = _position(StreamPosition(result.offset, result.epoch))
    out["publications"] = [publication_dict(p) for p in result.publications]
    return out


async def api_history_remove(hub: Hub, params: Params) -> Any:
    channel = hub.channel(_str(params, "channel"))
    await hub.broker.remove_history(channel.name)
    return {}


async def api_channels(hub: Hub, params: Params) -> Any:
    # Every node's channels, asked over the control channel (see hub/cluster.py).
    counts = await hub.cluster.channels(_str(params, "pattern", required=False))
    return {"channels": {name: {"num_clients": n} for name, n in counts.items()}}


async def api_info(hub: Hub, params: Params) -> Any:
    # This node first, then every node whose heartbeat arrived lately.
    return {"nodes": [_node(n) for n in hub.cluster.nodes()]}


def _node(node: NodeInfo) -> dict[str, Any]:
    return {
        "name": node.name,
        "uid": node.uid,
        "version": node.version,
        "uptime": node.uptime,
        "num_clients": node.num_clients,
        "num_users": node.num_users,
        "num_channels": node.num_channels,
        "num_subs": node.num_subs,
    }


async def api_batch(hub: Hub, params: Params) -> Any:
    commands = params.get("commands")
    if not isinstance(commands, list):
        raise ApiError(ErrorCode.BAD_REQUEST, "commands must be a list")

    async def one(command: Any) -> dict[str, Any]:
        if not isinstance(command, dict) or len(command) != 1:
            return {"error": {"code": int(ErrorCode.BAD_REQUEST), "message": "bad command"}}
        ((name, body),) = command.items()
        method = METHODS.get(name)
        if method is None or method is api_batch or not isinstance(body, dict):
            return {
                "error": {"code": int(ErrorCode.METHOD_NOT_FOUND), "message": "method not found"}
            }
        _status, reply = await _call(hub, method, body)
        return {name: reply["result"]} if "result" in reply else reply

    if params.get("parallel"):
        replies = await asyncio.gather(*(one(c) for c in commands))
    else:
        replies = [await one(c) for c in commands]
    return {"replies": list(replies)}


METHODS: dict[str, ApiMethod] = {
    "publish": api_publish,
    "broadcast": api_broadcast,
    "send_notification": api_send_notification,
    "subscribe": api_subscribe,
    "unsubscribe": api_unsubscribe,
    "disconnect": api_disconnect,
    "send": api_send,
    "presence": api_presence,
    "presence_stats": api_presence_stats,
    "history": api_history,
    "history_remove": api_history_remove,
    "channels": api_channels,
    "info": api_info,
    "batch": api_batch,
}


def _error(code: int, message: str, temporary: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if temporary:
        body["temporary"] = True
    return {"error": body}


async def _call(hub: Hub, method: ApiMethod, params: Params) -> tuple[int, dict[str, Any]]:
    try:
        return 200, {"result": await method(hub, params)}
    except ApiError as e:
        return e.status, _error(e.code, e.message)
    except ProtocolError as e:
        return 200, _error(e.code, e.message, e.temporary)
    except BrokerUnavailable:
        return 503, _error(int(ErrorCode.INTERNAL), "broker unavailable", temporary=True)


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def api_key_matches(request: Request, keys: ApiKeyring) -> bool:
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "apikey" else ""
    # Constant time: hashed, then compared with every key's digest (see ApiKeyring).
    return keys.matches(given)


async def handle_api_request(hub: Hub, method: str, request: Request) -> Response:
    if not api_key_matches(request, hub.api_keys):
        hub.metrics.api_auth_failures += 1
        return _json(401, _error(int(ErrorCode.UNAUTHORIZED), "unauthorized"))
    api_method = METHODS.get(method)
    if api_method is None:
        return _json(404, _error(int(ErrorCode.METHOD_NOT_FOUND), "method not found"))
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return _json(413, _error(int(ErrorCode.BAD_REQUEST), "request body too large"))
    try:
        params = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        return _json(400, _error(int(ErrorCode.BAD_REQUEST), "body is not valid JSON"))
    if not isinstance(params, dict):
        return _json(400, _error(int(ErrorCode.BAD_REQUEST), "body must be a JSON object"))
    status, reply = await _call(hub, api_method, params)
    if api_method is api_batch and "result" in reply:
        reply = reply["result"]  # Centrifugo answers a batch with its replies at the top
    return _json(status, reply)
