"""The adaptive per-host limit: grows while images complete, halves on 429/503, capped."""

from __future__ import annotations

import threading
import time

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


class _CountingCondition(threading.Condition):
    """A Condition that counts the waiters each release asks to wake, and whose waits
    outlast the test: a wake-up lost would leave a thread asleep, not polling."""

    woken: list[int]

    def notify(self, n: int = 1) -> None:
        self.woken.append(n)
        super().notify(n)

    def notify_all(self) -> None:
        self.woken.append(len(self._waiters))  # type: ignore[attr-defined]
        super().notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        return super().wait(timeout=60)


def test_a_release_wakes_as_many_waiters_as_slots_it_frees_and_none_is_lost():
    """Waking every waiter on each release made dozens of image threads take the
    interpreter lock only to wait again. Twelve threads behind a limit of 2: the first two
    hold their slots until ten others wait; each release wakes at most the free slots'
    worth (2), never all ten, and every thread gets through on wake-ups alone."""
    limit = pacing.HostLimit(start=2, ceiling=2, floor=2)
    cond = _CountingCondition()
    cond.woken = []
    limit._cond = cond
    release = threading.Event()
    through: list[int] = []

    def worker(k: int) -> None:
        with limit.slot():
            through.append(k)
            if k < 2:
                release.wait(timeout=30)

    first = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in first:
        t.start()
    rest = [threading.Thread(target=worker, args=(k,)) for k in range(2, 12)]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 30
    while len(cond._waiters) < 10 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        release.wait(0.01)
    assert len(cond._waiters) == 10  # type: ignore[attr-defined]
    release.set()
    for t in first + rest:
        t.join(30)
    assert sorted(through) == list(range(12)) and limit.in_flight == 0 and limit.peak == 2
    assert cond.woken and max(cond.woken) <= 2, cond.woken
