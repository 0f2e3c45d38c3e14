"""JWT verification for connections and subscriptions (PyJWT).

A connection token's ``sub`` is the user; ``exp`` is honoured; ``info`` (any
JSON) is shown to others as the connection's info; ``channels`` lists channels
the server subscribes the connection to. A subscription token for a ``$``
channel carries ``sub`` (it must match the connection's user) and ``channel``.

The accepted algorithms are pinned by settings: a token may never choose how it
is checked (``alg=none`` or HS/RS confusion).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson


class InvalidToken(Exception):
    """The token is malformed, badly signed, or lacks a required claim."""


class TokenExpired(Exception):
    """The token was valid but its ``exp`` has passed: the client should get a new one."""


@dataclass(frozen=True, slots=True)
class ConnectionClaims:
    user: str
    # Unix time the token expires at, or None for a token without ``exp``.
    expires_at: float | None
    info: bytes | None
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SubscriptionClaims:
    user: str
    channel: str
    expires_at: float | None
    info: bytes | None


class TokenVerifier:
    def __init__(self, secret: str, algorithms: list[str]) -> None:
        self._secret = secret
        self._algorithms = list(algorithms)

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=self._algorithms,
                options={"require": ["sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired from None
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from None
        if not isinstance(claims.get("sub"), str):
            raise InvalidToken("sub must be a string")
        return claims

    @staticmethod
    def _info(claims: dict[str, Any]) -> bytes | None:
        info = claims.get("info")
        return None if info is None else orjson.dumps(info)

    @staticmethod
    def _exp(claims: dict[str, Any]) -> float | None:
        exp = claims.get("exp")
        return float(exp) if exp is not None else None

    def verify_connection(self, token: str) -> ConnectionClaims:
        claims = self._decode(token)
        channels = claims.get("channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise InvalidToken("channels must be a list of strings")
        return ConnectionClaims(
            user=claims["sub"],
            expires_at=self._exp(claims),
            info=self._info(claims),
            channels=tuple(channels),
        )

    def verify_subscription(self, token: str) -> SubscriptionClaims:
        claims = self._decode(token)
        channel = claims.get("channel")
        if not isinstance(channel, str) or not channel:
            raise InvalidToken("channel claim required")
        return SubscriptionClaims(
            user=claims["sub"],
            channel=channel,
            expires_at=self._exp(claims),
            info=self._info(claims),
        )


def _encode(secret: str, claims: dict[str, Any], ttl: float | None) -> str:
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode(claims, secret, algorithm="HS256")


def make_connection_token(
    secret: str,
    user: str,
    *,
    ttl: float | None = 3600,
    info: Any = None,
    channels: list[str] | None = None,
) -> str:
    """Mint an HS256 connection token for ``user`` (what `tidings token` prints)."""
    claims: dict[str, Any] = {"sub": user, "iat": int(time.time())}
    if info is not None:
        claims["info"] = info
    if channels:
        claims["channels"] = channels
    return _encode(secret, claims, ttl)


def make_subscription_token(
    secret: str, user: str, channel: str, *, ttl: float | None = 3600, info: Any = None
) -> str:
    """Mint an HS256 token that lets ``user`` subscribe to the private ``channel``."""
    claims: dict[str, Any] = {"sub": user, "channel": channel, "iat": int(time.time())}
    if info is not None:
        claims["info"] = info
    return _encode(secret, claims, ttl)
