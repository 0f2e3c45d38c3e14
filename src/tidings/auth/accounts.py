"""Accounts: the OAuth2 password flow, refresh-token rotation, logout and login limits.

The access token ``/token`` returns *is* the connection token: an HS256 JWT
whose ``sub`` is the user name, minted by ``make_connection_token`` with the
node's secret. The refresh token is an opaque random string; the database keeps
only its SHA-256. Each refresh token is spent once for a new pair, and all the
tokens of one login form a family: spending a token twice means it leaked, so
the whole family is revoked and whoever holds it must log in again.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from ..config import Settings
from ..hub import Hub
from ..protocol import Disconnect, DisconnectCode
from ..store import RefreshOutcome, Store, User, UserExists
from ..store.models import utcnow
from .passwords import Passwords, check_password, check_user_name
from .tokens import InvalidToken, TokenExpired, make_connection_token

# The close code and reason every connection of a user gets at logout: 3503 is
# terminal, so the SDKs do not reconnect with the token they still hold.
LOGOUT = Disconnect(int(DisconnectCode.FORCE_NO_RECONNECT), "logged out")

# The longest user name kept as a rate limit key (longer ones are cut).
_MAX_KEY = 128


class LoginRefused(Exception):
    """Wrong credentials or an unusable refresh token (HTTP 401, ``invalid_grant``)."""


class RateLimited(Exception):
    """Too many login attempts (HTTP 429); retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f}s")
        self.retry_after = retry_after


class Unauthenticated(Exception):
    """A bearer access token that is missing, invalid, expired or of a deleted user."""


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str


