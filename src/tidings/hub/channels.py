"""Channel names and the rules they carry. Pure functions: no I/O.

A channel name has up to three parts, all optional:

* a ``$`` prefix: a private channel; subscribing needs a subscription token;
* ``namespace:`` before the first colon: the channel takes that namespace's options;
* ``#user1,user2`` after the last ``#``: only those users may subscribe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import NamespaceOptions, Settings
from ..protocol import ErrorCode, ProtocolError

NAMESPACE_SEPARATOR = ":"
USER_BOUNDARY = "#"
USER_SEPARATOR = ","
PRIVATE_PREFIX = "$"

# Control characters and whitespace are refused: they break logs, URLs and
# line-based tools, and no legitimate channel needs them.
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    namespace: str
    options: NamespaceOptions
    private: bool
    # Users allowed by a '#' boundary, or None when the channel has none.
    allowed_users: frozenset[str] | None

    def user_allowed(self, user: str) -> bool:
        return self.allowed_users is None or (user != "" and user in self.allowed_users)


def parse_channel(name: str, settings: Settings) -> Channel:
    """Resolve a channel name to its namespace options, or refuse it.

    Raises ``ProtocolError`` 107 for a malformed name and 102 for a namespace
    that is not configured.
    """
    if not name or len(name.encode()) > settings.max_channel_length or _FORBIDDEN.search(name):
        raise ProtocolError.of(ErrorCode.BAD_REQUEST, "invalid channel name")
    private = name.startswith(PRIVATE_PREFIX)
    bare = name[1:] if private else name
    namespace = ""
    if NAMESPACE_SEPARATOR in bare:
        namespace = bare.split(NAMESPACE_SEPARATOR, 1)[0]
    options = settings.namespace(namespace)
    if options is None:
        raise ProtocolError.of(ErrorCode.UNKNOWN_CHANNEL)
    allowed_users: frozenset[str] | None = None
    if options.allow_user_limited_channels and USER_BOUNDARY in bare:
        users = bare.rsplit(USER_BOUNDARY, 1)[1]
        allowed_users = frozenset(u for u in users.split(USER_SEPARATOR) if u)
    return Channel(
        name=name,
        namespace=namespace,
        options=options,
        private=private,
        allowed_users=allowed_users,
    )


def personal_channel(user: str) -> str:
    """The channel ``send_notification`` publishes to: only ``user`` may subscribe.

    Raises ``ProtocolError`` 107 for a user name that would change whom the
    boundary admits (``x#bob`` admits bob, ``a,b`` admits both).
    """
    if not user or USER_BOUNDARY in user or USER_SEPARATOR in user:
        raise ProtocolError.of(ErrorCode.BAD_REQUEST, "user name cannot have a personal channel")
    return f"notifications{USER_BOUNDARY}{user}"
