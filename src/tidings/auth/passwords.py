"""Password hashing with pwdlib (argon2id), off the event loop.

Verifying costs tens of milliseconds of CPU and memory on purpose; it runs in a
worker thread (argon2 releases the GIL), so connections keep flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import ClassVar

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

MIN_PASSWORD_LENGTH = 8
# Long enough for any passphrase, short enough that nobody makes us hash megabytes.
MAX_PASSWORD_LENGTH = 1024

# User names end up in channel names ('#' boundaries, ',' lists) and in logs:
# letters, digits and a few separators, starting with a letter or digit.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class WeakPassword(ValueError):
    """The password is too short or too long."""


class InvalidUserName(ValueError):
    """Not a valid user name."""


def check_user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise InvalidUserName(
            "a user name has 1-64 characters: letters, digits and _ . @ -, "
            "starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return password


class Passwords:
    """Hashes and verifies passwords; unknown users cost as much as known ones."""

    # A hash of a random password, checked for unknown users. Made once per
    # process (per hasher), the first time it is needed.
    _dummies: ClassVar[dict[int, str]] = {}

    def __init__(self, hasher: PasswordHash | None = None) -> None:
        self._hash = hasher or _DEFAULT

    async def _dummy(self) -> str:
        key = id(self._hash)
        dummy = self._dummies.get(key)
        if dummy is None:
            dummy = self._dummies[key] = await self.hash_async(secrets.token_urlsafe(16))
        return dummy

    def hash(self, password: str) -> str:
        return self._hash.hash(password)

    async def hash_async(self, password: str) -> str:
        return await asyncio.to_thread(self._hash.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> tuple[bool, str | None]:
        """Check ``password``; returns (ok, a new hash when the parameters changed).

        With ``password_hash`` None (no such user) a dummy hash is checked, so an
        unknown user takes as long to refuse as a wrong password.
        """
        if password_hash is None:
            dummy = await self._dummy()
            await asyncio.to_thread(self._hash.verify, password, dummy)
            return False, None
        return await asyncio.to_thread(self._hash.verify_and_update, password, password_hash)


_DEFAULT = PasswordHash((Argon2Hasher(),))
