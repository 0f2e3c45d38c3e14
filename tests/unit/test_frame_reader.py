"""The sans-I/O frame reader, fed byte literals: no sockets, no event loop.

The last part checks it against the ``websockets`` library's ``Protocol`` (the
reader of the ASGI path) on generated frame streams: both must reach the same
messages and the same close code.
"""

from __future__ import annotations

import codecs
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from tidings.websocket.reader import (
    DEFLATE_TAIL,
    CloseReceived,
    Event,
    Failure,
    FrameReader,
    Inflate,
    Ping,
    Pong,
)

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
LIMIT = 4096


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    mask: bytes = b"\x11\x22\x33\x44",
) -> bytes:
    """A client frame; ``length`` overrides the declared length (for header-only tests)."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return bytes(head) + payload
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + mask + body


def reader(**kwargs: object) -> FrameReader:
    options: dict[str, object] = {"max_message_size": LIMIT, "max_fragments": 128}
    options.update(kwargs)
    return FrameReader(**options)  # type: ignore[arg-type]


def events(r: FrameReader, data: bytes) -> list[Event]:
    r.receive_data(data)
    out: list[Event] = []
    while (event := r.next_event()) is not None:
        out.append(event)
    return out


def compress(data: bytes, compressor: zlib._Compress | None = None) -> bytes:
    c = compressor or zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(DEFLATE_TAIL)
    return out[:-4]


# --- messages -------------------------------------------------------------------


def test_text_and_binary_messages() -> None:
    r = reader()
    assert events(r, frame(TEXT, "héllo".encode()) + frame(BINARY, b"\x00\xff")) == [
        "héllo",
        b"\x00\xff",
    ]
    assert r.buffered == 0


def test_a_frame_split_at_every_byte_gives_the_same_message() -> None:
    data = frame(TEXT, b'{"id":1,"connect":{}}')
    r = reader()
    got: list[Event] = []
    for i in range(len(data)):
        got += events(r, data[i : i + 1])
    assert got == ['{"id":1,"connect":{}}']


def test_fragments_with_pings_between_them() -> None:
    data = (
        frame(TEXT, b"ab", fin=False)
        + frame(PING, b"p1")
        + frame(CONT, b"", fin=False)
        + frame(CONT, b"cd")
    )
    assert events(reader(), data) == [Ping(b"p1"), "abcd"]


@pytest.mark.parametrize("split", range(1, len("é€𝄞".encode())))
def test_utf8_split_inside_a_character_across_fragments(split: int) -> None:
    text = "é€𝄞".encode()
    data = frame(TEXT, text[:split], fin=False) + frame(CONT, text[split:])
    assert events(reader(), data) == ["é€𝄞"]


def test_invalid_utf8_fails_at_its_fragment_not_at_the_end() -> None:
    r = reader()
    assert events(r, frame(TEXT, b"ok\xff", fin=False)) == [Failure(1007, "invalid utf-8")]
    assert events(r, frame(CONT, b"more")) == []  # nothing more is read


def test_invalid_utf8_in_one_frame() -> None:
    assert events(reader(), frame(TEXT, b"\xc3\x28")) == [Failure(1007, "invalid utf-8")]


def test_ping_pong_and_close() -> None:
    r = reader()
    data = frame(PING, b"x" * 125) + frame(PONG, b"y") + frame(CLOSE, b"\x03\xe8bye")
    assert events(r, data) == [Ping(b"x" * 125), Pong(b"y"), CloseReceived(1000, "bye")]
    assert r.done and events(r, frame(TEXT, b"late")) == []


# --- every rule on the header ---------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(TEXT, b"x", masked=False), 1002),
        (frame(TEXT, b"x", rsv=0b010), 1002),
        (frame(TEXT, b"x", rsv=0b001), 1002),
        (frame(TEXT, b"x", rsv=0b100), 1002),  # RSV1 without deflate
        (frame(PING, b"x", rsv=0b100), 1002),
        (frame(0x3), 1002),
        (frame(0xB), 1002),
        (frame(CONT, b"x"), 1002),
        (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
        (frame(PING, b"x", fin=False), 1002),
    ],
)
def test_broken_rules(data: bytes, code: int) -> None:
    assert next(e for e in events(reader(), data) if isinstance(e, Failure)).code == code


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (frame(TEXT, length=LIMIT + 1)[:-4], 1009),  # header only: no payload sent
        (frame(PING, length=1 << 30)[:-4], 1009),  # a ping declaring 1 GiB
        (frame(PING, length=126)[:-4], 1002),  # a control frame over 125 bytes
        (frame(CLOSE, length=200)[:-4], 1002),
    ],
)
def test_refused_on_the_header_before_any_payload(header: bytes, code: int) -> None:
    r = reader()
    # Even before the mask arrives: the length alone decides.
    got = events(r, header)
    assert [e.code for e in got if isinstance(e, Failure)] == [code]
    assert r.done and r.buffered == 0


def test_a_fragmented_message_over_the_limit() -> None:
    r = reader()
    data = frame(BINARY, b"x" * 4000, fin=False)
    assert events(r, data) == []
    # The next header declares more than the room left: refused before its payload.
    assert events(r, frame(CONT, length=97)[:-4]) == [Failure(1009, "message too big")]


def test_fragment_cap() -> None:
    r = reader(max_fragments=5)
    data = frame(TEXT, b"a", fin=False) + frame(CONT, b"", fin=False) * 4
    assert events(r, data) == []  # five frames: the cap
    assert events(r, frame(CONT, b"", fin=False)) == [Failure(1009, "too many fragments")]


def test_a_message_at_the_fragment_cap_is_fine() -> None:
    data = frame(TEXT, b"a", fin=False) + frame(CONT, b"b", fin=False) * 3 + frame(CONT, b"c")
    assert events(reader(max_fragments=5), data) == ["abbbc"]


def test_many_empty_fragments_each_cost_one_step() -> None:
    # 100,000 zero-length fragments never reach the size limit: the cap ends them.
    data = frame(TEXT, b"", fin=False) + frame(CONT, b"", fin=False) * 100_000
    r = reader()
    assert events(r, data) == [Failure(1009, "too many fragments")]
    assert r.buffered == 0


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        (b"", CloseReceived(1005, "")),
        (b"\x03", Failure(1002, "close frame too short")),
        (struct.pack("!H", 1000) + "ça va".encode(), CloseReceived(1000, "ça va")),
        (struct.pack("!H", 3000), CloseReceived(3000, "")),
        (struct.pack("!H", 4999), CloseReceived(4999, "")),
        (struct.pack("!H", 1000) + b"\xff", Failure(1007, "invalid utf-8 in close reason")),
    ]
    + [
        (struct.pack("!H", code), Failure(1002, "invalid status code"))
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
    ],
)
def test_close_frames(payload: bytes, event: Event) -> None:
    assert events(reader(), frame(CLOSE, payload)) == [event]


def test_a_close_inside_a_fragmented_message() -> None:
    data = frame(TEXT, b"a", fin=False) + frame(CLOSE, b"\x03\xe8")
    assert events(reader(), data) == [Failure(1002, "incomplete fragmented message")]


# --- permessage-deflate -----------------------------------------------------------


def test_compressed_messages() -> None:
    r = reader(inflate=Inflate())
    data = frame(TEXT, compress(b'{"id":1}'), rsv=0b100) + frame(TEXT, b"plain")
    assert events(r, data) == ['{"id":1}', "plain"]


def test_a_compressed_message_in_fragments() -> None:
    body = compress("héllo wörld".encode() * 20)
    third = len(body) // 3
    data = (
        frame(TEXT, body[:third], rsv=0b100, fin=False)
        + frame(CONT, body[third : 2 * third], fin=False)
        + frame(CONT, body[2 * third :])
    )
    assert events(reader(inflate=Inflate()), data) == ["héllo wörld" * 20]


def test_the_client_context_is_kept_when_it_keeps_it() -> None:
    compressor = zlib.compressobj(wbits=-15)
    first = compress(b"repeat me, repeat me", compressor)
    second = compress(b"repeat me, repeat me", compressor)  # refers back to the first
    r = reader(inflate=Inflate(resets=False))
    data = frame(TEXT, first, rsv=0b100) + frame(TEXT, second, rsv=0b100)
    assert events(r, data) == ["repeat me, repeat me"] * 2


def test_a_deflate_bomb_is_refused_without_inflating_it_whole() -> None:
    bomb = compress(b"\x00" * (LIMIT * 100))
    assert len(bomb) < LIMIT
    assert events(reader(inflate=Inflate()), frame(BINARY, bomb, rsv=0b100)) == [
        Failure(1009, "message too big")
    ]


def test_invalid_compressed_data() -> None:
    data = frame(BINARY, b"\xff\xff\xff\xff", rsv=0b100)
    assert events(reader(inflate=Inflate()), data) == [Failure(1002, "decompression failed")]


def test_rsv1_on_a_continuation() -> None:
    data = frame(TEXT, compress(b"ab"), rsv=0b100, fin=False) + frame(CONT, b"x", rsv=0b100)
    assert events(reader(inflate=Inflate()), data) == [
        Failure(1002, "unexpected rsv1 on continuation frame")
    ]


# --- the same decisions as the websockets library ------------------------------


def websockets_outcome(data: bytes, deflate: bool) -> tuple[list[str | bytes], int | None]:
    """Messages and the close code that websockets' Protocol reaches on ``data``."""
    protocol = Protocol(Side.SERVER, max_size=LIMIT)
    if deflate:
        protocol.extensions = [PerMessageDeflate(True, True, 15, 15)]
    protocol.receive_data(data)
    messages: list[str | bytes] = []
    parts: list[bytes] = []
    text = False
    # UTF-8 is the layer above's to check; checked per fragment here, as the reader does.
    utf8 = codecs.getincrementaldecoder("utf-8")()
    for event in protocol.events_received():
        assert isinstance(event, Frame)
        if event.opcode in (Opcode.TEXT, Opcode.BINARY):
            parts, text = [bytes(event.data)], event.opcode is Opcode.TEXT
            utf8.reset()
        elif event.opcode is Opcode.CONT:
            parts.append(bytes(event.data))
        if event.opcode in (Opcode.TEXT, Opcode.CONT) and text:
            try:
                utf8.decode(bytes(event.data), event.fin)
            except UnicodeDecodeError:
                return messages, 1007
        if event.opcode is Opcode.CLOSE:
            assert protocol.close_rcvd is not None
            return messages, protocol.close_rcvd.code
        if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT) and event.fin:
            whole = b"".join(parts)
            messages.append(whole.decode() if text else whole)
    if protocol.close_sent is not None:
        return messages, protocol.close_sent.code
    return messages, None


