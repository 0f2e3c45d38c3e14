"""The operator's API behind the admin page: ``/admin/api/*``, for users with ``is_admin``.

Bearer access token auth, as ``/rooms``: 401 without a valid token, 403 for a
user who is not an admin. What it shows is this node's view (its connections
and the channels they are in); the rates come from the hub's counters
(``hub.metrics``), sampled each time the page asks.
"""

# No ``from __future__ import annotations``: FastAPI must see the dependency
# annotations of the routes, which refer to names local to build_admin_router.

import time
from collections import deque
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from ..auth.accounts import Accounts, Unauthenticated
from ..brokers import BrokerUnavailable
from ..hub import Hub, personal_channel
from ..protocol import ProtocolError
from ..store import User
from .rooms import bearer_scheme

# Listed at most; the totals say how many there are.
MAX_LISTED = 200

RATE_COUNTERS = ("messages_in", "messages_out", "publications_in", "publications_out")


class RateMeter:
    """Per-second rates of the hub's counters, over the last ``window`` seconds of samples.

    A sample is taken at each read (at most one per ``min_gap``); the rate is
    the change between the oldest sample still in the window and now. The
    first read, with nothing to compare with, averages since the node started.
    """

    def __init__(self, hub: Hub, window: float = 10.0, min_gap: float = 0.5) -> None:
        self.hub = hub
        self.window = window
        self.min_gap = min_gap
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()

    def _counters(self) -> tuple[int, ...]:
        metrics = self.hub.metrics
        return tuple(int(getattr(metrics, name)) for name in RATE_COUNTERS)

    def read(self) -> dict[str, float]:
        now, counters = time.monotonic(), self._counters()
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        if samples and now - samples[0][0] >= self.min_gap:
            then, old = samples[0]
        else:
            then = now - max(time.time() - self.hub.started_at, 1e-3)
            old = (0,) * len(counters)
        if not samples or now - samples[-1][0] >= self.min_gap:
            samples.append((now, counters))
        elapsed = now - then
        rates = {
            name: round((new - before) / elapsed, 2)
            for name, new, before in zip(RATE_COUNTERS, counters, old, strict=True)
        }
        return {**rates, "window": round(elapsed, 2)}


class Notification(BaseModel):
    user: str = Field(min_length=1, max_length=64)
    data: Any


class Broadcast(BaseModel):
    channels: list[str] = Field(min_length=1, max_length=100)
    data: Any


def build_admin_router(accounts: Accounts) -> APIRouter:
    hub = accounts.hub
    store = accounts.store
    meter = RateMeter(hub)
    router = APIRouter(prefix="/admin/api", tags=["admin"])

    async def admin(token: Annotated[str | None, Depends(bearer_scheme)]) -> User:
        try:
            user = await accounts.authenticate(token)
        except Unauthenticated as e:
            raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None
        if not user.is_admin:
            raise HTTPException(403, "admins only")
        return user

    Admin = Annotated[User, Depends(admin)]

    @router.get("/stats")
    async def stats(user: Admin) -> dict[str, Any]:
        """Connections, channels and their local subscribers, and message rates."""
        sessions = sorted(hub.sessions.values(), key=lambda s: (s.user, s.client_id))
        counts = sorted(hub.channel_counts().items(), key=lambda kv: (-kv[1], kv[0]))
        metrics = hub.metrics
        return {
            "node": hub.stats(),
            "clients": [
                {
                    "client": s.client_id,
                    "user": s.user,
                    "channels": sorted(s.subscriptions),
                    "queued_bytes": s.queued_bytes,
                }
                for s in sessions[:MAX_LISTED]
            ],
            "clients_total": len(sessions),
            "channels": [{"channel": c, "subscribers": n} for c, n in counts[:MAX_LISTED]],
            "channels_total": len(counts),
            "rates": meter.read(),
            "totals": {name: int(getattr(metrics, name)) for name in RATE_COUNTERS},
        }

    @router.post("/notify")
    async def notify(body: Notification, user: Admin) -> dict[str, Any]:
        """``send_notification``: publish to the user's ``notifications#<user>``."""
        if body.data is None:
            raise HTTPException(400, "data is required")
        if await store.user(body.user) is None:
            raise HTTPException(404, "user not found")
        try:
            channel = hub.channel(personal_channel(body.user))
            position = await hub.publish(channel, _encode(body.data))
        except ProtocolError as e:
            raise HTTPException(400, e.message) from None
        except BrokerUnavailable:
            raise HTTPException(503, "broker unavailable: not sent") from None
        return {"channel": channel.name, "offset": position.offset, "epoch": position.epoch}

    @router.post("/broadcast")
    async def broadcast(body: Broadcast, user: Admin) -> dict[str, Any]:
        """Publish the same data to each channel (as the server API's ``broadcast``)."""
        if body.data is None:
            raise HTTPException(400, "data is required")
        try:
            channels = [hub.channel(name) for name in body.channels]
        except ProtocolError as e:
            raise HTTPException(400, e.message) from None
        data = _encode(body.data)
        results = []
        try:
            for channel in channels:
                position = await hub.publish(channel, data)
                results.append({"channel": channel.name, "offset": position.offset})
        except BrokerUnavailable:
            raise HTTPException(503, "broker unavailable: not (all) sent") from None
        return {"results": results}

    return router


def _encode(data: Any) -> bytes:
    return orjson.dumps(data)
