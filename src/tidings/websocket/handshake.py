"""The opening handshake, one policy for both WebSocket paths.

Who may connect (Origin), which wire format a client gets (subprotocol or
``?format=protobuf``) and how permessage-deflate is negotiated are decided
here, for the direct path (:func:`upgrade`, which parses and answers the
request) and for the ASGI path (uvicorn hands the request to the same
``websockets`` ``ServerProtocol``, configured by :func:`deflate_extensions`,
and the endpoint asks :func:`origin_allowed` and :func:`wants_protobuf`).

The request itself is parsed and answered by the ``websockets`` library's
sans-I/O ``ServerProtocol`` (key, version, Upgrade and Connection headers,
extension header syntax, subprotocol header syntax): untrusted bytes go to a
well-kept parser. The HTTP layer in front of it has already bounded the
request's size and the time it may take (``tidings.transport.http``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import ExtensionParameter, Subprotocol

from ..protocol.formats import PROTOBUF_SUBPROTOCOL
from .reader import Inflate

HANDSHAKE_LOGGER = logging.getLogger("uvicorn.error")


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Check a browser's Origin header against the allowlist.

    Clients that send no Origin are not browsers and are allowed. With an empty
    allowlist only the same origin is: the Origin's host must equal the Host
    header. Matching is exact, so ``null`` and suffix tricks
    (``app.example.com.evil.com``) never pass.
    """
    if origin is None:
        return True
    if allowed:
        return origin != "null" and origin in allowed
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host


def wants_protobuf(subprotocols: Sequence[str], query: str) -> bool:
    """The SDKs ask for Protobuf with a subprotocol; ``?format=protobuf`` works too."""
    return PROTOBUF_SUBPROTOCOL in subprotocols or parse_qs(query).get("format") == ["protobuf"]


def select_subprotocol(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Answer the Protobuf subprotocol when offered; ignore any other (JSON is the default)."""
    return Subprotocol(PROTOBUF_SUBPROTOCOL) if PROTOBUF_SUBPROTOCOL in offered else None


class SharedFrameDeflateFactory(ServerPerMessageDeflateFactory):
    """permessage-deflate such that one compressed frame suits every subscriber.

    The direct path compresses a publication once and writes the same bytes to
    all its subscribers, so each message must stand alone (the server resets
    its compressor: ``server_no_context_takeover``) and use the full window
    (an offer that limits ``server_max_window_bits`` is declined, and the
    client's next offer, if any, is tried). The client may keep its own context.
    """

    def __init__(self) -> None:
        super().__init__(server_no_context_takeover=True)

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[object]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, extension = super().process_request_params(params, accepted_extensions)  # type: ignore[arg-type]
        if extension.local_max_window_bits != 15:
            raise NegotiationError("server_max_window_bits below 15 is not supported")
        return response, extension


def deflate_extensions(enabled: bool) -> list[ServerExtensionFactory]:
    """The extensions both paths offer: permessage-deflate, unless compression is off."""
    return [SharedFrameDeflateFactory()] if enabled else []


@dataclass(slots=True)
class Upgrade:
    """The outcome of an upgrade request on the direct path."""

    # The HTTP response to write: 101, or the refusal.
    response: bytes
    accepted: bool
    path: str = ""
    query: str = ""
    # Lower-case names; repeated headers joined with ", " (as Starlette shows them).
    headers: dict[str, str] = field(default_factory=dict)
    protobuf: bool = False
    # How the client compresses its messages, if deflate was negotiated.
    inflate: Inflate | None = None


def request_path(data: bytes) -> str:
    """The path of a request, from its request line alone (to route it before parsing)."""
    line = data.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    target = parts[1].decode("latin-1") if len(parts) == 3 else ""
    return urlsplit(target).path


def upgrade(
    data: bytes, *, allowed_origins: Sequence[str], compression: bool, available: bool
) -> Upgrade:
    """Answer a complete upgrade request (the bytes of its head).

    ``available`` is false while the server drains for shutdown: 503.
    """
    server = ServerProtocol(
        extensions=deflate_extensions(compression),
        select_subprotocol=select_subprotocol,
        # The logger of uvicorn's own WebSocket path, where credentials are redacted
        # from the debug log (tidings.transport.websocket.RedactWebSocketDebugLog).
        logger=HANDSHAKE_LOGGER,
    )
    server.receive_data(data)
    events = server.events_received()
    request = events[0] if events else None
    if not isinstance(request, Request):
        response = server.reject(400, "Failed to open a WebSocket connection: invalid request.\n")
        return Upgrade(_serialize(server, response), accepted=False)
    headers = request.headers
    if not origin_allowed(headers.get("Origin"), headers.get("Host"), allowed_origins):
        response = server.reject(403, "Failed to open a WebSocket connection: origin refused.\n")
        return Upgrade(_serialize(server, response), accepted=False)
    if not available:
        response = server.reject(503, "Failed to open a WebSocket connection: shutting down.\n")
        return Upgrade(_serialize(server, response), accepted=False)
    response = server.accept(request)
    if response.status_code != 101:
        return Upgrade(_serialize(server, response), accepted=False)
    url = urlsplit(request.path)
    inflate = None
    for extension in server.extensions:
        if isinstance(extension, PerMessageDeflate):
            inflate = Inflate(
                resets=extension.remote_no_context_takeover,
                window_bits=extension.remote_max_window_bits,
            )
    return Upgrade(
        _serialize(server, response),
        accepted=True,
        path=url.path,
        query=url.query,
        headers=joined_headers(headers),
        protobuf=wants_protobuf([server.subprotocol or ""], url.query),
        inflate=inflate,
    )


def joined_headers(headers: Headers) -> dict[str, str]:
    """Lower-case names to values, repeated ones joined with ", "."""
    joined: dict[str, str] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined


def _serialize(server: ServerProtocol, response: object) -> bytes:
    server.send_response(response)  # type: ignore[arg-type]
    return b"".join(server.data_to_send())