def our_outcome(data: bytes, deflate: bool) -> tuple[list[str | bytes], int | None]:
    r = reader(max_fragments=1_000_000, inflate=Inflate() if deflate else None)
    messages: list[str | bytes] = []
    for event in events(r, data):
        if isinstance(event, str | bytes):
            messages.append(event)
        elif isinstance(event, CloseReceived | Failure):
            return messages, event.code
    return messages, None


_frames = st.builds(
    lambda opcode, payload, fin, rsv, masked: frame(
        opcode, payload, fin=fin, rsv=rsv, masked=masked
    ),
    opcode=st.sampled_from([CONT, TEXT, BINARY, CLOSE, PING, PONG, 0x3, 0xB]),
    # Data frames stay far enough below the limit that a control frame never
    # meets the message's room (websockets counts control frames against it).
    payload=st.one_of(
        st.binary(max_size=40),
        st.text(max_size=20).map(str.encode),
        st.sampled_from([b"\x03\xe8", b"\x03\xe8ok", b"\x03\xed", b"\x0b\xb8\xff", b"\xe9"]),
    ),
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 0b100, 0b010]),
    masked=st.sampled_from([True, True, True, True, False]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_frames, max_size=8), st.booleans())
def test_same_decisions_as_websockets(stream: list[bytes], deflate: bool) -> None:
    data = b"".join(stream)
    ours = our_outcome(data, deflate)
    theirs = websockets_outcome(data, deflate)
    if deflate and ours[1] == 1002 and theirs[1] == 1002:
        return  # the same code; messages before a bad compressed frame may be cut differently
    assert ours == theirs


@pytest.mark.parametrize(
    "data",
    [
        frame(TEXT, b"x" * (LIMIT + 1)),
        frame(BINARY, b"x" * 3000, fin=False) + frame(CONT, b"y" * 2000),
        frame(PING, b"x" * 126),
        frame(CLOSE, b"\x03"),
    ],
)
def test_same_decisions_as_websockets_at_the_limits(data: bytes) -> None:
    assert our_outcome(data, False) == websockets_outcome(data, False)
