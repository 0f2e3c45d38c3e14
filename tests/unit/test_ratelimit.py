"""The per-connection command rate limit, with a fake clock."""

from __future__ import annotations

from tidings.hub.ratelimit import TokenBucket


class FakeClock:
    """Steps are binary fractions (1/8, 1/64...), so the sums below are exact."""

    def __init__(self) -> None:
        self.now = 1024.0

    def __call__(self) -> float:
        return self.now


def takes(bucket: TokenBucket, n: int) -> list[bool]:
    return [bucket.take() for _ in range(n)]


def test_burst_then_empty() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=3, clock=clock)
    assert takes(bucket, 5) == [True, True, True, False, False]


def test_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    assert takes(bucket, 3) == [True, True, False]
    clock.now += 0.25  # half a token
    assert not bucket.take()
    clock.now += 0.25  # one token in all
    assert takes(bucket, 2) == [True, False]
    clock.now += 1.0
    assert takes(bucket, 3) == [True, True, False]


def test_refill_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100.0, burst=2, clock=clock)
    clock.now += 3600
    assert takes(bucket, 3) == [True, True, False]


def test_refused_take_does_not_spend() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert bucket.take()
    for _ in range(8):
        clock.now += 1 / 16
        assert not bucket.take()
    clock.now += 0.5  # 8/16 + 0.5 = one whole token
    assert bucket.take()


def test_sustained_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=8.0, burst=1, clock=clock)
    allowed = 0
    for _ in range(1024):  # 16 s of attempts every 1/64 s: one token every 8 attempts
        clock.now += 1 / 64
        allowed += bucket.take()
    assert allowed == 128


def test_clock_standing_still() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1e9, burst=1, clock=clock)
    assert takes(bucket, 2) == [True, False]
