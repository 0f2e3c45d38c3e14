"""Decoding client commands (json_codec.decode_frame / decode_command) with plain values."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from tidings.protocol import Disconnect, DisconnectCode, ErrorCode, StreamPosition
from tidings.protocol.json_codec import decode_command, decode_frame
from tidings.protocol.messages import (
    BadCommand,
    Command,
    ConnectRequest,
    HistoryRequest,
    Method,
    PingRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    RPCRequest,
    SendRequest,
    SubRefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)

UINT64_MAX = 2**64 - 1


def one(obj: Any) -> Command | BadCommand:
    return decode_command(json.dumps(obj))


def command(obj: Any) -> Command:
    result = one(obj)
    assert isinstance(result, Command), result
    return result


def bad(obj: Any) -> BadCommand:
    result = one(obj)
    assert isinstance(result, BadCommand), result
    return result


def disconnects(line: str | bytes) -> None:
    with pytest.raises(Disconnect) as info:
        decode_frame(line if isinstance(line, str) else line.decode())
    assert info.value.code == DisconnectCode.BAD_REQUEST == 3501
    assert not info.value.reconnect


# --- every command type ------------------------------------------------------


def test_connect_all_fields() -> None:
    cmd = command(
        {
            "id": 1,
            "connect": {
                "token": "tok",
                "data": {"hello": [1, 2]},
                "name": "js",
                "version": "5.0",
                "subs": {
                    "chat:a": {"recover": True, "epoch": "e1", "offset": "18446744073709551615"},
                    "news": {"offset": 7},
                },
                "newer_sdk_field": {"x": 1},
            },
        }
    )
    assert cmd.id == 1
    assert cmd.method is Method.CONNECT
    req = cmd.request
    assert isinstance(req, ConnectRequest)
    assert req.token == "tok"
    assert orjson.loads(req.data or b"") == {"hello": [1, 2]}
    assert (req.name, req.version) == ("js", "5.0")
    assert set(req.subs) == {"chat:a", "news"}
    a = req.subs["chat:a"]
    assert (a.channel, a.recover, a.epoch, a.offset) == ("chat:a", True, "e1", UINT64_MAX)
    assert req.subs["news"] == SubscribeRequest(channel="news", offset=7)


def test_connect_empty_defaults() -> None:
    cmd = command({"id": 1, "connect": {}})
    assert cmd.request == ConnectRequest()


def test_subscribe_all_fields() -> None:
    cmd = command(
        {
            "id": 2,
            "subscribe": {
                "channel": "chat:room",
                "token": "sub-token",
                "recover": True,
                "epoch": "abc",
                "offset": "42",
                "data": "raw string",
                "positioned": True,
                "recoverable": True,
                "join_leave": True,
                "delta": "fossil",  # unknown: ignored
            },
        }
    )
    assert cmd.method is Method.SUBSCRIBE
    assert cmd.request == SubscribeRequest(
        channel="chat:room",
        token="sub-token",
        recover=True,
        epoch="abc",
        offset=42,
        data=b'"raw string"',
        positioned=True,
        recoverable=True,
        join_leave=True,
    )


def test_subscribe_null_fields_are_defaults() -> None:
    cmd = command({"id": 2, "subscribe": {"channel": "a", "token": None, "offset": None}})
    assert cmd.request == SubscribeRequest(channel="a")


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(0, 0), ("0", 0), ("123", 123), (UINT64_MAX, UINT64_MAX), (str(UINT64_MAX), UINT64_MAX)],
)
def test_uint64_offsets_as_numbers_or_strings(offset: Any, expected: int) -> None:
    cmd = command({"id": 1, "subscribe": {"channel": "a", "offset": offset}})
    assert isinstance(cmd.request, SubscribeRequest)
    assert cmd.request.offset == expected


@pytest.mark.parametrize(
    "offset",
    [
        -1,
        "-1",
        UINT64_MAX + 1,
        str(UINT64_MAX + 1),
        "0" * 21,
        1.5,
        "1.5",
        "",
        " 1",
        "0x10",
        True,
        [],
        {},
        "²",  # str.isdigit() is true, int() refuses it: used to escape as ValueError
        "١٢",  # Arabic-Indic digits: int() takes them, JSON never means them
    ],
)
def test_bad_offsets_are_bad_request(offset: Any) -> None:
    result = bad({"id": 9, "subscribe": {"channel": "a", "offset": offset}})
    assert result == BadCommand(9, ErrorCode.BAD_REQUEST, "wrong type of field 'offset'")


def test_unsubscribe_publish_presence() -> None:
    assert command({"id": 3, "unsubscribe": {"channel": "c"}}).request == UnsubscribeRequest("c")
    pub = command({"id": 4, "publish": {"channel": "c", "data": {"a": 1}, "x": 0}})
    assert pub.method is Method.PUBLISH
    assert isinstance(pub.request, PublishRequest)
    assert pub.request.channel == "c"
    assert orjson.loads(pub.request.data) == {"a": 1}
    # data may be any JSON value other than null
    for value in (0, False, "", [], {}):
        req = command({"id": 4, "publish": {"channel": "c", "data": value}}).request
        assert isinstance(req, PublishRequest)
        assert orjson.loads(req.data) == value
    assert command({"id": 5, "presence": {"channel": "c"}}).request == PresenceRequest("c")
    stats = command({"id": 6, "presence_stats": {"channel": "c"}})
    assert stats.method is Method.PRESENCE_STATS
    assert stats.request == PresenceStatsRequest("c")


def test_history() -> None:
    cmd = command(
        {
            "id": 7,
            "history": {
                "channel": "c",
                "limit": -1,
                "since": {"offset": "10", "epoch": "ep", "extra": 1},
                "reverse": True,
            },
        }
    )
    assert cmd.request == HistoryRequest("c", -1, StreamPosition(10, "ep"), True)
    assert command({"id": 7, "history": {"channel": "c"}}).request == HistoryRequest("c")
    for limit in (2**31, -(2**31) - 1, "5", 1.0):
        assert bad({"id": 7, "history": {"channel": "c", "limit": limit}}).code == 107
    assert bad({"id": 7, "history": {"channel": "c", "since": 5}}).code == 107
    assert bad({"id": 7, "history": {"channel": "c", "since": {"epoch": 1}}}).code == 107


def test_ping_send_rpc_refresh_sub_refresh() -> None:
    assert command({"id": 8, "ping": {}}) == Command(8, Method.PING, PingRequest())
    send = command({"send": {"data": {"m": 1}}})  # send expects no reply: id 0 is fine
    assert send.id == 0
    assert send.method is Method.SEND
    assert isinstance(send.request, SendRequest)
    assert orjson.loads(send.request.data) == {"m": 1}
    rpc = command({"id": 9, "rpc": {"method": "sum", "data": [1, 2]}})
    assert rpc.request == RPCRequest("sum", b"[1,2]")
    assert command({"id": 9, "rpc": {}}).request == RPCRequest()
    assert command({"id": 10, "refresh": {"token": "t"}}).request == RefreshRequest("t")
    sub_refresh = command({"id": 11, "sub_refresh": {"channel": "c", "token": "t"}})
    assert sub_refresh.request == SubRefreshRequest("c", "t")


def test_payload_kept_as_compact_json_bytes() -> None:
    cmd = command({"id": 1, "publish": {"channel": "c", "data": {"ü": "€", "n": 1e3}}})
    assert isinstance(cmd.request, PublishRequest)
    assert orjson.loads(cmd.request.data) == {"ü": "€", "n": 1000.0}


# --- frames ------------------------------------------------------------------


def test_several_commands_in_one_frame() -> None:
    frame = "\n".join(
        [
            '{"id":1,"connect":{}}',
            "",
            "   ",
            '{"id":2,"subscribe":{"channel":"a"}}',
            '{"id":3,"frobnicate":{}}',
            "{}",
            '{"id":4,"ping":{}}\r',
        ]
    )
    decoded = decode_frame(frame)
    assert [type(c) for c in decoded] == [Command, Command, BadCommand, Command, Command]
    assert [c.id for c in decoded] == [1, 2, 3, 0, 4]
    assert decoded[3] == Command(0, None, None)


def test_empty_frame_is_no_command() -> None:
    assert decode_frame("") == []
    assert decode_frame("\n\n  \n") == []


@pytest.mark.parametrize("line", ["{}", '{"id":0}', '{"id":null}', '{"connect":null}'])
def test_empty_command_is_a_pong(line: str) -> None:
    assert decode_frame(line) == [Command(id=0, method=None, request=None)]


def test_unknown_fields_ignored_everywhere() -> None:
    cmd = command({"id": 1, "ping": {"zzz": [1]}, "future": True})
    assert cmd == Command(1, Method.PING, PingRequest())


# --- answered with an error reply -------------------------------------------


def test_unknown_method() -> None:
    assert bad({"id": 5, "frobnicate": {}}) == BadCommand(
        5, ErrorCode.METHOD_NOT_FOUND, "unknown method 'frobnicate'"
    )
    assert bad({"id": 5}) == BadCommand(5, ErrorCode.METHOD_NOT_FOUND, "no method")
    # A known method whose body is null counts as absent.
    assert bad({"id": 5, "subscribe": None}).code == ErrorCode.METHOD_NOT_FOUND


@pytest.mark.parametrize(
    ("method", "body", "field"),
    [
        ("subscribe", {"channel": 5}, "channel"),
        ("subscribe", {"channel": "a", "recover": "yes"}, "recover"),
        ("subscribe", {"channel": "a", "token": 1}, "token"),
        ("subscribe", {"channel": "a", "epoch": []}, "epoch"),
        ("subscribe", {"channel": "a", "positioned": 1}, "positioned"),
        ("connect", {"token": 1}, "token"),
        ("connect", {"subs": []}, "subs"),
        ("connect", {"subs": {"a": 1}}, "subs"),
        ("connect", {"subs": {"a": {"offset": -1}}}, "offset"),
        ("connect", {"name": {}}, "name"),
        ("publish", {"channel": "a"}, "data"),
        ("publish", {"channel": "a", "data": None}, "data"),
        ("publish", {"channel": ["a"], "data": 1}, "channel"),
        ("send", {}, "data"),
        ("rpc", {"method": 1}, "method"),
        ("refresh", {"token": False}, "token"),
        ("sub_refresh", {"channel": "c", "token": 0}, "token"),
        ("unsubscribe", {"channel": 1.5}, "channel"),
        ("presence", {"channel": True}, "channel"),
        ("presence_stats", {"channel": {}}, "channel"),
    ],
)
def test_wrong_field_types(method: str, body: dict[str, Any], field: str) -> None:
    result = bad({"id": 3, method: body})
    assert result == BadCommand(3, ErrorCode.BAD_REQUEST, f"wrong type of field {field!r}")


@pytest.mark.parametrize("body", [[], 1, "x", True])
def test_body_not_an_object(body: Any) -> None:
    result = bad({"id": 3, "subscribe": body})
    assert result == BadCommand(3, ErrorCode.BAD_REQUEST, "subscribe is not an object")


# --- cannot be answered: disconnect 3501 -------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "{",
        "not json",
        '{"id":1,"ping":{}',
        '{"id":1,}',
        "{'id':1}",
        "NaN",
        '{"id":1,"ping":{}} trailing',
        '"\ud800"',  # lone surrogate in a str
        "1e400",
    ],
)
def test_malformed_json(line: str) -> None:
    disconnects(line)


@pytest.mark.parametrize("line", ["[]", "[{}]", "1", '"ping"', "null", "true"])
def test_not_an_object(line: str) -> None:
    disconnects(line)


@pytest.mark.parametrize("command_id", [-1, 2**32, 1.5, "1", True, [], {}])
def test_bad_id(command_id: Any) -> None:
    disconnects(json.dumps({"id": command_id, "ping": {}}))


def test_uint32_max_id_is_fine() -> None:
    assert command({"id": 2**32 - 1, "ping": {}}).id == 2**32 - 1


@pytest.mark.parametrize("method", [m.value for m in Method if m is not Method.SEND])
def test_method_without_id(method: str) -> None:
    disconnects(json.dumps({method: {}}))
    disconnects(json.dumps({"id": 0, method: {}}))


def test_one_bad_line_rejects_the_whole_frame() -> None:
    disconnects('{"id":1,"ping":{}}\n{oops')


def test_nesting_past_the_parser_limit() -> None:
    disconnects("[" * 5000 + "]" * 5000)
    deep_data = '{"id":1,"publish":{"channel":"a","data":' + "[" * 5000 + "]" * 5000 + "}}"
    disconnects(deep_data)


def test_moderate_nesting_is_fine() -> None:
    data = "[" * 254 + "]" * 254
    cmd = command({"id": 1, "publish": {"channel": "a", "data": json.loads(data)}})
    assert isinstance(cmd.request, PublishRequest)
    assert cmd.request.data == data.encode()


@pytest.mark.parametrize("depth", [255, 500, 1020])
def test_payload_nested_deeper_than_the_encoder_writes(depth: int) -> None:
    # orjson reads 1024 levels but writes 254: such a payload used to escape as TypeError.
    nested = "[" * depth + "]" * depth
    for method, head in [
        ("publish", '{"channel":"a","data":'),
        ("connect", '{"data":'),
        ("rpc", '{"data":'),
        ("subscribe", '{"channel":"a","data":'),
    ]:
        line = '{"id":1,"' + method + '":' + head + nested + "}}"
        assert decode_command(line) == BadCommand(
            1, ErrorCode.BAD_REQUEST, "wrong type of field 'data'"
        )


def test_decode_command_accepts_bytes() -> None:
    assert decode_command(b'{"id":1,"ping":{}}') == Command(1, Method.PING, PingRequest())