class LoginLimiter:
    """Token buckets of login attempts, one per user name and one per client address.

    Each bucket holds ``limit`` attempts and refills completely over ``window``
    seconds. An attempt needs a token from both its buckets; when either is
    empty it is refused before any password is checked, so the limit also caps
    the CPU an attacker can make us spend hashing.
    """

    # Past this many buckets, full ones (idle keys) are dropped.
    MAX_BUCKETS = 10_000

    def __init__(
        self,
        per_user: int,
        per_address: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {"user": per_user, "address": per_address}
        self._window = window
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def _level(self, kind: str, key: str, now: float) -> float:
        limit = self._limits[kind]
        tokens, stamp = self._buckets.get((kind, key), (float(limit), now))
        return min(float(limit), tokens + (now - stamp) * limit / self._window)

    def take(self, *, address: str, user: str | None = None) -> float:
        """Spend one attempt; returns 0, or the seconds to wait when refused."""
        now = self._clock()
        keys = [("address", address)]
        if user is not None:
            keys.append(("user", user[:_MAX_KEY]))
        levels = {k: self._level(*k, now) for k in keys}
        wait = max(
            ((1.0 - level) * self._window / self._limits[k[0]] for k, level in levels.items()),
            default=0.0,
        )
        if wait > 0:
            return wait
        if len(self._buckets) >= self.MAX_BUCKETS:
            self._prune(now)
        for k, level in levels.items():
            self._buckets[k] = (level - 1.0, now)
        return 0.0

    def _prune(self, now: float) -> None:
        for k in list(self._buckets):
            if self._level(*k, now) >= self._limits[k[0]]:
                del self._buckets[k]


def _digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


class Accounts:
    """Users, tokens and logins of one node, over its store."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: Hub,
        passwords: Passwords | None = None,
    ) -> None:
        if not settings.secret:
            raise ValueError("settings.secret is required (see Settings.with_generated_keys)")
        self.settings = settings
        self.secret = settings.secret
        self.store = store
        self.hub = hub
        self.passwords = passwords or Passwords()
        self.limiter = LoginLimiter(
            settings.login_attempts_per_user,
            settings.login_attempts_per_address,
            settings.login_window,
        )

    async def start(self) -> None:
        """Open (and maybe migrate) the database; rooms are then checked against it."""
        await self.store.open(migrate=self.settings.database_auto_migrate)
        self.hub.room_membership = self.store.is_member

    async def close(self) -> None:
        self.hub.room_membership = None
        await self.store.close()

    # --- tokens -----------------------------------------------------------

    def _access_token(self, user: str) -> str:
        """The connection token of ``user``, with the aud and iss the node checks, if any."""
        settings = self.settings
        return make_connection_token(
            self.secret,
            user,
            ttl=settings.access_token_ttl,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    async def _issue(self, user: User) -> TokenPair:
        """A fresh pair whose refresh token starts a new family (a login)."""
        ttl = self.settings.access_token_ttl
        access = self._access_token(user.name)
        refresh = secrets.token_urlsafe(32)
        expires_at = utcnow() + timedelta(seconds=self.settings.refresh_token_ttl)
        family = uuid.uuid4().hex
        await self.store.add_refresh_token(_digest(refresh), user.id, family, expires_at)
        return TokenPair(access, int(ttl), refresh)

    def _limit(self, address: str, user: str | None = None) -> None:
        wait = self.limiter.take(address=address, user=user)
        if wait > 0:
            self.hub.metrics.login_rate_limited += 1
            raise RateLimited(wait)

    async def login(self, name: str, password: str, address: str) -> TokenPair:
        """The password grant. Raises ``RateLimited`` or ``LoginRefused``."""
        self._limit(address, name)
        user = await self.store.user(name) if name else None
        ok, new_hash = await self.passwords.verify(
            password, user.password_hash if user is not None else None
        )
        if user is None or not ok:
            raise LoginRefused("incorrect user name or password")
        if new_hash is not None:
            await self.store.set_password_hash(user.name, new_hash)
        return await self._issue(user)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """The refresh grant: spend ``refresh_token`` for a new pair (rotation)."""
        if not refresh_token:
            raise LoginRefused("refresh token required")
        access_ttl = self.settings.access_token_ttl
        new_refresh = secrets.token_urlsafe(32)
        expires_at = utcnow() + timedelta(seconds=self.settings.refresh_token_ttl)
        rotation = await self.store.rotate_refresh_token(
            _digest(refresh_token), _digest(new_refresh), expires_at
        )
        if rotation.outcome is RefreshOutcome.REUSED:
            raise LoginRefused("refresh token reused: the session is revoked")
        if rotation.outcome is not RefreshOutcome.ROTATED or rotation.user is None:
            raise LoginRefused(f"refresh token {rotation.outcome.value}")
        access = self._access_token(rotation.user.name)
        return TokenPair(access, int(access_ttl), new_refresh)

    # --- logout -----------------------------------------------------------

    def disconnect(self, user: str) -> int:
        """Close every connection of ``user`` on this node with 3503 "logged out"."""
        return self.hub.disconnect_user(user, LOGOUT)

    async def logout_refresh_token(self, refresh_token: str) -> str:
        """Revoke the family of ``refresh_token`` and disconnect its user; returns the user."""
        user = await self.store.revoke_family_of(_digest(refresh_token))
        if user is None:
            raise LoginRefused("unknown refresh token")
        self.disconnect(user.name)
        return user.name

    async def logout_user(self, user: User) -> None:
        """Revoke every refresh token of ``user`` and disconnect them."""
        await self.store.revoke_user_tokens(user.id)
        self.disconnect(user.name)

    # --- users ------------------------------------------------------------

    async def register(self, name: str, password: str, address: str) -> User:
        """Self-registration (when allowed). Raises ValueError subclasses or UserExists."""
        self._limit(address)
        check_user_name(name)
        check_password(password)
        return await self.store.create_user(name, await self.passwords.hash_async(password))

    async def authenticate(self, access_token: str | None) -> User:
        """The user of a bearer access token, who must still exist."""
        if not access_token:
            raise Unauthenticated("access token required")
        try:
            claims = self.hub.verifier.verify_connection(access_token)
        except TokenExpired:
            raise Unauthenticated("access token expired") from None
        except InvalidToken:
            self.hub.metrics.auth_failures += 1
            raise Unauthenticated("invalid access token") from None
        user = await self.store.user(claims.user) if claims.user else None
        if user is None:
            raise Unauthenticated("invalid access token")
        return user


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


__all__ = [
    "LOGOUT",
    "Accounts",
    "LoginLimiter",
    "LoginRefused",
    "RateLimited",
    "TokenPair",
    "Unauthenticated",
    "UserExists",
    "retry_after_header",
]
