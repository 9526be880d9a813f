"""The token bucket behind the per-connection rate limit, on a clock of the test's own."""

from __future__ import annotations

from eformws.transports.ratelimit import TokenBucket


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_bucket_allows_its_burst_then_refuses():
    bucket = TokenBucket(rate=1.0, burst=3, clock=Clock())
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_its_rate_by_its_own_clock():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert [bucket.take() for _ in range(2)] == [True, False]


def test_refusals_in_a_row_reset_when_a_message_is_allowed():
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    bucket.take()
    bucket.take()
    bucket.take()
    assert bucket.refused_in_a_row == 2
    clock.now += 1.0
    assert bucket.take() and bucket.refused_in_a_row == 0
