"""Crash points: let tests kill the harvest at a chosen step, as SIGKILL would.

A crash-safety claim ("a rerun completes, nothing is lost or duplicated") is only worth
what its test covers, and external timing cannot hit "between writing the Parquet and
moving it into place" reliably. ``OBSHARVEST_CRASH_AT=name`` (or ``name:N`` for the N-th
time the point is reached) makes the process kill itself there. Unset, a crash point is a
dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "OBSHARVEST_CRASH_AT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def crashpoint(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        reached = _counts[name]
    if reached >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
