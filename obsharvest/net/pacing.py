"""How many images one host serves to this process at once: adaptive, and polite.

Where latency dominates (small files, a distant archive), twice as many requests in
flight do twice as much per second; where the archive is the bottleneck, it says so with
429 or 503. So, as TCP does with its congestion window, the limit grows by one for every
image a host completes (doubling per window: slow start) until the host first throttles,
then by one per window (additive increase), always up to a cap per host
(``concurrency.max_per_host``: the politeness ceiling); an answer of 429 or 503 halves it
(multiplicative decrease). One limit per host for the whole process: the image
tasks of a run running at once share it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from pyvo.dal import DALRateLimitError

from obsharvest.runtime import stopping

THROTTLE_STATUS = frozenset({429, 503})
CALM_SECONDS = 1.0  # one halving per burst of throttled replies, not one per reply


class HostLimit:
    """An adaptive semaphore: ``limit`` slots, between ``floor`` and ``ceiling``."""

    def __init__(self, start: int, ceiling: int, floor: int = 2) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        self.limit = max(self.floor, min(start, self.ceiling))
        self.in_flight = 0
        self.peak = 0  # the most in flight at once (for logs and tests)
        self._credit = 0
        self._last_cut = 0.0
        self.slow_start = True  # until the first 429/503
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot while inside; waits (and notices a stopping run) while full."""
        with self._cond:
            while self.in_flight >= self.limit:
                stopping.check()
                self._cond.wait(timeout=0.5)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._cond:
                self.in_flight -= 1
                if ok:
                    self._grow()
                # as many waiters as there are free slots (a grown limit frees two), not
                # all of them: each woken thread takes the interpreter lock only to find
                # the slots taken and wait again (dozens of image threads wait on a host)
                self._cond.notify(max(1, self.limit - self.in_flight))

    def _grow(self) -> None:
        if self.slow_start:
            self.limit = min(self.ceiling, self.limit + 1)
            return
        self._credit += 1
        if self._credit >= self.limit and self.limit < self.ceiling:
            self._credit = 0
            self.limit += 1

    def throttled(self) -> None:
        """The host answered 429 or 503: half as many in flight (once per burst)."""
        with self._cond:
            now = time.monotonic()
            if now - self._last_cut < CALM_SECONDS:
                return
            self._last_cut = now
            self.slow_start = False
            self._credit = 0
            self.limit = max(self.floor, self.limit // 2)


_limits: dict[str, HostLimit] = {}
_lock = threading.Lock()


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def limit_for(url: str, start: int, ceiling: int) -> HostLimit:
    """The process's limit for ``url``'s host (made on first use; a later call with a
    different ceiling keeps the first: one politeness cap per host and process)."""
    host = host_of(url)
    with _lock:
        limit = _limits.get(host)
        if limit is None:
            limit = _limits[host] = HostLimit(start, ceiling)
        return limit


def is_throttle(exc: BaseException | None) -> bool:
    """Whether a failure is the host asking for less (429, 503)."""
    if isinstance(exc, DALRateLimitError):
        return True
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    return status in THROTTLE_STATUS
