"""A run's request to stop: a signal, a run deadline or a Prefect cancellation.

A harvest blocked in network reads cannot be interrupted where it waits, so stopping is
a flag that every step checks between requests (retries, Datalink batches, header
reads, download chunks, UWS polls) and that the image pool watches while it waits:
work not started is skipped, work under way is abandoned after a short grace, and every
unfinished image becomes a failure whose reason starts with ``interrupted``. What was
decided is still written (Parquet, summary), so a rerun completes the rest.

Abandoned transfers never leave a partial object under a final key: local files are
written under a temporary name and renamed only when complete, S3 objects appear only
when their multipart upload completes.
"""

from __future__ import annotations

import signal as _signal
import threading
import time
from dataclasses import dataclass

from obsharvest.errors import Interrupted

INTERRUPTED = "interrupted"


@dataclass
class _State:
    reason: str | None = None
    signum: int | None = None
    cancelled: bool = False  # Prefect asked to cancel the flow run
    at: float | None = None  # monotonic time of the first request


_event = threading.Event()
_lock = threading.Lock()
_state = _State()


def request(reason: str, *, signum: int | None = None, cancelled: bool = False) -> bool:
    """Ask the run to stop; the first reason wins. True if this call was the first."""
    with _lock:
        first = not _event.is_set()
        if first:
            _state.reason, _state.signum, _state.at = reason, signum, time.monotonic()
        _state.cancelled = _state.cancelled or cancelled
        _event.set()
    return first


def request_for_signal(signum: int, *, cancelled: bool = False) -> bool:
    name = _signal.Signals(signum).name
    return request(f"{INTERRUPTED} by {name}", signum=signum, cancelled=cancelled)


def requested() -> bool:
    return _event.is_set()


def describe() -> str:
    """The reason an unfinished image gets: ``interrupted by SIGTERM``, ..."""
    with _lock:
        return _state.reason or INTERRUPTED


def signum() -> int | None:
    with _lock:
        return _state.signum


def cancelled() -> bool:
    with _lock:
        return _state.cancelled


def check() -> None:
    """Raise :class:`Interrupted` if the run is stopping (call between requests)."""
    if _event.is_set():
        raise Interrupted(describe())


def sleep(seconds: float) -> None:
    """Sleep that ends early, raising :class:`Interrupted`, when the run stops."""
    if _event.wait(max(0.0, seconds)):
        raise Interrupted(describe())


def wait(seconds: float) -> bool:
    """Wait up to ``seconds`` for a stop request; True if one came."""
    return _event.wait(max(0.0, seconds))


def past_grace(seconds: float) -> bool:
    """True once ``seconds`` have passed since the stop request (False before any)."""
    with _lock:
        if _state.at is None:
            return False
        return time.monotonic() - _state.at > seconds


def reset() -> None:
    """Forget a stop request (a new run in the same process: tests, ``serve``)."""
    with _lock:
        _event.clear()
        _state.reason, _state.signum, _state.cancelled, _state.at = None, None, False, None


def exit_code(default: int) -> int:
    """128 + the signal that stopped the run (130 SIGINT, 143 SIGTERM), else ``default``."""
    number = signum()
    return 128 + number if number else default
