"""A thread pool that a stopping run can walk away from.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits,
so one thread stuck in a network read (a server that accepted the request and never
answers) holds the whole process until that read times out, and a run told to stop with
SIGTERM cannot end within seconds. These workers are daemon threads: when the run stops
(:mod:`obsharvest.runtime.stopping`), :func:`run_all` waits a short grace for the work under way,
gives up on the rest and returns; nothing waits for them afterwards.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, wait
from typing import TypeVar

from obsharvest.runtime import stopping

T = TypeVar("T")
R = TypeVar("R")
STOP_GRACE = 1.5  # seconds work under way may take to finish once the run stops


def run_all(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    *,
    name: str = "worker",
    grace: float = STOP_GRACE,
) -> Iterator[tuple[T, Future[R]]]:
    """``(item, future)`` in input order as each completes; after a stop request, the
    futures of items not finished within ``grace`` are cancelled or left unresolved
    (``future.done()`` False), and the iteration still yields every item."""
    futures: list[Future[R]] = [Future() for _ in items]
    jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    for index in range(len(items)):
        jobs.put(index)
    count = max(1, min(workers, len(items)))
    for _ in range(count):
        jobs.put(None)

    def work() -> None:
        while (index := jobs.get()) is not None:
            future = futures[index]
            if stopping.requested():
                future.cancel()
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(items[index]))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    for i in range(count):
        threading.Thread(target=work, name=f"{name}-{i}", daemon=True).start()
    deadline: float | None = None  # set when the run stops: one grace for all
    for item, future in zip(items, futures, strict=True):
        while not future.done():
            if stopping.requested():
                deadline = deadline or time.monotonic() + grace
                left = deadline - time.monotonic()
                if left <= 0:
                    future.cancel()  # not started: cancelled; under way: abandoned
                    break
                wait([future], timeout=min(left, 0.25))
            else:
                wait([future], timeout=0.25)
        yield item, future


def results(pairs: Iterable[tuple[T, Future[R]]], unfinished: Callable[[T], R]) -> list[R]:
    """Each future's result, or ``unfinished(item)`` for work the stop left undone."""
    out = []
    for item, future in pairs:
        if future.done() and not future.cancelled():
            out.append(future.result())
        else:
            out.append(unfinished(item))
    return out


def batches(items: Sequence, size: int, workers: int = 1) -> Iterator[list]:
    """Batches of at most ``size``, as even as possible (304 items by 250 → 152 + 152), and,
    when more than one is needed, as many as a multiple of ``workers`` (578 by 250 for two
    workers → 4 × 145, not 3 × 193), so no batch runs alone with the rest of the pool idle.
    What fits in one batch stays one task: its threads already work in parallel."""
    if not items:
        return
    count = -(-len(items) // max(1, size))
    if count > 1:
        workers = max(1, workers)
        count = min(len(items), -(-count // workers) * workers)
    step = -(-len(items) // count)
    for start in range(0, len(items), step):
        yield list(items[start : start + step])


def call(fn: Callable[[], R], *, name: str = "stoppable", grace: float = STOP_GRACE) -> R:
    """``fn()`` in a daemon thread, waited for until it returns or the run stops.

    A blocking call (a socket read the server never answers, a storage endpoint that
    accepts and says nothing) cannot be interrupted where it waits, and a signal handler
    only sets the stop flag: the caller would sit out the call's own timeouts and retries.
    Here the caller waits on the result *or* the stop; once the run stops, ``fn`` gets
    ``grace`` seconds to finish (0 for a call nobody needs once stopping: a UWS long poll),
    then it is abandoned (its thread ends with its timeout, nothing waits for it) and
    :class:`stopping.Interrupted` is raised. ``fn``'s own exceptions are raised as they are.
    ``fn`` runs in a copy of the caller's context (settings and run contexts are
    context variables: a Prefect Secret read in there sees the caller's API).
    """
    stopping.check()
    future: Future[R] = Future()
    context = contextvars.copy_context()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(context.run(fn))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    deadline: float | None = None
    while not future.done():
        if stopping.requested():
            deadline = deadline or time.monotonic() + grace
            left = deadline - time.monotonic()
            if left <= 0:
                raise stopping.Interrupted(stopping.describe())
            wait([future], timeout=min(left, 0.1))
        else:
            wait([future], timeout=0.1)
    return future.result()
