"""Public keys from a JWKS URL, by ``kid``: fetched with httpx, cached, bounded.

An identity provider that signs tokens with RS*/PS*/ES* publishes its public
keys as a JSON Web Key Set and rotates them. This cache fetches the set on
first use, uses it for ``ttl`` seconds, and fetches it again early when a token
names a ``kid`` it does not hold (a rotation). Everything an attacker can make
it do is bounded:

- at most one fetch runs at a time, and fetches start at least
  ``min_interval`` seconds apart, however many tokens with made-up ``kid``\\ s
  arrive; an unknown ``kid`` inside that interval is simply unknown;
- the response is read up to ``MAX_BYTES`` and at most ``MAX_KEYS`` keys are kept;
- symmetric (``oct``) keys are never taken from a JWKS: a public document must
  not hand out HMAC secrets, and accepting them would reopen HS/RS confusion;
- the URL must be https, except on loopback (tests, a sidecar).

When the set cannot be fetched, the keys already held stay in use; a token
whose ``kid`` is not among them raises ``KeysUnavailable`` (a temporary
error: the client retries) rather than being called invalid.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import orjson

log = logging.getLogger("tidings.auth")

MAX_BYTES = 256 * 1024
MAX_KEYS = 64

# Key types a JWKS may provide, and the token algorithms each may verify.
KEY_FAMILIES = {"RSA": "rsa", "EC": "ec"}


class KeysUnavailable(Exception):
    """The key a token names is not known and the JWKS cannot be fetched right now."""


@dataclass(frozen=True, slots=True)
class JWKSKey:
    """One public key of a JWKS: the key, its family, and the algorithm it declares."""

    key: Any
    family: str  # "rsa" or "ec"
    algorithm: str | None  # the JWK's "alg", when it names one


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks_url(url: str) -> str:
    """Refuse a JWKS URL an on-path attacker could answer: plain http off loopback."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname or "")):
        return url
    raise ValueError("the JWKS URL must use https (plain http only on loopback)")


class JWKSCache:
    """The keys of one JWKS URL, by ``kid``."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        min_interval: float = 10.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = check_jwks_url(url)
        self._ttl = ttl
        self._min_interval = min_interval
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str, JWKSKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch started
        self._failed = False  # whether the last fetch failed
        self._lock = asyncio.Lock()
        self.fetches = 0  # fetches started: for tests and metrics

    def key(self, kid: str) -> JWKSKey | None:
        """The key with this ``kid``, from the cache only."""
        return self._keys.get(kid)

    def _fresh(self, kid: str) -> bool:
        return (
            kid in self._keys
            and self._fetched_at is not None
            and self._clock() - self._fetched_at < self._ttl
        )

    async def ensure(self, kid: str) -> None:
        """Make the cache hold ``kid`` if the JWKS has it, fetching within the bounds."""
        if self._fresh(kid):
            return
        async with self._lock:  # one fetch at a time; waiters see its result
            if self._fresh(kid):
                return
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_interval:
                if kid not in self._keys and self._failed:
                    raise KeysUnavailable("the JWKS could not be fetched")
                return  # cooling down: a known key stays in use, an unknown kid is unknown
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as e:
                self._failed = True
                log.warning("fetching the JWKS from %s failed: %s", self.url, e)
                if kid not in self._keys:
                    raise KeysUnavailable("the JWKS could not be fetched") from None
                return
            self._failed = False
            self._keys = keys
            self._fetched_at = self._clock()

    async def _fetch(self) -> dict[str, JWKSKey]:
        async with (
            httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client,
            client.stream("GET", self.url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise ValueError(f"the JWKS is larger than {MAX_BYTES} bytes")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("the JWKS is not JSON") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("the JWKS has no keys list")
        return parse_keys(entries)


def parse_keys(entries: list[Any]) -> dict[str, JWKSKey]:
    """Usable signature keys of a JWKS by ``kid``; others are skipped."""
    keys: dict[str, JWKSKey] = {}
    for entry in entries:
        if len(keys) >= MAX_KEYS:
            break
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or kid in keys:
            continue
        if entry.get("kty") not in KEY_FAMILIES or entry.get("use", "sig") != "sig":
            continue
        if "d" in entry:  # a private key published by mistake: never use it
            continue
        declared = entry.get("alg")
        try:
            key = jwt.PyJWK.from_dict(entry).key
        except (jwt.PyJWTError, ValueError, TypeError):
            log.warning("skipping JWKS key %r: not a usable public key", kid)
            continue
        keys[kid] = JWKSKey(
            key, KEY_FAMILIES[entry["kty"]], declared if isinstance(declared, str) else None
        )
    return keys
