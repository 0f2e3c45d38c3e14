"""Encoding replies, errors and pushes (json_codec encoders) with plain values."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tidings.protocol import ClientInfo, ErrorCode, ProtocolError, Publication
from tidings.protocol.json_codec import (
    PING,
    encode_error,
    encode_push,
    encode_reply,
)
from tidings.protocol.messages import (
    ConnectResult,
    DisconnectPush,
    EmptyResult,
    HistoryResult,
    JoinPush,
    LeavePush,
    MessagePush,
    Method,
    PresenceResult,
    PresenceStatsResult,
    PushBody,
    RefreshResult,
    RPCResult,
    SubRefreshResult,
    SubscribePush,
    SubscribeResult,
    UnsubscribePush,
)

# Payloads are embedded byte for byte: this one has spaces orjson would never write.
RAW = b'{"a": [1, 2],  "b" : "x"}'
INFO = ClientInfo(user="alice", client="c1", conn_info=b'{"n": 1}', chan_info=b"[true]")
INFO_DICT = {"user": "alice", "client": "c1", "conn_info": {"n": 1}, "chan_info": [True]}


def parsed(data: bytes) -> Any:
    return orjson.loads(data)


# --- replies -----------------------------------------------------------------


@pytest.mark.parametrize("method", [Method.PUBLISH, Method.UNSUBSCRIBE, Method.PING])
def test_empty_result(method: Method) -> None:
    assert encode_reply(7, method, EmptyResult()) == b'{"id":7,"%s":{}}' % method.value.encode()


def test_connect_result_omits_zero_values() -> None:
    data = encode_reply(1, Method.CONNECT, ConnectResult(client="c", version="1.0"))
    assert parsed(data) == {"id": 1, "connect": {"client": "c", "version": "1.0"}}


def test_connect_result_full() -> None:
    result = ConnectResult(
        client="c",
        version="1.0",
        expires=True,
        ttl=60,
        data=RAW,
        subs={"news": SubscribeResult(recoverable=True, epoch="e", offset=3, positioned=True)},
        ping=25,
        pong=True,
        session="s",
        node="n",
    )
    data = encode_reply(1, Method.CONNECT, result)
    assert RAW in data
    assert parsed(data) == {
        "id": 1,
        "connect": {
            "client": "c",
            "version": "1.0",
            "expires": True,
            "ttl": 60,
            "data": {"a": [1, 2], "b": "x"},
            "subs": {"news": {"recoverable": True, "epoch": "e", "offset": 3, "positioned": True}},
            "ping": 25,
            "pong": True,
            "session": "s",
            "node": "n",
        },
    }


def test_subscribe_result() -> None:
    assert encode_reply(2, Method.SUBSCRIBE, SubscribeResult()) == b'{"id":2,"subscribe":{}}'
    pubs = (
        Publication(data=RAW, offset=4, info=INFO, tags={"k": "v"}, time=1700),
        Publication(data=b"1", offset=5),
    )
    result = SubscribeResult(
        expires=True,
        ttl=5,
        recoverable=True,
        epoch="ep",
        publications=pubs,
        recovered=True,
        offset=5,
        positioned=True,
        data=b"null",
        was_recovering=True,
    )
    data = encode_reply(2, Method.SUBSCRIBE, result)
    assert RAW in data
    assert parsed(data) == {
        "id": 2,
        "subscribe": {
            "expires": True,
            "ttl": 5,
            "recoverable": True,
            "epoch": "ep",
            "publications": [
                {
                    "data": {"a": [1, 2], "b": "x"},
                    "info": INFO_DICT,
                    "offset": 4,
                    "tags": {"k": "v"},
                    "time": 1700,
                },
                {"data": 1, "offset": 5},
            ],
            "recovered": True,
            "offset": 5,
            "positioned": True,
            # A raw payload is kept even when it is a JSON zero value.
            "data": None,
            "was_recovering": True,
        },
    }


def test_presence_results() -> None:
    data = encode_reply(3, Method.PRESENCE, PresenceResult({"c1": INFO}))
    assert parsed(data) == {"id": 3, "presence": {"presence": {"c1": INFO_DICT}}}
    bare = ClientInfo(user="", client="c2")
    data = encode_reply(3, Method.PRESENCE, PresenceResult({"c2": bare}))
    assert parsed(data) == {"id": 3, "presence": {"presence": {"c2": {"user": "", "client": "c2"}}}}
    data = encode_reply(4, Method.PRESENCE_STATS, PresenceStatsResult(0, 0))
    assert parsed(data) == {"id": 4, "presence_stats": {"num_clients": 0, "num_users": 0}}


def test_history_result() -> None:
    data = encode_reply(5, Method.HISTORY, HistoryResult((), "", 0))
    assert parsed(data) == {"id": 5, "history": {}}
    data = encode_reply(5, Method.HISTORY, HistoryResult((Publication(b'"x"', 1),), "e", 1))
    assert parsed(data) == {
        "id": 5,
        "history": {"publications": [{"data": "x", "offset": 1}], "epoch": "e", "offset": 1},
    }


def test_rpc_refresh_sub_refresh_results() -> None:
    assert encode_reply(6, Method.RPC, RPCResult()) == b'{"id":6,"rpc":{}}'
    assert encode_reply(6, Method.RPC, RPCResult(RAW)) == b'{"id":6,"rpc":{"data":' + RAW + b"}}"
    data = encode_reply(7, Method.REFRESH, RefreshResult(client="c", version="v"))
    assert parsed(data) == {"id": 7, "refresh": {"client": "c", "version": "v"}}
    data = encode_reply(7, Method.REFRESH, RefreshResult("c", "v", expires=True, ttl=9))
    assert parsed(data) == {
        "id": 7,
        "refresh": {"client": "c", "version": "v", "expires": True, "ttl": 9},
    }
    assert encode_reply(8, Method.SUB_REFRESH, SubRefreshResult()) == b'{"id":8,"sub_refresh":{}}'
    data = encode_reply(8, Method.SUB_REFRESH, SubRefreshResult(True, 3))
    assert parsed(data) == {"id": 8, "sub_refresh": {"expires": True, "ttl": 3}}


# --- errors ------------------------------------------------------------------


def test_error_reply() -> None:
    data = encode_error(4, ProtocolError.of(ErrorCode.PERMISSION_DENIED))
    assert parsed(data) == {"id": 4, "error": {"code": 103, "message": "permission denied"}}


@pytest.mark.parametrize("code", [ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS])
def test_temporary_error_reply(code: ErrorCode) -> None:
    data = encode_error(4, ProtocolError.of(code, "try later"))
    assert parsed(data) == {
        "id": 4,
        "error": {"code": int(code), "message": "try later", "temporary": True},
    }


def test_temporary_flag_only_on_temporary_codes() -> None:
    for code in ErrorCode:
        body = parsed(encode_error(1, ProtocolError.of(code)))["error"]
        assert body.get("temporary", False) is (code in (100, 111))
        assert body["code"] == int(code)
        assert body["message"]


# --- pushes ------------------------------------------------------------------


PUSHES: list[tuple[PushBody, str, dict[str, Any]]] = [
    (Publication(data=RAW), "pub", {"data": {"a": [1, 2], "b": "x"}}),
    (
        Publication(data=b"1", offset=9, info=INFO, tags={"t": "1"}, time=5),
        "pub",
        {"data": 1, "offset": 9, "info": INFO_DICT, "tags": {"t": "1"}, "time": 5},
    ),
    (JoinPush(INFO), "join", {"info": INFO_DICT}),
    (LeavePush(ClientInfo("u", "c")), "leave", {"info": {"user": "u", "client": "c"}}),
    (
        UnsubscribePush(2000, "server unsubscribe"),
        "unsubscribe",
        {"code": 2000, "reason": "server unsubscribe"},
    ),
    (SubscribePush(), "subscribe", {}),
    (
        SubscribePush(recoverable=True, epoch="e", offset=2, positioned=True, data=b"{}"),
        "subscribe",
        {"recoverable": True, "epoch": "e", "offset": 2, "positioned": True, "data": {}},
    ),
    (MessagePush(RAW), "message", {"data": {"a": [1, 2], "b": "x"}}),
    (DisconnectPush(3501, "bad request"), "disconnect", {"code": 3501, "reason": "bad request"}),
]


@pytest.mark.parametrize(("body", "key", "expected"), PUSHES)
def test_push_with_channel(body: PushBody, key: str, expected: dict[str, Any]) -> None:
    data = encode_push("chat:room", body)
    assert parsed(data) == {"push": {"channel": "chat:room", key: expected}}
    assert data.startswith(b'{"push":{"channel":"chat:room",')


@pytest.mark.parametrize(("body", "key", "expected"), PUSHES)
def test_push_without_channel(body: PushBody, key: str, expected: dict[str, Any]) -> None:
    assert parsed(encode_push("", body)) == {"push": {key: expected}}


def test_publication_payload_embedded_raw() -> None:
    assert (
        encode_push("c", Publication(data=RAW))
        == b'{"push":{"channel":"c","pub":{"data":' + RAW + b"}}}"
    )


def test_ping_is_an_empty_object() -> None:
    assert PING == b"{}"
