"""JWT verification for connections and subscriptions (PyJWT), and server API keys.

A connection token's ``sub`` is the user; ``exp`` is honoured; ``info`` (any
JSON) is shown to others as the connection's info; ``channels`` lists channels
the server subscribes the connection to. A subscription token for a ``$``
channel carries ``sub`` (it must match the connection's user) and ``channel``.

How a token is checked is never the token's choice:

- the accepted algorithms are pinned by settings (``jwt_algorithms``); ``none``
  cannot be pinned at all;
- each algorithm family has its own key: HS* the HMAC secret, RS*/PS* the RSA
  public key, ES* the ECDSA public key, and RS*/PS*/ES* also keys from a JWKS
  URL by ``kid``. A token's ``alg`` picks a family among the pinned ones, never
  a key of another family, so an HS256 token "signed" with the RSA public key
  as its HMAC secret (HS/RS confusion) is checked against the HMAC secret and fails;
- ``aud`` and ``iss`` must match when they are configured; ``nbf`` and ``iat``
  in the future are refused; ``exp`` may be required (``jwt_require_exp``).

An expired token raises ``TokenExpired`` (the client gets a new one and tries
again); anything else wrong raises ``InvalidToken``. Neither message ever
contains the token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .jwks import JWKSCache, KeysUnavailable

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "ApiKeyring",
    "ConnectionClaims",
    "InvalidToken",
    "KeysUnavailable",
    "SubscriptionClaims",
    "TokenExpired",
    "TokenVerifier",
    "load_public_key",
    "make_connection_token",
    "make_subscription_token",
]

# Algorithms that may be pinned, and the key family that verifies each.
SUPPORTED_ALGORITHMS: dict[str, str] = {
    "HS256": "hmac",
    "HS384": "hmac",
    "HS512": "hmac",
    "RS256": "rsa",
    "RS384": "rsa",
    "RS512": "rsa",
    "PS256": "rsa",
    "PS384": "rsa",
    "PS512": "rsa",
    "ES256": "ec",
    "ES384": "ec",
    "ES512": "ec",
}


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


def load_public_key(value: str) -> RSAPublicKey | EllipticCurvePublicKey:
    """A public key from PEM text (a key or a certificate) or from a PEM file's path.

    Inline PEM from an environment variable may have its newlines written as ``\\n``.
    """
    text = value.strip()
    if not text.startswith("-----BEGIN"):
        text = Path(text).expanduser().read_text()
    elif "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")
    data = text.encode()
    if b"BEGIN CERTIFICATE" in data:
        key: Any = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = load_pem_public_key(data)
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise ValueError("only RSA and ECDSA public keys are supported")
    return key


class TokenVerifier:
    """Checks connection and subscription JWTs against pinned algorithms and keys.

    ``verify_*`` use the keys at hand (static keys, and JWKS keys already
    fetched); ``averify_*`` first fetch the JWKS when the token names a key id
    that is not cached yet. The session uses the latter.
    """

    def __init__(
        self,
        secret: str | None,
        algorithms: Iterable[str],
        *,
        rsa_public_key: str | None = None,
        ec_public_key: str | None = None,
        jwks: JWKSCache | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        require_exp: bool = False,
        leeway: float = 0.0,
    ) -> None:
        self._algorithms = list(dict.fromkeys(algorithms))
        if not self._algorithms:
            raise ValueError("at least one JWT algorithm must be accepted")
        for alg in self._algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"unsupported JWT algorithm {alg!r}")
        self._keys: dict[str, Any] = {}
        if secret:
            self._keys["hmac"] = secret
        if rsa_public_key:
            key = load_public_key(rsa_public_key)
            if not isinstance(key, RSAPublicKey):
                raise ValueError("jwt_rsa_public_key is not an RSA public key")
            self._keys["rsa"] = key
        if ec_public_key:
            key = load_public_key(ec_public_key)
            if not isinstance(key, EllipticCurvePublicKey):
                raise ValueError("jwt_ec_public_key is not an ECDSA public key")
            self._keys["ec"] = key
        self._jwks = jwks
        for alg in self._algorithms:
            family = SUPPORTED_ALGORITHMS[alg]
            if family not in self._keys and (family == "hmac" or jwks is None):
                raise ValueError(f"JWT algorithm {alg} is accepted but no key is set for it")
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._required = ["sub", "exp"] if require_exp else ["sub"]

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        jwks = None
        if settings.jwt_jwks_url:
            jwks = JWKSCache(
                settings.jwt_jwks_url,
                ttl=settings.jwt_jwks_cache_ttl,
                min_interval=settings.jwt_jwks_refresh_interval,
            )
        return cls(
            settings.secret,
            settings.jwt_algorithms,
            rsa_public_key=settings.jwt_rsa_public_key,
            ec_public_key=settings.jwt_ec_public_key,
            jwks=jwks,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            require_exp=settings.jwt_require_exp,
            leeway=settings.jwt_leeway,
        )

    @property
    def algorithms(self) -> list[str]:
        return list(self._algorithms)

    @property
    def jwks(self) -> JWKSCache | None:
        return self._jwks

    # --- checking ---------------------------------------------------------

    @staticmethod
    def _header(token: str) -> dict[str, Any]:
        try:
            return jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from None

    def _key(self, header: dict[str, Any]) -> tuple[Any, str]:
        """The key for this token, chosen by settings: the header only picks among them."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken("algorithm not accepted")
        family = SUPPORTED_ALGORITHMS[alg]
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("kid must be a string")
        if family != "hmac" and kid and self._jwks is not None:
            found = self._jwks.key(kid)
            if found is not None:
                if found.family != family or (found.algorithm and found.algorithm != alg):
                    raise InvalidToken("the key does not fit the algorithm")
                return found.key, alg
        key = self._keys.get(family)
        if key is None:
            raise InvalidToken("unknown key")
        return key, alg

    def _decode(self, token: str) -> dict[str, Any]:
        key, alg = self._key(self._header(token))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": self._required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired from None
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from None
        if not isinstance(claims.get("sub"), str):
            raise InvalidToken("sub must be a string")
        return claims

    async def _load_key(self, token: str) -> None:
        """Fetch the JWKS if the token names a key id the cache lacks (within bounds)."""
        if self._jwks is None:
            return
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return  # the check itself says why
        alg, kid = header.get("alg"), header.get("kid")
        if (
            isinstance(alg, str)
            and alg in self._algorithms
            and SUPPORTED_ALGORITHMS[alg] != "hmac"
            and isinstance(kid, str)
            and kid
        ):
            await self._jwks.ensure(kid)

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

    async def averify_connection(self, token: str) -> ConnectionClaims:
        """``verify_connection``, fetching JWKS keys first when needed.

        Raises ``KeysUnavailable`` when the token's key is unknown and the JWKS
        cannot be fetched: a temporary failure, not a bad token.
        """
        await self._load_key(token)
        return self.verify_connection(token)

    async def averify_subscription(self, token: str) -> SubscriptionClaims:
        """``verify_subscription``, fetching JWKS keys first when needed."""
        await self._load_key(token)
        return self.verify_subscription(token)


