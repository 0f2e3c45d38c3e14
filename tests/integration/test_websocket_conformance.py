"""WebSocket conformance of /connection/websocket: RFC 6455 and RFC 7692, on both paths.

Written from the RFCs, grouped as the Autobahn test suite groups its cases:
framing, ping/pong, reserved bits, opcodes, fragmentation, UTF-8, close
handling, limits and permessage-deflate (and the Centrifugo formats' frame
types). Every case runs against the direct path (``websocket_direct=True``:
our own reader) and the ASGI path (uvicorn's websockets-sansio, i.e. the
websockets library's parser), which must decide alike. Where RFC 6455 leaves
a choice, the contract is what the websockets library does, decided as early
as the bytes allow (a frame too big as soon as its header is in).

A case proves a message was assembled by getting an answer to it: messages are
Centrifugo commands, mostly an ``echo`` RPC whose reply carries the command's
data back, so a wrong byte anywhere shows. A failure is observed as a client
sees it: the server's close frame and its code, then the end of the TCP
connection, promptly, while this client keeps its side open and sends nothing
(RFC 6455 7.1.7: a server fails the connection by closing it). A command
written right after the offending bytes, in the same write, must never be
answered: after failing a connection, the server processes nothing more of it.

The servers are shared by the module's tests, one per path (starting one
costs a few hundred milliseconds); each case opens connections of its own.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import centrifuge.protocol.client_pb2 as pb
import pytest
import pytest_asyncio

from tests.conftest import Running, running_server, test_settings
from tests.integration.wsclient import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1,
    RSV2,
    RSV3,
    Frame,
    Message,
    RawWebSocket,
    close_code,
    deflate_params,
    frame_bytes,
    frame_header,
    ws_client,
)
from tidings import Tidings
from tidings.protocol.protobuf_codec import read_varint, write_varint

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMIT = 4096  # max_message_size of the servers under test
REPLY_TIMEOUT = 5.0  # for anything the server must send
EOF_TIMEOUT = 1.0  # from the server's close frame to the end of its TCP connection
FOLLOW_UP_ID = 999  # the command sent after the offending bytes: never answered
PROTOBUF = "centrifuge-protobuf"
OFFERS = {
    "window": "permessage-deflate; client_max_window_bits",
    "no-context": "permessage-deflate; client_no_context_takeover",
}
CONTROL = {"ping": OP_PING, "pong": OP_PONG, "close": OP_CLOSE}


# --- servers ------------------------------------------------------------------


@asynccontextmanager
async def serve(tmp: Path, direct: bool, **overrides: Any) -> AsyncIterator[Running]:
    """A real server on one path, with an ``echo`` RPC and a small message limit."""
    values: dict[str, Any] = {
        "websocket_direct": direct,
        "allow_anonymous": True,
        "max_message_size": LIMIT,
        "compression_min_size": 0,  # the direct path compresses every reply too
        "command_rate": 100_000.0,  # some cases send a few hundred commands at once
        "command_burst": 100_000,
        "max_connections_per_user": 0,  # every client here is the anonymous user
    }
    values.update(overrides)
    tidings = Tidings(test_settings(tmp, **values))

    @tidings.rpc("echo")
    async def echo(event: Any) -> Any:
        return event.data

    async with running_server(tidings.settings, tidings) as running:
        yield running


@pytest.fixture(scope="module", params=[True, False], ids=["direct", "asgi"])
def direct(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(direct: bool, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with serve(tmp_path_factory.mktemp("conformance"), direct) as running:
        yield running


# --- messages and frames --------------------------------------------------------


def echo(command_id: int, data: Any) -> bytes:
    """A JSON command whose reply is ``{"id": command_id, "rpc": {"data": data}}``."""
    command = {"id": command_id, "rpc": {"method": "echo", "data": data}}
    return json.dumps(command, ensure_ascii=False, separators=(",", ":")).encode()


def sized_echo(command_id: int, size: int) -> bytes:
    """An echo command of exactly ``size`` bytes."""
    message = echo(command_id, "x" * (size - len(echo(command_id, ""))))
    assert len(message) == size
    return message


def proto_command(command: pb.Command) -> bytes:
    body = command.SerializeToString()
    return write_varint(len(body)) + body


def proto_echo(command_id: int, data: Any) -> bytes:
    request = pb.RPCRequest(method="echo", data=json.dumps(data).encode())
    return proto_command(pb.Command(id=command_id, rpc=request))


CONNECT = b'{"id":1,"connect":{}}'
PROTO_CONNECT = proto_command(pb.Command(id=1, connect=pb.ConnectRequest()))
FOLLOW_UP = frame_bytes(OP_TEXT, echo(FOLLOW_UP_ID, "after"))


def text(payload: bytes, **kwargs: Any) -> bytes:
    return frame_bytes(OP_TEXT, payload, **kwargs)


def fragments(opcode: int, parts: Iterable[bytes], *, rsv: int = 0, between: bytes = b"") -> bytes:
    """One message in frames of ``parts``; ``rsv`` on the first, ``between`` between each."""
    parts = list(parts)
    frames = [
        frame_bytes(
            opcode if i == 0 else OP_CONT,
            part,
            fin=i == len(parts) - 1,
            rsv=rsv if i == 0 else 0,
        )
        for i, part in enumerate(parts)
    ]
    return between.join(frames)


def split(data: bytes, *cuts: int) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


# --- what the server sends ------------------------------------------------------


def describe_close(payload: bytes) -> str:
    return f"{close_code(payload)} {payload[2:]!r}"


def check_server_frame(ws: RawWebSocket, frame: Frame) -> None:
    """What RFC 6455 and 7692 require of every frame a server sends."""
    assert not frame.masked, "the server masked a frame (RFC 6455 5.1)"
    assert not frame.rsv & (RSV2 | RSV3), f"the server set RSV2/RSV3: {frame}"
    if frame.rsv & RSV1:
        assert ws.deflate is not None, f"a compressed frame without permessage-deflate: {frame}"
        assert frame.opcode in (OP_TEXT, OP_BINARY), f"RSV1 on a control frame: {frame}"
    assert frame.fin, "the server fragmented a message (this client does not expect it)"
    if frame.opcode >= 8:
        assert len(frame.payload) <= 125, "a control frame longer than 125 bytes"


def replies_in(ws: RawWebSocket, frame: Frame) -> list[Message]:
    """The replies and pushes in a data frame, JSON or Protobuf, inflated if compressed."""
    payload = ws.inflate(frame.payload) if frame.rsv & RSV1 else frame.payload
    if frame.opcode == OP_TEXT:
        return [json.loads(line) for line in payload.decode().split("\n") if line.strip()]
    messages: list[Message] = []
    position = 0
    while position < len(payload):
        length, position = read_varint(payload, position)
        reply = pb.Reply()
        reply.ParseFromString(payload[position : position + length])
        position += length
        message: Message = {"id": reply.id}
        if reply.HasField("error"):
            message["error"] = {"code": reply.error.code, "message": reply.error.message}
        if reply.HasField("connect"):
            message["connect"] = {"client": reply.connect.client}
        if reply.HasField("rpc"):
            message["rpc"] = {"data": json.loads(reply.rpc.data)}
        messages.append(message)
    return messages


async def exchange(
    ws: RawWebSocket, *, replies: Iterable[int] = (), pongs: int = 0
) -> tuple[dict[int, Message], list[bytes]]:
    """Read until every id in ``replies`` is answered and ``pongs`` pongs came; fail on a close."""
    wanted = set(replies)
    got: dict[int, Message] = {}
    pong_payloads: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPLY_TIMEOUT
    while not wanted <= got.keys() or len(pong_payloads) < pongs:
        try:
            frame = await ws.read_raw_frame(max(0.0, deadline - loop.time()))
        except TimeoutError:
            missing = sorted(wanted - got.keys())
            raise AssertionError(
                f"no reply to {missing}, {len(pong_payloads)}/{pongs} pongs within {REPLY_TIMEOUT}s"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            raise AssertionError("the server closed TCP without a close frame") from None
        check_server_frame(ws, frame)
        if frame.opcode == OP_CLOSE:
            raise AssertionError(f"the server closed with {describe_close(frame.payload)}")
        if frame.opcode == OP_PONG:
            pong_payloads.append(frame.payload)
        elif frame.opcode in (OP_TEXT, OP_BINARY):
            for message in replies_in(ws, frame):
                if "id" in message:
                    got[message["id"]] = message
    return got, pong_payloads


async def echoed(ws: RawWebSocket, expected: dict[int, Any], pongs: int = 0) -> list[bytes]:
    """Each echo command in ``expected`` (id: data) answered with its data; the pongs read."""
    got, pong_payloads = await exchange(ws, replies=expected, pongs=pongs)
    for command_id, data in expected.items():
        assert got[command_id] == {"id": command_id, "rpc": {"data": data}}, got[command_id]
    return pong_payloads


async def server_closes(
    ws: RawWebSocket, code: int, *, answer: bool = False, payload: bytes | None = None
) -> list[Frame]:
    """The server's close frame with ``code``, then the end of TCP within EOF_TIMEOUT.

    This client sends nothing meanwhile, unless ``answer``: then it answers
    the close frame with its own, as a server-initiated closing handshake
    expects. Returns the frames that came before the close frame; none may
    answer the follow-up command.
    """
    before: list[Frame] = []
    while True:
        try:
            frame = await ws.read_raw_frame(REPLY_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"no close frame within {REPLY_TIMEOUT}s (want {code})") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            raise AssertionError(f"TCP closed without a close frame (want {code})") from None
        check_server_frame(ws, frame)
        if frame.opcode == OP_CLOSE:
            break
        before.append(frame)
    assert close_code(frame.payload) == code, f"closed with {describe_close(frame.payload)}"
    if payload is not None:
        assert frame.payload == payload
    frame.payload[2:].decode()  # the reason is UTF-8 (RFC 6455 5.5.1)
    if answer:
        await ws.send_frame(OP_CLOSE, frame.payload[:2])
    after = await ws.frames_until_eof(EOF_TIMEOUT)
    assert after == [], f"the server sent frames after its close frame: {after}"
    answered = {
        m.get("id") for f in before if f.opcode in (OP_TEXT, OP_BINARY) for m in replies_in(ws, f)
    }
    assert FOLLOW_UP_ID not in answered, "a command after the failure was processed"
    return before


async def fails(ws: RawWebSocket, bad: bytes, code: int, *, follow_up: bool = True) -> None:
    """Send ``bad`` (then a command, in the same write): the server fails the connection."""
    await ws.send_raw(bad + (FOLLOW_UP if follow_up else b""))
    await server_closes(ws, code)


@asynccontextmanager
async def client(
    server: Running, *, offer: str | None = None, protobuf: bool = False, connect: bool = True
) -> AsyncIterator[RawWebSocket]:
    """A raw client, connected (anonymously) unless told not to."""
    headers = {}
    if offer is not None:
        headers["Sec-WebSocket-Extensions"] = offer
    if protobuf:
        headers["Sec-WebSocket-Protocol"] = PROTOBUF
    ws = await RawWebSocket.open(server.host, server.port, headers=headers)
    try:
        if connect:
            if protobuf:
                await ws.send_frame(OP_BINARY, PROTO_CONNECT)
            else:
                await ws.send_frame(OP_TEXT, CONNECT)
            got, _ = await exchange(ws, replies=[1])
            assert "connect" in got[1], got[1]
        yield ws
    finally:
        ws.close()


# --- 1. framing -------------------------------------------------------------------


@pytest.mark.parametrize("size", [60, 125, 126, 127, 128, 1000, LIMIT - 1, LIMIT])
async def test_text_message_sizes(server: Running, size: int) -> None:
    """7-bit and 16-bit payload lengths, up to max_message_size itself."""
    async with client(server) as ws:
        message = sized_echo(2, size)
        await ws.send_frame(OP_TEXT, message)
        await echoed(ws, {2: json.loads(message)["rpc"]["data"]})


@pytest.mark.parametrize("size", [125, 126, 127, 1000, LIMIT])
async def test_binary_message_sizes(server: Running, size: int) -> None:
    """Binary frames (a Protobuf connection) around the length encodings."""
    async with client(server, protobuf=True) as ws:
        data = ""
        while len(proto_echo(2, data)) < size:
            data += "x"
        message = proto_echo(2, data)
        assert len(message) == size
        await ws.send_frame(OP_BINARY, message)
        await echoed(ws, {2: data})


async def test_empty_text_message_is_ignored(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_raw(text(b"") + text(echo(2, "after empty")))
        await echoed(ws, {2: "after empty"})


@pytest.mark.parametrize("size", [60, 300])
async def test_frame_written_one_byte_at_a_time(server: Running, size: int) -> None:
    async with client(server) as ws:
        message = sized_echo(2, size)
        await ws.send_chopped(text(message))
        await echoed(ws, {2: json.loads(message)["rpc"]["data"]})


async def test_frames_pipelined_in_one_write(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_raw(
            text(echo(2, "a"))
            + frame_bytes(OP_PING, b"p")
            + text(echo(3, "b"))
            + text(echo(4, "c"))
        )
        assert await echoed(ws, {2: "a", 3: "b", 4: "c"}, pongs=1) == [b"p"]


@pytest.mark.parametrize(
    "mask",
    [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04"],
    ids=["zero", "ff", "1234"],
)
async def test_masking_keys(server: Running, mask: bytes) -> None:
    async with client(server) as ws:
        await ws.send_raw(
            text(echo(2, "masked"), mask=mask) + frame_bytes(OP_PING, b"pp", mask=mask)
        )
        assert await echoed(ws, {2: "masked"}, pongs=1) == [b"pp"]


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_PING, OP_CLOSE], ids=["text", "ping", "close"])
async def test_unmasked_frame(server: Running, opcode: int) -> None:
    payload = {OP_TEXT: echo(2, "x"), OP_PING: b"p", OP_CLOSE: close_payload(1000)}[opcode]
    async with client(server) as ws:
        await fails(ws, frame_bytes(opcode, payload, masked=False), 1002)


async def test_binary_frame_on_json_connection(server: Running) -> None:
    """A protocol-level bad request (3501), closed with a closing handshake."""
    async with client(server) as ws:
        await ws.send_raw(frame_bytes(OP_BINARY, b"\x00\x01garbage") + FOLLOW_UP)
        await server_closes(ws, 3501, answer=True)


async def test_text_frame_on_protobuf_connection(server: Running) -> None:
    async with client(server, protobuf=True) as ws:
        assert ws.response_headers.get("sec-websocket-protocol") == PROTOBUF
        await ws.send_raw(text(CONNECT) + frame_bytes(OP_BINARY, proto_echo(FOLLOW_UP_ID, 1)))
        await server_closes(ws, 3501, answer=True)


# --- 2. ping and pong -------------------------------------------------------------

PING_PAYLOADS = {
    "empty": b"",
    "one": b"x",
    "text": b"Hello, world!",
    "binary": bytes(range(125)),
    "invalid-utf8": b"\xff\xfe\xc0\xaf" * 31,
    "max": b"\xfe" * 125,
}


@pytest.mark.parametrize("payload", PING_PAYLOADS.values(), ids=PING_PAYLOADS.keys())
async def test_ping_answered_with_identical_pong(server: Running, payload: bytes) -> None:
    async with client(server) as ws:
        await ws.send_frame(OP_PING, payload)
        _, pongs = await exchange(ws, pongs=1)
        assert pongs == [payload]


async def test_pings_in_a_row_answered_in_order(server: Running) -> None:
    """Ten pings in one write, ten pongs: websockets' choice (RFC 6455 5.5.3 allows just one)."""
    async with client(server) as ws:
        payloads = [f"ping {i}".encode() for i in range(10)]
        await ws.send_raw(b"".join(frame_bytes(OP_PING, p) for p in payloads))
        _, pongs = await exchange(ws, pongs=10)
        assert pongs == payloads


