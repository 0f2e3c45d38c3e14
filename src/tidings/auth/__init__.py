"""Authentication: JWTs for connections and private-channel subscriptions."""

from .tokens import (
    ConnectionClaims,
    InvalidToken,
    SubscriptionClaims,
    TokenExpired,
    TokenVerifier,
    make_connection_token,
    make_subscription_token,
)

__all__ = [
    "ConnectionClaims",
    "InvalidToken",
    "SubscriptionClaims",
    "TokenExpired",
    "TokenVerifier",
    "make_connection_token",
    "make_subscription_token",
]
