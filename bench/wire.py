"""Bytes on the wire per publication push: JSON, Protobuf, and each with deflate.

    .venv/bin/python -m bench.wire

Builds the exact frames Tidings sends (one publication push, server to
client, so unmasked) for payloads of a few sizes, using the server's own
codecs and frame builder; the deflate column is the frame as compressed once
for every subscriber (no context takeover).
"""

from __future__ import annotations

import random

import orjson

from tidings.protocol import ClientInfo, Publication
from tidings.protocol.formats import JSON, PROTOBUF
from tidings.websocket.frames import OP_BINARY, OP_TEXT, deflate_message, frame_header

WORDS = "the a to of and in is you that it for on was with as have be at or are this".split()


def frame(opcode: int, payload: bytes, deflate: bool) -> int:
    body = deflate_message(payload) if deflate else payload
    return len(frame_header(opcode, len(body), rsv1=deflate)) + len(body)


def main() -> None:
    info = ClientInfo("alice", "6f1d2c3e-0000-4000-8000-000000000000")
    print("| payload | JSON | JSON + deflate | Protobuf | Protobuf + deflate |")
    print("|---|---|---|---|---|")
    for size in (100, 1024, 16384):
        # Words drawn at random (seeded): text that compresses like chat, not
        # like a repeated phrase.
        rng = random.Random(size)
        text = " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(size // 4))
        data = orjson.dumps({"text": text[: size - 11]})
        pub = Publication(data=data, offset=12345, info=info)
        as_json = JSON.encode_push("chat:lobby", pub)
        as_pb = PROTOBUF.encode_push("chat:lobby", pub)
        row = [
            frame(OP_TEXT, as_json, False),
            frame(OP_TEXT, as_json, True),
            frame(OP_BINARY, as_pb, False),
            frame(OP_BINARY, as_pb, True),
        ]
        print(f"| {len(data)} B | " + " | ".join(f"{n} B" for n in row) + " |")


if __name__ == "__main__":
    main()