async def test_ping_written_one_byte_at_a_time(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_chopped(frame_bytes(OP_PING, b"chopped ping"))
        _, pongs = await exchange(ws, pongs=1)
        assert pongs == [b"chopped ping"]


@pytest.mark.parametrize("payload", [b"", b"u" * 125], ids=["empty", "max"])
async def test_unsolicited_pong_is_ignored(server: Running, payload: bytes) -> None:
    async with client(server) as ws:
        await ws.send_raw(frame_bytes(OP_PONG, payload) + text(echo(2, "after pong")))
        assert await echoed(ws, {2: "after pong"}) == []


@pytest.mark.parametrize("opcode", CONTROL.values(), ids=CONTROL.keys())
async def test_control_frame_too_long(server: Running, opcode: int) -> None:
    payload = close_payload(1000, b"r" * 124) if opcode == OP_CLOSE else b"p" * 126
    assert len(payload) == 126
    async with client(server) as ws:
        await fails(ws, frame_bytes(opcode, payload), 1002)


@pytest.mark.parametrize("opcode", CONTROL.values(), ids=CONTROL.keys())
async def test_control_frame_fragmented(server: Running, opcode: int) -> None:
    payload = close_payload(1000) if opcode == OP_CLOSE else b"pi"
    async with client(server) as ws:
        await fails(ws, fragments(opcode, split(payload, 1)), 1002)


# --- 3. reserved bits -----------------------------------------------------------------

RSV_COMBINATIONS = {
    "rsv1": RSV1,
    "rsv2": RSV2,
    "rsv3": RSV3,
    "rsv12": RSV1 | RSV2,
    "rsv13": RSV1 | RSV3,
    "rsv23": RSV2 | RSV3,
    "rsv123": RSV1 | RSV2 | RSV3,
}
RSV_FRAMES = {
    "text": (OP_TEXT, echo(2, "x")),
    "binary": (OP_BINARY, b"\x00\x01\x02"),
    "ping": (OP_PING, b"p"),
    "pong": (OP_PONG, b"p"),
    "close": (OP_CLOSE, close_payload(1000)),
}


@pytest.mark.parametrize("rsv", RSV_COMBINATIONS.values(), ids=RSV_COMBINATIONS.keys())
@pytest.mark.parametrize("kind", RSV_FRAMES)
async def test_reserved_bits_without_extension(server: Running, kind: str, rsv: int) -> None:
    """No extension was negotiated: any reserved bit fails the connection."""
    opcode, payload = RSV_FRAMES[kind]
    async with client(server) as ws:
        await fails(ws, frame_bytes(opcode, payload, rsv=rsv), 1002)


async def test_reserved_bit_after_a_valid_message(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_frame(OP_TEXT, echo(2, "valid"))
        await echoed(ws, {2: "valid"})
        await fails(ws, text(echo(3, "x"), rsv=RSV2), 1002)


# --- 4. opcodes ---------------------------------------------------------------------

RESERVED_OPCODES = [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]


@pytest.mark.parametrize("payload", [b"", b"reserved"], ids=["empty", "payload"])
@pytest.mark.parametrize("opcode", RESERVED_OPCODES, ids=[f"op{o:x}" for o in RESERVED_OPCODES])
async def test_reserved_opcode(server: Running, opcode: int, payload: bytes) -> None:
    async with client(server) as ws:
        await fails(ws, frame_bytes(opcode, payload), 1002)


async def test_reserved_opcode_after_valid_message_and_ping(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_raw(text(echo(2, "valid")) + frame_bytes(OP_PING, b"p1"))
        assert await echoed(ws, {2: "valid"}, pongs=1) == [b"p1"]
        await fails(ws, frame_bytes(5, b"") + frame_bytes(OP_PING, b"p2"), 1002)


# --- 5. fragmentation -----------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 10, 0], ids=["2", "3", "10", "bytewise"])
async def test_text_in_fragments(server: Running, count: int) -> None:
    message = echo(2, "fragmented")
    parts = bytewise(message) if count == 0 else split(message, *range(1, count))
    async with client(server) as ws:
        await ws.send_raw(fragments(OP_TEXT, parts))
        await echoed(ws, {2: "fragmented"})


async def test_fragments_written_one_byte_at_a_time(server: Running) -> None:
    message = echo(2, "chopped fragments")
    async with client(server) as ws:
        await ws.send_chopped(fragments(OP_TEXT, split(message, 10, 20)))
        await echoed(ws, {2: "chopped fragments"})


@pytest.mark.parametrize("chopped", [False, True], ids=["whole", "chopped"])
@pytest.mark.parametrize("pings", [1, 3])
async def test_pings_between_fragments(server: Running, pings: int, chopped: bool) -> None:
    """Control frames may come between a message's fragments (RFC 6455 5.4).

    Every ping gets its pong, as websockets answers them: with several pings
    in a row, RFC 6455 5.5.3 would also allow answering only the latest.
    """
    parts = split(echo(2, "with pings"), *[5, 15, 25][:pings])
    pings_sent = [f"mid {i}".encode() for i in range(pings)]
    data = b"".join(
        frame_bytes(OP_TEXT if i == 0 else OP_CONT, part, fin=i == pings)
        + (frame_bytes(OP_PING, pings_sent[i]) if i < pings else b"")
        for i, part in enumerate(parts)
    )
    async with client(server) as ws:
        await (ws.send_chopped(data) if chopped else ws.send_raw(data))
        assert await echoed(ws, {2: "with pings"}, pongs=pings) == pings_sent


async def test_pongs_between_fragments(server: Running) -> None:
    message = echo(2, "with pongs")
    async with client(server) as ws:
        await ws.send_raw(
            fragments(OP_TEXT, split(message, 5, 15), between=frame_bytes(OP_PONG, b""))
        )
        assert await echoed(ws, {2: "with pongs"}) == []


@pytest.mark.parametrize("where", ["first", "middle", "last"])
async def test_empty_fragments(server: Running, where: str) -> None:
    message = echo(2, "empty fragment")
    parts = {
        "first": [b"", message],
        "middle": [message[:10], b"", b"", message[10:]],
        "last": [message, b""],
    }[where]
    async with client(server) as ws:
        await ws.send_raw(fragments(OP_TEXT, parts))
        await echoed(ws, {2: "empty fragment"})


@pytest.mark.parametrize("fin", [True, False], ids=["fin", "nofin"])
async def test_continuation_without_a_message(server: Running, fin: bool) -> None:
    async with client(server) as ws:
        await fails(ws, frame_bytes(OP_CONT, echo(2, "x"), fin=fin), 1002)


async def test_continuation_after_a_finished_message(server: Running) -> None:
    message = echo(2, "done")
    async with client(server) as ws:
        await ws.send_raw(fragments(OP_TEXT, split(message, 10)))
        await echoed(ws, {2: "done"})
        await fails(ws, frame_bytes(OP_CONT, b"more", fin=True), 1002)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
@pytest.mark.parametrize("fin", [True, False], ids=["fin", "nofin"])
async def test_new_message_inside_a_fragmented_one(server: Running, opcode: int, fin: bool) -> None:
    message = echo(2, "interrupted")
    async with client(server) as ws:
        bad = text(message[:10], fin=False) + frame_bytes(opcode, message[10:], fin=fin)
        await fails(ws, bad, 1002)


async def test_close_inside_a_fragmented_message(server: Running) -> None:
    """A close while a message is incomplete: websockets fails the connection (1002)."""
    message = echo(2, "unfinished")
    async with client(server) as ws:
        bad = text(message[:10], fin=False) + frame_bytes(OP_CLOSE, close_payload(1000))
        await fails(ws, bad, 1002)


async def test_fragmented_binary_on_json_connection(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_raw(fragments(OP_BINARY, [b"\x00", b"\x01", b"\x02"]) + FOLLOW_UP)
        await server_closes(ws, 3501, answer=True)


async def test_fragmented_binary_message(server: Running) -> None:
    """A Protobuf command one byte per fragment, then split at every byte in two."""
    async with client(server, protobuf=True) as ws:
        message = proto_echo(100, "binary fragments")
        data = fragments(OP_BINARY, bytewise(message))
        expected = {100: "binary fragments"}
        for i in range(1, len(message)):
            message = proto_echo(100 + i, "binary fragments")
            data += fragments(OP_BINARY, split(message, i))
            expected[100 + i] = "binary fragments"
        await ws.send_raw(data)
        await echoed(ws, expected)


# --- 6. UTF-8 -----------------------------------------------------------------------------

VALID_TEXTS = {
    "kosme": "\u03ba\u1f79\u03c3\u03bc\u03b5",
    "2-byte": "\u0080\u00e9\u07ff",
    "3-byte": "\u0800\u20ac\ud7ff\ue000\ufeff\ufffd\uffff",
    "4-byte": "\U00010000\U0001d11e\U0010ffff",
    "mixed": "a\u00e9\u20ac\U0001d11e\u007f",
}


@pytest.mark.parametrize("data", VALID_TEXTS.values(), ids=VALID_TEXTS.keys())
async def test_valid_utf8_split_at_every_byte(server: Running, data: str) -> None:
    """Whole, split in two at every byte, and one byte per fragment: all echoed intact."""
    whole = echo(100, data)
    assert len(whole) < 100  # ids 100..199 keep every message the same length
    frames = [text(whole)]
    expected = {100: data}
    for i in range(1, len(whole)):
        frames.append(fragments(OP_TEXT, split(echo(100 + i, data), i)))
        expected[100 + i] = data
    last = 100 + len(whole)
    frames.append(fragments(OP_TEXT, bytewise(echo(last, data))))
    expected[last] = data
    async with client(server) as ws:
        await ws.send_raw(b"".join(frames))
        await echoed(ws, expected)


INVALID_UTF8 = {
    "lone-continuation": b"\x80",
    "continuations": b"\x80\xbf\x80\xbf",
    "start-then-space": b"\xc3 ",
    "truncated-3": b"\xe2\x82",
    "truncated-4": b"\xf0\x9d\x84",
    "overlong-2": b"\xc0\xaf",
    "overlong-2-max": b"\xc1\xbf",
    "overlong-3": b"\xe0\x80\xaf",
    "overlong-4": b"\xf0\x80\x80\xaf",
    "surrogate-high": b"\xed\xa0\x80",
    "surrogate-low": b"\xed\xbf\xbf",
    "surrogate-pair": b"\xed\xa0\x80\xed\xb0\x80",
    "above-10ffff": b"\xf4\x90\x80\x80",
    "5-byte": b"\xf8\x88\x80\x80\x80",
    "6-byte": b"\xfc\x84\x80\x80\x80\x80",
    "fe": b"\xfe",
    "ff": b"\xff",
}


def invalid_message(sequence: bytes) -> bytes:
    return b'{"id":2,"rpc":{"method":"echo","data":"\xce\xba' + sequence + b'\xce\xba"}}'


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("sequence", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
async def test_invalid_utf8(server: Running, sequence: bytes, mode: str) -> None:
    message = invalid_message(sequence)
    bad = text(message) if mode == "whole" else fragments(OP_TEXT, bytewise(message))
    async with client(server) as ws:
        await fails(ws, bad, 1007)


@pytest.mark.parametrize("sequence", [b"\xe2\x82", b"\xf0\x9d\x84", b"\xce"], ids=["3", "4", "2"])
@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
async def test_utf8_truncated_at_end_of_message(
    server: Running, sequence: bytes, fragmented: bool
) -> None:
    message = b'{"id":2,"rpc":{"method":"echo","data":"' + sequence
    parts = [message[:-1], message[-1:], b""] if fragmented else [message]
    async with client(server) as ws:
        await fails(ws, fragments(OP_TEXT, parts), 1007)


async def test_invalid_utf8_after_valid_messages(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_raw(
            text(echo(2, "\u00e9")) + fragments(OP_TEXT, split(echo(3, "\u20ac"), 40))
        )
        await echoed(ws, {2: "\u00e9", 3: "\u20ac"})
        await fails(ws, fragments(OP_TEXT, split(invalid_message(b"\xc0\xaf"), 41)), 1007)


# --- 7. close handling ------------------------------------------------------------------


async def test_close_without_payload(server: Running) -> None:
    """An empty close is answered with an empty close (1005 as the client sees it)."""
    async with client(server) as ws:
        await ws.send_frame(OP_CLOSE, b"")
        before = await server_closes(ws, 1005, payload=b"")
        assert before == []


VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
async def test_close_code_answered(server: Running, code: int) -> None:
    async with client(server) as ws:
        await ws.send_frame(OP_CLOSE, close_payload(code))
        await server_closes(ws, code)


@pytest.mark.parametrize(
    "reason", [b"bye", "\u00e9\u20ac\U0001d11e".encode(), b"r" * 123], ids=["ascii", "utf8", "max"]
)
async def test_close_with_reason(server: Running, reason: bytes) -> None:
    async with client(server) as ws:
        await ws.send_frame(OP_CLOSE, close_payload(1000, reason))
        await server_closes(ws, 1000)


INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
async def test_close_with_invalid_code(server: Running, code: int) -> None:
    async with client(server) as ws:
        await fails(ws, frame_bytes(OP_CLOSE, close_payload(code)), 1002)


async def test_close_with_one_byte_payload(server: Running) -> None:
    async with client(server) as ws:
        await fails(ws, frame_bytes(OP_CLOSE, b"\x03"), 1002)


@pytest.mark.parametrize("reason", [b"\xff", b"\xce\xba\xe1\xbd", b"\xed\xa0\x80"])
async def test_close_reason_invalid_utf8(server: Running, reason: bytes) -> None:
    async with client(server) as ws:
        await fails(ws, frame_bytes(OP_CLOSE, close_payload(1000, reason)), 1007)


async def test_nothing_processed_after_close(server: Running) -> None:
    """After the client's close, its later frames are discarded: no reply, no pong."""
    async with client(server) as ws:
        await ws.send_raw(
            frame_bytes(OP_CLOSE, close_payload(1000))
            + FOLLOW_UP
            + frame_bytes(OP_PING, b"late")
            + frame_bytes(OP_CLOSE, close_payload(1001))
        )
        before = await server_closes(ws, 1000)
        assert before == []


async def test_close_after_a_message(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_frame(OP_TEXT, echo(2, "last words"))
        await echoed(ws, {2: "last words"})
        await ws.send_frame(OP_CLOSE, close_payload(1000))
        await server_closes(ws, 1000)


async def test_close_written_one_byte_at_a_time(server: Running) -> None:
    async with client(server) as ws:
        await ws.send_chopped(frame_bytes(OP_CLOSE, close_payload(4001, b"chopped")))
        await server_closes(ws, 4001)


# --- 9. limits ----------------------------------------------------------------------------

BIG_LENGTHS = {
    "16bit": LIMIT + 1,
    "16bit-max": 65535,
    "64bit": 65536,
    "64bit-huge": 1 << 40,
    "64bit-msb": 1 << 63,
}


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
@pytest.mark.parametrize("length", BIG_LENGTHS.values(), ids=BIG_LENGTHS.keys())
async def test_message_too_big_refused_at_its_header(
    server: Running, opcode: int, length: int
) -> None:
    """1009 as soon as the header is in: the payload is never sent."""
    async with client(server) as ws:
        header = frame_header(opcode, length, mask=b"\x11\x22\x33\x44")
        await fails(ws, header, 1009, follow_up=False)


@pytest.mark.parametrize("opcode", CONTROL.values(), ids=CONTROL.keys())
async def test_control_frame_declared_bigger_than_the_limit(server: Running, opcode: int) -> None:
    async with client(server) as ws:
        header = frame_header(opcode, LIMIT + 1, mask=b"\x11\x22\x33\x44")
        await fails(ws, header, 1009, follow_up=False)


async def test_fragmented_message_at_the_limit(server: Running) -> None:
    message = sized_echo(2, LIMIT)
    async with client(server) as ws:
        await ws.send_raw(fragments(OP_TEXT, split(message, 2000, 4000)))
        await echoed(ws, {2: json.loads(message)["rpc"]["data"]})


async def test_fragmented_message_too_big(server: Running) -> None:
    """Two fragments of 2000 bytes, then the header of one that crosses the limit."""
    async with client(server) as ws:
        bad = (
            text(b"x" * 2000, fin=False)
            + frame_bytes(OP_CONT, b"x" * 2000, fin=False)
            + frame_header(OP_CONT, LIMIT - 4000 + 1, mask=b"\x11\x22\x33\x44")
        )
        await fails(ws, bad, 1009, follow_up=False)


def many_fragments(message: bytes, count: int, *, fin: bool = True) -> bytes:
    """``message`` in ``count`` frames: one byte each then empty ones, or cut evenly."""
    if len(message) <= count:
        parts = bytewise(message) + [b""] * (count - len(message))
    else:
        parts = split(message, *(len(message) * i // count for i in range(1, count)))
    frames = [
        frame_bytes(OP_TEXT if i == 0 else OP_CONT, part, fin=fin and i == count - 1)
        for i, part in enumerate(parts)
    ]
    return b"".join(frames)


async def test_fragment_cap_default(server: Running) -> None:
    """128 fragments make a message; a 129th fails the connection, unfinished as it is."""
    async with client(server) as ws:
        await ws.send_raw(many_fragments(echo(2, "128"), 128))
        await echoed(ws, {2: "128"})
        await fails(ws, many_fragments(echo(3, "129"), 129, fin=False), 1009, follow_up=False)


async def test_fragment_cap_setting(direct: bool, tmp_path: Path) -> None:
    """websocket_max_fragments; pings between fragments do not count."""
    async with (
        serve(tmp_path, direct, websocket_max_fragments=4) as server,
        client(server) as ws,
    ):
        message = echo(2, "four")
        await ws.send_raw(
            fragments(OP_TEXT, split(message, 5, 10, 15), between=frame_bytes(OP_PING, b""))
        )
        await echoed(ws, {2: "four"}, pongs=1)
        await fails(ws, many_fragments(echo(3, "five"), 5, fin=False), 1009, follow_up=False)


# --- 12/13. permessage-deflate ----------------------------------------------------------

DEFLATE_PARAMS = {
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
}


def check_deflate_response(offer: str, header: str) -> None:
    """The accepted extension as RFC 7692 allows a server to answer ``offer``."""
    assert header.count("permessage-deflate") == 1, header
    params = deflate_params(header)
    assert params is not None
    names = [p.split("=")[0].strip() for p in header.split(";")[1:]]
    assert len(names) == len(set(names)), f"duplicate parameters: {header}"
    assert set(params) <= DEFLATE_PARAMS, header
    for flag in ("server_no_context_takeover", "client_no_context_takeover"):
        assert params.get(flag, None) is None, header
    if "client_max_window_bits" in params:
        assert "client_max_window_bits" in offer, "not offered (RFC 7692 7.1.2.2)"
    for bits in ("server_max_window_bits", "client_max_window_bits"):
        if bits in params:
            assert params[bits] in {str(b) for b in range(8, 16)}, header


def compressed_echo(ws: RawWebSocket, command_id: int, data: Any) -> bytes:
    return text(ws.compress(echo(command_id, data)), rsv=RSV1)


@pytest.mark.parametrize("offer", OFFERS.values(), ids=OFFERS.keys())
async def test_deflate_negotiated_and_used_both_ways(server: Running, offer: str) -> None:
    async with client(server, offer=offer, connect=False) as ws:
        check_deflate_response(offer, ws.response_headers.get("sec-websocket-extensions", ""))
        await ws.send_raw(text(ws.compress(CONNECT), rsv=RSV1))
        await exchange(ws, replies=[1])
        data = "compressed \u00e9\u20ac\U0001d11e " * 20
        await ws.send_raw(compressed_echo(ws, 2, data))
        frame = await ws.read_raw_frame(REPLY_TIMEOUT)
        check_server_frame(ws, frame)
        assert frame.opcode == OP_TEXT and frame.rsv & RSV1, "the reply was not compressed"
        assert replies_in(ws, frame) == [{"id": 2, "rpc": {"data": data}}]


@pytest.mark.parametrize("offer", OFFERS.values(), ids=OFFERS.keys())
async def test_deflate_many_messages(server: Running, offer: str) -> None:
    """Several compressed messages; the client's window carries over unless it may not."""
    async with client(server, offer=offer) as ws:
        expected = {}
        data = b""
        for i in range(2, 12):
            value = f"message {i % 3} " * (i * 10)
            data += compressed_echo(ws, i, value)
            expected[i] = value
        await ws.send_raw(data)
        await echoed(ws, expected)
        # Each reply inflated too, one after another with the server's context.
        await ws.send_raw(compressed_echo(ws, 20, "again") + text(echo(21, "plain")))
        await echoed(ws, {20: "again", 21: "plain"})


@pytest.mark.parametrize("offer", OFFERS.values(), ids=OFFERS.keys())
async def test_deflate_fragmented_with_pings(server: Running, offer: str) -> None:
    async with client(server, offer=offer) as ws:
        body = ws.compress(echo(2, "compressed in fragments " * 10))
        parts = split(body, len(body) // 3, 2 * len(body) // 3)
        await ws.send_raw(fragments(OP_TEXT, parts, rsv=RSV1, between=frame_bytes(OP_PING, b"x")))
        pongs = await echoed(ws, {2: "compressed in fragments " * 10}, pongs=1)
        assert set(pongs) == {b"x"}


async def test_deflate_one_byte_per_fragment(server: Running) -> None:
    async with client(server, offer=OFFERS["window"]) as ws:
        body = ws.compress(echo(2, "bytewise"))
        assert len(body) < 100
        await ws.send_raw(fragments(OP_TEXT, bytewise(body), rsv=RSV1))
        await echoed(ws, {2: "bytewise"})


async def test_deflate_message_at_the_limit(server: Running) -> None:
    message = sized_echo(2, LIMIT)
    async with client(server, offer=OFFERS["window"]) as ws:
        await ws.send_raw(text(ws.compress(message), rsv=RSV1))
        await echoed(ws, {2: json.loads(message)["rpc"]["data"]})


@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
async def test_deflate_bomb(server: Running, fragmented: bool) -> None:
    """A few bytes on the wire that inflate past max_message_size: 1009."""
    async with client(server, offer=OFFERS["window"]) as ws:
        body = ws.compress(echo(2, "0" * (LIMIT * 8)))
        assert len(body) < LIMIT // 8
        parts = split(body, len(body) // 2) if fragmented else [body]
        await fails(ws, fragments(OP_TEXT, parts, rsv=RSV1), 1009)


def _far_back() -> bytes:
    """A message that refers to bytes before its start (as if a dictionary were preset)."""
    start = b'{"id":2,"rpc":{"method":"echo","data":'
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=start)
    return (compressor.compress(start + b"1}}") + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


FAR_BACK = _far_back()


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff\xff", b"\x00\x05\x00\x00\x00hello", b"\x05" + b"\xff" * 8, FAR_BACK],
    ids=["reserved-block-type", "stored-length-mismatch", "bad-huffman-table", "too-far-back"],
)
async def test_deflate_invalid_data(server: Running, body: bytes) -> None:
    with pytest.raises(zlib.error):  # invalid for zlib itself
        zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")
    async with client(server, offer=OFFERS["window"]) as ws:
        await fails(ws, text(body, rsv=RSV1), 1002)


async def test_deflate_rsv1_on_continuation(server: Running) -> None:
    async with client(server, offer=OFFERS["window"]) as ws:
        body = ws.compress(echo(2, "rsv1 twice"))
        first, rest = split(body, len(body) // 2)
        bad = text(first, rsv=RSV1, fin=False) + frame_bytes(OP_CONT, rest, rsv=RSV1)
        await fails(ws, bad, 1002)


async def test_deflate_rsv1_on_continuation_of_plain_message(server: Running) -> None:
    async with client(server, offer=OFFERS["window"]) as ws:
        message = echo(2, "plain")
        bad = text(message[:5], fin=False) + frame_bytes(OP_CONT, message[5:], rsv=RSV1)
        await fails(ws, bad, 1002)


@pytest.mark.parametrize("opcode", CONTROL.values(), ids=CONTROL.keys())
async def test_deflate_rsv1_on_control_frame(server: Running, opcode: int) -> None:
    payload = close_payload(1000) if opcode == OP_CLOSE else b"p"
    async with client(server, offer=OFFERS["window"]) as ws:
        await fails(ws, frame_bytes(opcode, payload, rsv=RSV1), 1002)


@pytest.mark.parametrize("rsv", [RSV2, RSV3], ids=["rsv2", "rsv3"])
async def test_deflate_other_reserved_bits(server: Running, rsv: int) -> None:
    async with client(server, offer=OFFERS["window"]) as ws:
        await fails(ws, text(ws.compress(echo(2, "x")), rsv=RSV1 | rsv), 1002)


DECLINED_OFFERS = {
    "unknown-param": "permessage-deflate; foo",
    "unknown-param-value": "permessage-deflate; foo=1",
    "duplicate-param": "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    "client-bits-7": "permessage-deflate; client_max_window_bits=7",
    "client-bits-16": "permessage-deflate; client_max_window_bits=16",
    "client-bits-text": "permessage-deflate; client_max_window_bits=abc",
    "server-bits-16": "permessage-deflate; server_max_window_bits=16",
    "flag-with-value": "permessage-deflate; server_no_context_takeover=1",
    "other-extension": "x-webkit-deflate-frame",
}


@pytest.mark.parametrize("offer", DECLINED_OFFERS.values(), ids=DECLINED_OFFERS.keys())
async def test_deflate_invalid_offer_declined(server: Running, offer: str) -> None:
    """RFC 7692 5: an invalid offer is declined; the connection goes on uncompressed."""
    async with client(server, offer=offer) as ws:
        assert "sec-websocket-extensions" not in ws.response_headers
        assert ws.deflate is None
        await ws.send_frame(OP_TEXT, echo(2, "uncompressed"))
        await echoed(ws, {2: "uncompressed"})
        await fails(ws, text(zlib.compress(b"{}")[2:-4], rsv=RSV1), 1002)


async def test_deflate_second_offer_accepted(server: Running) -> None:
    offer = "permessage-deflate; foo=1, permessage-deflate; client_no_context_takeover"
    async with client(server, offer=offer) as ws:
        header = ws.response_headers.get("sec-websocket-extensions", "")
        check_deflate_response("permessage-deflate; client_no_context_takeover", header)
        assert "foo" not in header
        await ws.send_raw(compressed_echo(ws, 2, "second offer"))
        await echoed(ws, {2: "second offer"})


# --- bystanders ---------------------------------------------------------------------------

BYSTANDER_CASES = {
    "unmasked": (text(echo(2, "x"), masked=False), 1002),
    "invalid-utf8": (text(invalid_message(b"\xed\xa0\x80")), 1007),
    "too-big": (frame_header(OP_TEXT, LIMIT + 1, mask=b"\x01\x02\x03\x04"), 1009),
    "bad-close": (frame_bytes(OP_CLOSE, close_payload(1005)), 1002),
    "deflate-invalid": (text(b"\xff\xff", rsv=RSV1), 1002),
    "deflate-bomb": (b"", 1009),
}


@pytest.mark.parametrize("case", BYSTANDER_CASES)
async def test_failure_leaves_other_clients_alone(server: Running, case: str) -> None:
    bad, code = BYSTANDER_CASES[case]
    async with ws_client(server.ws_url) as good:
        assert "client" in await good.connect()
        async with client(server, offer=OFFERS["window"]) as ws:
            if case == "deflate-bomb":
                bad = text(ws.compress(echo(2, "0" * LIMIT * 8)), rsv=RSV1)
            await fails(ws, bad, code, follow_up=case != "too-big")
        assert await good.ok("rpc", {"method": "echo", "data": "still here"}) == {
            "data": "still here"
        }
        assert good.is_open
