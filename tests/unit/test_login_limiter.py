"""The login attempt limiter: token buckets per user name and per client address."""

from __future__ import annotations

import pytest

from tidings.auth.accounts import LoginLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_user_gets_its_allowance_then_waits_for_the_refill() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_user=3, per_address=100, window=60, clock=clock)
    assert [limiter.take(address=f"a{i}", user="alice") for i in range(3)] == [0, 0, 0]
    wait = limiter.take(address="a9", user="alice")
    assert wait == 20.0  # one attempt comes back every 60 / 3 seconds
    assert limiter.take(address="a9", user="bob") == 0  # others are not affected
    clock.now += 19.5
    assert limiter.take(address="a9", user="alice") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take(address="a9", user="alice") == 0


def test_an_address_is_limited_across_user_names() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_user=100, per_address=2, window=10, clock=clock)
    assert limiter.take(address="x", user="u1") == 0
    assert limiter.take(address="x", user="u2") == 0
    assert limiter.take(address="x", user="u3") == 5.0
    assert limiter.take(address="x") == 5.0  # registrations count per address too
    assert limiter.take(address="y", user="u3") == 0


def test_a_refused_attempt_costs_nothing() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_user=1, per_address=5, window=10, clock=clock)
    assert limiter.take(address="x", user="alice") == 0
    for _ in range(10):
        assert limiter.take(address="x", user="alice") > 0
    # The address bucket was not drained by the refused attempts.
    for i in range(4):
        assert limiter.take(address="x", user=f"other{i}") == 0


def test_idle_buckets_are_dropped_when_there_are_many() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_user=2, per_address=2, window=1, clock=clock)
    limiter.MAX_BUCKETS = 10
    for i in range(5):
        limiter.take(address=f"a{i}", user=f"u{i}")
    clock.now += 5  # every bucket is full again
    limiter.take(address="new", user="new")
    assert len(limiter._buckets) == 2
