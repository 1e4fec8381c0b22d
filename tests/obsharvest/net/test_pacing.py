"""The adaptive per-host limit: grows while images complete, halves on 429/503, capped."""

from __future__ import annotations

import threading

import pytest

from obsharvest.errors import TransientReadError
from obsharvest.net import pacing
from obsharvest.net.retry import RetryPolicy


def test_slow_start_then_one_per_window_after_a_throttle_up_to_the_ceiling():
    limit = pacing.HostLimit(start=4, ceiling=40)
    for _ in range(4):
        with limit.slot():
            pass
    assert limit.limit == 8  # slow start: one more per completed image
    limit.throttled()
    assert limit.limit == 4 and not limit.slow_start
    for _ in range(4):
        with limit.slot():
            pass
    assert limit.limit == 5  # congestion avoidance: one window of 4 images, one more
    for _ in range(1000):
        with limit.slot():
            pass
    assert limit.limit == 40  # never above the politeness cap


def test_a_failed_image_does_not_grow_the_limit():
    limit = pacing.HostLimit(start=2, ceiling=10)
    for _ in range(5):
        with pytest.raises(RuntimeError), limit.slot():
            raise RuntimeError("the image failed")
    assert limit.limit == 2 and limit.in_flight == 0


def test_throttling_halves_once_per_burst_and_never_below_the_floor(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(pacing.time, "monotonic", lambda: now[0])
    limit = pacing.HostLimit(start=16, ceiling=32, floor=2)
    limit.throttled()
    limit.throttled()  # the same burst
    assert limit.limit == 8
    for _ in range(5):
        now[0] += pacing.CALM_SECONDS + 0.1
        limit.throttled()
    assert limit.limit == 2


def test_slots_block_at_the_limit():
    limit = pacing.HostLimit(start=2, ceiling=2)
    entered, release = threading.Semaphore(0), threading.Event()

    def hold():
        with limit.slot():
            entered.release()
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    assert entered.acquire(timeout=5) and entered.acquire(timeout=5)
    assert not entered.acquire(timeout=0.3)  # the third waits for a slot
    assert limit.in_flight == 2
    release.set()
    assert entered.acquire(timeout=5)
    for t in threads:
        t.join(5)
    assert limit.peak == 2


def test_the_retry_policy_reports_429_and_503_but_not_other_failures():
    told = []
    policy = RetryPolicy(
        attempts=3, initial_wait=0.0, max_wait=0.01, on_throttle=lambda: told.append(1)
    )
    calls = iter(
        [
            TransientReadError("busy", status=503),
            TransientReadError("slow down", status=429),
            TransientReadError("reset", status=None),
        ]
    )

    def fail():
        raise next(calls)

    with pytest.raises(TransientReadError):
        policy.call(fail)
    assert told == [1, 1]


def test_one_limit_per_host():
    a = pacing.limit_for("https://archive.example/a?x=1", 4, 8)
    assert pacing.limit_for("https://ARCHIVE.example/b", 16, 64) is a
    assert pacing.limit_for("https://other.example/", 4, 8) is not a