# --- server API keys ---------------------------------------------------------


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyring:
    """The server API keys, held only as SHA-256 digests and compared in constant time.

    A candidate is hashed once and compared with every stored digest, without
    stopping at a match, so the time taken says nothing about which key (or
    how much of one) matched. Hashing first also makes the comparison length
    independent: every digest is 32 bytes.
    """

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[str | None]) -> None:
        self._digests = tuple(dict.fromkeys(_digest(k) for k in keys if k))

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeyring:
        return cls([settings.api_key, *settings.api_keys])

    def __len__(self) -> int:
        return len(self._digests)

    def matches(self, candidate: str | None) -> bool:
        if not candidate:
            return False
        digest = _digest(candidate)
        found = False
        for stored in self._digests:
            found |= hmac.compare_digest(digest, stored)
        return found


# --- minting (tests, `tidings token`, the /token endpoint) -------------------


def _encode(
    secret: str,
    claims: dict[str, Any],
    ttl: float | None,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def make_connection_token(
    secret: str,
    user: str,
    *,
    ttl: float | None = 3600,
    info: Any = None,
    channels: list[str] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """Mint an HS256 connection token for ``user`` (what `tidings token` prints)."""
    claims: dict[str, Any] = {"sub": user, "iat": int(time.time())}
    if info is not None:
        claims["info"] = info
    if channels:
        claims["channels"] = channels
    return _encode(secret, claims, ttl, audience, issuer)


def make_subscription_token(
    secret: str,
    user: str,
    channel: str,
    *,
    ttl: float | None = 3600,
    info: Any = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """Mint an HS256 token that lets ``user`` subscribe to the private ``channel``."""
    claims: dict[str, Any] = {"sub": user, "channel": channel, "iat": int(time.time())}
    if info is not None:
        claims["info"] = info
    return _encode(secret, claims, ttl, audience, issuer)
