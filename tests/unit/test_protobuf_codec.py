"""The Protobuf format, checked against the schema an SDK ships (centrifuge-python's).

Our schema is written here from the protocol's field numbers; the SDK's
generated module is an independent reading of the same protocol, so a round
trip through it catches a wrong number or type on either side.
"""

from __future__ import annotations

import centrifuge.protocol.client_pb2 as sdk
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.protocol import ClientInfo, Disconnect, DisconnectCode, ErrorCode, ProtocolError
from tidings.protocol.messages import (
    BadCommand,
    Command,
    ConnectResult,
    EmptyResult,
    HistoryRequest,
    HistoryResult,
    JoinPush,
    Method,
    PresenceResult,
    Publication,
    PublishRequest,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribePush,
)
from tidings.protocol.protobuf_codec import (
    PING,
    decode_frame,
    encode_error,
    encode_push,
    encode_reply,
    read_varint,
    write_varint,
)


def delimited(*messages: object) -> bytes:
    out = b""
    for message in messages:
        body = message.SerializeToString()  # type: ignore[attr-defined]
        out += write_varint(len(body)) + body
    return out


def sdk_replies(frame: bytes) -> list[sdk.Reply]:
    replies, position = [], 0
    while position < len(frame):
        length, position = read_varint(frame, position)
        reply = sdk.Reply()
        reply.ParseFromString(frame[position : position + length])
        replies.append(reply)
        position += length
    return replies


def test_varints_round_trip() -> None:
    for value in (0, 1, 127, 128, 300, 2**32, 2**63):
        assert read_varint(write_varint(value), 0) == (value, len(write_varint(value)))


def test_decodes_several_sdk_commands_from_one_frame() -> None:
    connect = sdk.Command(id=1, connect=sdk.ConnectRequest(token="t", name="py"))
    subscribe = sdk.Command(
        id=2,
        subscribe=sdk.SubscribeRequest(channel="chat:a", recover=True, offset=7, epoch="e"),
    )
    publish = sdk.Command(id=3, publish=sdk.PublishRequest(channel="chat:a", data=b'{"x":1}'))
    history = sdk.Command(
        id=4,
        history=sdk.HistoryRequest(
            channel="chat:a", limit=-1, since=sdk.StreamPosition(offset=2, epoch="e")
        ),
    )
    pong = sdk.Command()
    commands = decode_frame(delimited(connect, subscribe, publish, history, pong))
    assert [c.id for c in commands] == [1, 2, 3, 4, 0]
    sub = commands[1]
    assert isinstance(sub, Command) and sub.request == SubscribeRequest(
        channel="chat:a", recover=True, offset=7, epoch="e"
    )
    pub = commands[2]
    assert isinstance(pub, Command) and pub.request == PublishRequest("chat:a", b'{"x":1}')
    hist = commands[3]
    assert isinstance(hist, Command) and isinstance(hist.request, HistoryRequest)
    assert hist.request.limit == -1 and hist.request.since is not None
    assert hist.request.since.offset == 2
    assert commands[4] == Command(id=0, method=None, request=None)


def test_payloads_must_be_json() -> None:
    frame = delimited(sdk.Command(id=9, publish=sdk.PublishRequest(channel="c", data=b"\xff")))
    (bad,) = decode_frame(frame)
    assert isinstance(bad, BadCommand) and bad.id == 9 and bad.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "frame",
    [
        b"\x05\x08",  # claims 5 bytes, has 1
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # endless varint
        b"\x02\xff\xff",  # not a Command
        delimited(sdk.Command(id=0, subscribe=sdk.SubscribeRequest(channel="c"))),  # no id
    ],
)
def test_malformed_frames_are_a_bad_request(frame: bytes) -> None:
    with pytest.raises(Disconnect) as raised:
        decode_frame(frame)
    assert raised.value.code == DisconnectCode.BAD_REQUEST


def test_replies_decode_with_the_sdk_schema() -> None:
    publication = Publication(
        data=b'{"n":1}', offset=5, info=ClientInfo("alice", "c1", b'{"a":1}'), tags={"k": "v"}
    )
    connect = ConnectResult(
        client="c1",
        version="1",
        expires=True,
        ttl=60,
        subs={"news": SubscribeResult(recoverable=True, epoch="e", offset=5, positioned=True)},
        ping=25,
        pong=True,
    )
    frame = b"".join(
        [
            encode_reply(1, Method.CONNECT, connect),
            encode_reply(
                2,
                Method.SUBSCRIBE,
                SubscribeResult(
                    recoverable=True,
                    epoch="e",
                    offset=5,
                    publications=(publication,),
                    recovered=True,
                    was_recovering=True,
                ),
            ),
            encode_reply(3, Method.PUBLISH, EmptyResult()),
            encode_reply(4, Method.PRESENCE, PresenceResult({"c1": ClientInfo("alice", "c1")})),
            encode_reply(5, Method.HISTORY, HistoryResult((publication,), "e", 5)),
            encode_error(6, ProtocolError.of(ErrorCode.INTERNAL)),
            encode_push("chat:a", publication),
            encode_push("chat:a", JoinPush(ClientInfo("bob", "c2"))),
            encode_push("chat:a", UnsubscribePush(2000, "server unsubscribe")),
            PING,
        ]
    )
    (c, s, p, pr, h, e, pub, join, unsub, ping) = sdk_replies(frame)
    assert c.id == 1 and c.connect.client == "c1" and c.connect.ttl == 60 and c.connect.pong
    assert c.connect.subs["news"].epoch == "e" and c.connect.subs["news"].offset == 5
    assert s.subscribe.recovered and s.subscribe.publications[0].offset == 5
    assert s.subscribe.publications[0].info.user == "alice"
    assert p.id == 3 and p.HasField("publish")
    assert pr.presence.presence["c1"].user == "alice"
    assert h.history.publications[0].data == b'{"n":1}' and h.history.offset == 5
    assert e.error.code == 100 and e.error.temporary
    assert pub.push.channel == "chat:a" and pub.push.pub.tags["k"] == "v"
    assert join.push.join.info.user == "bob"
    assert unsub.push.unsubscribe.code == 2000
    assert ping == sdk.Reply()


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(frame: bytes) -> None:
    try:
        commands = decode_frame(frame)
    except Disconnect as d:
        assert d.code == DisconnectCode.BAD_REQUEST
    else:
        assert all(isinstance(c, Command | BadCommand) for c in commands)


@FUZZ
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([m.value for m in Method]),
    st.binary(max_size=64),
    st.text(max_size=32),
)
def test_fuzz_well_framed_commands(command_id: int, method: str, data: bytes, channel: str) -> None:
    command = sdk.Command(id=command_id)
    request = getattr(command, method)
    for name, value in (("channel", channel), ("data", data)):
        if name in request.DESCRIPTOR.fields_by_name:
            setattr(request, name, value)
    request.SetInParent()
    try:
        (decoded,) = decode_frame(delimited(command))
    except Disconnect as d:
        assert d.code == DisconnectCode.BAD_REQUEST and command_id == 0
    else:
        assert decoded.id == command_id


def test_an_id_without_a_method_is_answered_as_in_json() -> None:
    (bad,) = decode_frame(delimited(sdk.Command(id=5)))
    assert isinstance(bad, BadCommand) and bad.id == 5
    assert bad.code == ErrorCode.METHOD_NOT_FOUND
