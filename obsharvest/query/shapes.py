"""Query shapes that degrade: what a service cannot run is asked more simply, once per run.

Services that advertise a feature do not always run every query that uses it: a
``TAP_UPLOAD`` accepted, but its join on ``CONTAINS(POINT(t.ra, t.dec), o.s_region)``
answering 500; ``INTERSECTS`` in the language but refused; a limit on the size of a
query that an OR-batch of 50 targets passes. The rows wanted are the same whatever the
shape, so when a shape fails with a reply that can be the shape's fault (a 400, a
refusal, a 500 that repeats; not a timeout, which says nothing of the shape), the same targets are asked again in the next simpler
shape, from richest to simplest:

    upload join  →  OR-batch of n  →  OR-batches of n/4 ... 1  →  1 target without INTERSECTS

What worked is remembered for the service for the rest of the run (:class:`ShapeMemory`,
one per run, carried by ``QueryOptions``), said in one log line, and later batches start
there. When even the simplest shape fails the fault is not the shape's (a wrong
``extra_where``, a service that is down): that error is raised as it is, and the service
is not walked down the ladder again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from obsharvest.errors import QueryError, ServiceError, ServiceRefusedError
from obsharvest.models import Target
from obsharvest.net.redact import strip_query

log = logging.getLogger(__name__)

SHRINK = 4  # an OR-batch that fails is asked again in batches this many times smaller
# statuses that say "not this request" rather than "not you" (401/403) or "not here" (404)
_SHAPE_STATUSES = frozenset({400, 413, 414, 431})


@dataclass(frozen=True)
class Shape:
    """How a batch of targets is asked: one upload join or OR-batches of ``size``."""

    upload: bool
    size: int
    intersects: bool

    def describe(self) -> str:
        what = "upload joins" if self.upload else f"OR-batches of {self.size}"
        if self.size == 1 and not self.upload:
            what = "one target per query"
        return what if self.intersects else f"{what} without INTERSECTS"


def simpler(shape: Shape, targets: Sequence[Target], problem: str = "") -> Shape | None:
    """The next simpler shape for ``targets``, or None when there is none. A service that
    names INTERSECTS in its refusal loses INTERSECTS first, before any batch shrinks."""
    if shape.upload:
        return Shape(False, shape.size, shape.intersects)
    drop = shape.intersects and any(t.radius for t in targets)
    if drop and "INTERSECTS" in problem.upper():
        return Shape(False, shape.size, False)
    size = min(shape.size, len(targets))
    if size > 1:
        return Shape(False, max(1, size // SHRINK), shape.intersects)
    if drop:
        return Shape(False, 1, False)
    return None


def may_be_the_shape(exc: BaseException) -> bool:
    """Whether a failed query may have failed for its shape (then a simpler one may work)."""
    if isinstance(exc, ServiceRefusedError):
        return exc.status in _SHAPE_STATUSES or exc.status is None
    if isinstance(exc, ServiceError):  # a 500 that repeats; no reply at all is no answer
        return exc.status is not None and exc.status >= 500
    return isinstance(exc, QueryError)


class ShapeMemory:
    """What a run has learnt of its services' shapes (thread-safe; a process that receives
    a pickled copy, a Dask worker, learns on its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._upload_refused: set[str] = set()
        self._intersects_refused: set[str] = set()
        self._max_batch: dict[str, int] = {}
        self._gave_up: set[str] = set()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def start(self, service: str, wanted: Shape) -> Shape:
        """The shape to begin with: what is wanted, less what the service refused."""
        with self._lock:
            return Shape(
                upload=wanted.upload and service not in self._upload_refused,
                size=min(wanted.size, self._max_batch.get(service, wanted.size)),
                intersects=wanted.intersects and service not in self._intersects_refused,
            )

    def gave_up(self, service: str) -> bool:
        with self._lock:
            return service in self._gave_up

    def give_up(self, service: str) -> None:
        with self._lock:
            self._gave_up.add(service)

    def learn(self, service: str, failed: Shape, worked: Shape, problem: str) -> None:
        """Remember that ``worked`` did where ``failed`` did not; say so the first time."""
        with self._lock:
            news = []
            if failed.upload and not worked.upload and service not in self._upload_refused:
                self._upload_refused.add(service)
                news.append("upload joins")
            refused = self._intersects_refused
            if failed.intersects and not worked.intersects and service not in refused:
                refused.add(service)
                news.append("INTERSECTS")
            smaller = worked.size < self._max_batch.get(service, failed.size + 1)
            if worked.size < failed.size and not failed.upload and smaller:
                self._max_batch[service] = worked.size
                news.append(f"OR-batches of {failed.size}")
        if news:
            log.warning(
                "%s could not run %s (%s): asking with %s from now on",
                strip_query(service),
                " or ".join(news),
                problem[:200],
                worked.describe(),
            )
