"""Crash points: let tests kill the harvest at a chosen step, as SIGKILL would.

A crash-safety claim ("a rerun completes, nothing is lost or duplicated") is only worth
what its test covers, and external timing cannot hit "between writing the Parquet and
moving it into place" reliably. ``OBSHARVEST_CRASH_AT=name`` (or ``name:N`` for the N-th
time the point is reached) makes the process kill itself there. Unset, a crash point is a
dictionary lookup.

Rendezvous points do the opposite: they make concurrent processes *meet* at a step, so a
test of runs writing at once does not depend on timing. ``OBSHARVEST_RENDEZVOUS=name@host:port``
makes the process, the first time it reaches ``name``, connect to the test's barrier and
wait until the barrier answers (when every process it expects has arrived).
"""

from __future__ import annotations

import os
import signal
import socket
import threading

ENV = "OBSHARVEST_CRASH_AT"
RENDEZVOUS_ENV = "OBSHARVEST_RENDEZVOUS"
RENDEZVOUS_TIMEOUT = 300.0  # seconds a process waits for the barrier at most
_run_pid: int | None = None  # set in an image worker process: the run it works for
_counts: dict[str, int] = {}
_met: set[str] = set()
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
        if _run_pid is not None:  # the harvest dies, not only its worker
            os.kill(_run_pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def work_for(run_pid: int) -> None:
    """In an image worker process: a crash point kills the run too, as SIGKILL of the
    harvest would (its workers then see their run gone and stop)."""
    global _run_pid
    _run_pid = run_pid


def rendezvous(name: str) -> None:
    """Wait at ``name`` for the test's barrier (see the module's docstring); once per process."""
    wanted = os.environ.get(RENDEZVOUS_ENV)
    if not wanted:
        return
    point, _, address = wanted.partition("@")
    if point != name:
        return
    with _lock:
        if name in _met:
            return
        _met.add(name)
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=RENDEZVOUS_TIMEOUT) as conn:
        conn.sendall(f"{os.getpid()} {name}\n".encode())
        conn.recv(1)  # the barrier's go (or its close)
