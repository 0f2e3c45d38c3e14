"""Error, unsubscribe and disconnect codes of the Centrifugo client protocol v2.

The numbers are the ones Centrifugo documents, so the existing SDKs react to
them as they do with Centrifugo: an error reply fails one command, an
unsubscribe push ends one subscription, a disconnect closes the connection.

Disconnect codes 3000-3499 (and 4000-4499) tell a client to reconnect; codes
3500-3999 (and 4500-4999) are terminal: reconnecting would fail the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ErrorCode(IntEnum):
    """Codes carried by an error reply. The connection stays open."""

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    EXPIRED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112


ERROR_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL: "internal server error",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.METHOD_NOT_FOUND: "method not found",
    ErrorCode.ALREADY_SUBSCRIBED: "already subscribed",
    ErrorCode.LIMIT_EXCEEDED: "limit exceeded",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.NOT_AVAILABLE: "not available",
    ErrorCode.TOKEN_EXPIRED: "token expired",
    ErrorCode.EXPIRED: "expired",
    ErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
}

# Errors a retry may cure: the SDKs retry these instead of giving up.
TEMPORARY_ERRORS = frozenset({ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS})


class DisconnectCode(IntEnum):
    """WebSocket close codes the server uses to end a connection."""

    # 1009 and 1007 are sent by the WebSocket layer itself; listed so they are
    # documented alongside ours.
    MESSAGE_TOO_BIG = 1009
    INVALID_UTF8 = 1007
    # Reconnect. 3000 is never sent: it records that the client went away.
    CONNECTION_CLOSED = 3000
    SHUTDOWN = 3001
    INTERNAL = 3004
    EXPIRED = 3005
    SUBSCRIPTION_EXPIRED = 3006
    SLOW = 3008
    WRITE_ERROR = 3009
    INSUFFICIENT_STATE = 3010
    FORCE_RECONNECT = 3011
    NO_PONG = 3012
    TOO_MANY_REQUESTS = 3013
    # Terminal: do not reconnect.
    INVALID_TOKEN = 3500
    BAD_REQUEST = 3501
    STALE = 3502
    FORCE_NO_RECONNECT = 3503
    CONNECTION_LIMIT = 3504
    CHANNEL_LIMIT = 3505
    PERMISSION_DENIED = 3507


DISCONNECT_REASONS: dict[DisconnectCode, str] = {
    DisconnectCode.MESSAGE_TOO_BIG: "message too big",
    DisconnectCode.INVALID_UTF8: "invalid utf-8",
    DisconnectCode.CONNECTION_CLOSED: "connection closed",
    DisconnectCode.SHUTDOWN: "shutdown",
    DisconnectCode.INTERNAL: "internal server error",
    DisconnectCode.EXPIRED: "connection expired",
    DisconnectCode.SUBSCRIPTION_EXPIRED: "subscription expired",
    DisconnectCode.SLOW: "slow",
    DisconnectCode.WRITE_ERROR: "write error",
    DisconnectCode.INSUFFICIENT_STATE: "insufficient state",
    DisconnectCode.FORCE_RECONNECT: "force reconnect",
    DisconnectCode.NO_PONG: "no pong",
    DisconnectCode.TOO_MANY_REQUESTS: "too many requests",
    DisconnectCode.INVALID_TOKEN: "invalid token",
    DisconnectCode.BAD_REQUEST: "bad request",
    DisconnectCode.STALE: "stale",
    DisconnectCode.FORCE_NO_RECONNECT: "force disconnect",
    DisconnectCode.CONNECTION_LIMIT: "connection limit",
    DisconnectCode.CHANNEL_LIMIT: "channel limit",
    DisconnectCode.PERMISSION_DENIED: "permission denied",
}


class UnsubscribeCode(IntEnum):
    """Codes of an unsubscribe push. 2500 and above ask the client to resubscribe."""

    SERVER = 2000
    INSUFFICIENT_STATE = 2500


# Exceptions stay plain (not frozen, no slots): tools attach notes to them.
@dataclass(eq=False)
class Disconnect(Exception):
    """Raise to close the connection with a close code and a short reason."""

    code: int
    reason: str

    @classmethod
    def of(cls, code: DisconnectCode, reason: str | None = None) -> Disconnect:
        return cls(int(code), reason or DISCONNECT_REASONS[code])

    @property
    def reconnect(self) -> bool:
        """Whether the SDKs reconnect after this code (Centrifugo's rule)."""
        return self.code < 3500 or self.code >= 5000 or 4000 <= self.code < 4500

    def __str__(self) -> str:
        return f"disconnect {self.code}: {self.reason}"


@dataclass(eq=False)
class ProtocolError(Exception):
    """Raise to answer one command with an error reply; the connection stays open."""

    code: int
    message: str
    temporary: bool = False

    @classmethod
    def of(cls, code: ErrorCode, message: str | None = None) -> ProtocolError:
        return cls(int(code), message or ERROR_MESSAGES[code], code in TEMPORARY_ERRORS)

    def __str__(self) -> str:
        return f"error {self.code}: {self.message}"
