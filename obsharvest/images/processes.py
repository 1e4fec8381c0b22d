"""A batch of images in a worker process of its own: every core busy when the work is
CPU-bound.

The image threads of one interpreter share its lock: header walks, WCS builds, HTTP
bookkeeping and the glue around hashing ran on one core of two (issue 25). Here a batch
runs in a process of its own with its own threads, session, store and per-host limits;
each worker gets its share of the run's politeness cap, so the archive sees no more than
before. Workers are fresh interpreters, not forks: forking a process whose threads hold
locks is unsafe, and ``multiprocessing``'s spawn and forkserver import the caller's main
module again in every child (a user's unguarded script would harvest again). Idle
workers are kept for the next batch, so the ~0.7 s of imports is paid once per worker.

The worker and the run talk through a socket pair: the run sends the batch, the worker sends a
message per image done (progress), its log records, and at last the outcomes. Stopping
goes the other way: a worker ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole
process group, and the run decides), and when the run stops it sends the reason; the
worker stops as the run does (work under way gets a grace, the rest is recorded as
interrupted) and sends what it has. A worker that dies, or outlives the run's patience,
leaves a failure for each image it did not report: never a missing row.

No Prefect here: :mod:`obsharvest.tasks.images` calls :func:`harvest_images`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from obsharvest.models import ImageOutcome, ImageWork
from obsharvest.net.archive import Archive
from obsharvest.runtime import crashpoints, stopping, workers

from . import batch
from .batch import OnDone
from .settings import ImageSettings

log = logging.getLogger(__name__)

MIN_IMAGES = 64  # a smaller batch runs in the caller's threads
POLL_SECONDS = 0.2
STOP_PATIENCE = workers.STOP_GRACE + 10.0  # s after the stop is sent before a worker is killed
KILL_WAIT = 5.0


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def wanted(settings: ImageSettings, works: Sequence[ImageWork]) -> bool:
    """Whether this batch goes to a worker process: asked for, and big enough to repay
    the fork and the pipe (a few images run where they are)."""
    return settings.processes > 0 and len(works) >= MIN_IMAGES


def sized(settings: ImageSettings, batches: int) -> ImageSettings:
    """The settings for one of ``batches`` batches of one archive: at most that many of its
    batches can run in workers at once, so a lone batch keeps the archive's whole per-host
    limits (:func:`share` divides them by ``processes``)."""
    if settings.processes <= 0:
        return settings
    return replace(settings, processes=max(1, min(settings.processes, batches)))


def share(settings: ImageSettings) -> ImageSettings:
    """The settings for one of ``settings.processes`` workers: its share of the per-host
    limits, which in one process all batches share (net.pacing)."""
    n = max(1, settings.processes)
    return replace(
        settings,
        verify_workers=max(1, -(-settings.verify_workers // n)),
        max_per_host=max(1, -(-settings.max_per_host // n)),
        processes=0,
    )


class _Worker:
    """One worker process: a fresh interpreter (never a fork of this threaded process, and
    never an import of the caller's main module, which ``multiprocessing`` would run
    again in each child), talking over a socket pair."""

    started: list[_Worker] = []  # class-wide: what worker_pids looks through

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        code = (
            "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"from obsharvest.images.processes import serve; serve({theirs.fileno()})"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        _Worker.started.append(self)
        del _Worker.started[:-64]  # the newest few are enough to find the live ones

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, wait: float = KILL_WAIT) -> None:
        _send(self.conn, ("exit", None))
        self.conn.close()
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(wait)


class _Pool:
    """Idle workers kept for the next batch (importing astropy and the rest costs ~0.7 s
    of CPU); closed when this process exits."""

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
        return _Worker()

    def give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close(wait=1.0)


_POOL = _Pool()


def worker_pids() -> list[int]:
    """The worker processes alive now, idle or busy (benchmarks add up their CPU)."""
    return [w.proc.pid for w in _Worker.started if w.alive()]


def harvest_images(
    archive: Archive,
    works: Sequence[ImageWork],
    settings: ImageSettings,
    storage_url: str,
    storage_options: Mapping | None = None,
    on_done: OnDone | None = None,
) -> list[ImageOutcome]:
    """:func:`obsharvest.images.batch.harvest_images` in a worker process: the same
    outcomes, in the order of ``works``, one for every image whatever happens."""
    works = list(works)
    if not works:
        return []
    if stopping.requested():  # as the run's own pool records what it did not start
        interrupted = [ImageOutcome(w.key, {}, failure=stopping.describe()) for w in works]
        for outcome in interrupted:
            if on_done is not None:
                on_done(outcome)
        return interrupted
    worker = _POOL.take()
    payload = (archive, works, share(settings), storage_url, dict(storage_options or {}))
    reusable = False
    try:
        _send(worker.conn, ("batch", payload))
        reported: dict[str, ImageOutcome] = {}
        outcomes, why = _follow(worker, _Reported(reported, on_done))
        reusable = outcomes is not None and not stopping.requested() and worker.alive()
    finally:
        if reusable:
            _send(worker.conn, ("ack", None))
            _POOL.give_back(worker)
        else:  # a stopped worker may hold abandoned threads: it ends with its batch
            worker.close()
    if outcomes is not None:
        return outcomes
    log.warning("image worker process ended without its outcomes: %s", why)
    return [reported.get(w.key) or ImageOutcome(w.key, {}, failure=why) for w in works]


class _Reported:
    """``on_done``, keeping each outcome the worker reported: if it dies later, what it
    reported (and stored) still counts."""

    def __init__(self, kept: dict[str, ImageOutcome], on_done: OnDone | None) -> None:
        self.kept, self.on_done = kept, on_done

    def __call__(self, outcome: ImageOutcome) -> None:
        self.kept[outcome.key] = outcome
        if self.on_done is not None:
            self.on_done(outcome)


def _follow(worker: _Worker, on_done: _Reported) -> tuple[list[ImageOutcome] | None, str]:
    """Relay the worker's messages until its outcomes come; pass a stop on to it."""
    conn = worker.conn
    told_at: float | None = None
    while True:
        if stopping.requested() and told_at is None:
            told_at = time.monotonic()
            _send(conn, ("stop", stopping.describe()))
        if told_at is not None and time.monotonic() - told_at > STOP_PATIENCE:
            worker.proc.kill()
            return None, stopping.describe()
        message: tuple[str, Any] | None
        try:
            message = conn.recv() if conn.poll(POLL_SECONDS) else None
        except (EOFError, OSError):
            message = ("gone", "")
        if message is None:
            if worker.alive():
                continue
            message = ("gone", "")
        kind: str = message[0]
        value: Any = message[1]
        if kind == "done":
            on_done(value)
        elif kind == "log":
            _emit(value)
        elif kind == "result":
            kept = on_done.kept
            missing = [key for key in value if key not in kept]
            if missing:  # cannot happen: the worker reports every outcome before the list
                return None, f"the image worker did not report {len(missing)} images"
            return [kept[key] for key in value], ""
        elif kind == "error":
            return None, str(value)
        elif kind == "gone":
            if stopping.requested():
                return None, stopping.describe()
            try:
                code = worker.proc.wait(KILL_WAIT)
            except subprocess.TimeoutExpired:
                code = None
            return None, f"the image worker process ended (exit code {code})"


def _send(conn: Connection, message: tuple) -> None:
    with contextlib.suppress(OSError, ValueError):  # the worker is gone: _follow notices
        conn.send(message)


def _emit(record: tuple[str, int, str]) -> None:
    name, level, text = record
    logging.getLogger(name).log(level, "%s", text)


# -- in the worker ---------------------------------------------------------------------


class _Sender:
    """The worker's end of the pipe, shared by its image threads (sends are not atomic)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple) -> None:
        with self._lock:
            self.conn.send(message)


class _Forward(logging.Handler):
    """Log records to the run, which logs them as its own (Prefect captures them there)."""

    def __init__(self, sender: _Sender) -> None:
        super().__init__(logging.INFO)
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a log line must never fail an image
            self.sender.send(("log", (record.name, record.levelno, record.getMessage())))


def serve(fd: int) -> None:
    """The worker process (``fd``: its end of the socket pair): batches until told to exit
    or the run is gone; after a batch that was stopped, it exits (threads a stop
    abandoned must not meet the next batch)."""
    conn = Connection(fd)
    sender = _Sender(conn)
    handler = _Forward(sender)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("obsharvest").setLevel(logging.INFO)
    parent = os.getppid()
    crashpoints.work_for(parent)
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            break
        if kind != "batch":
            break
        watcher = threading.Thread(target=_watch, args=(conn, parent), daemon=True)
        watcher.start()
        _one_batch(sender, payload)
        watcher.join()  # the run's "ack" (or stop, or exit) of the outcomes ends it
        if stopping.requested():
            break
    root.removeHandler(handler)
    os._exit(0)


def _one_batch(sender: _Sender, payload: tuple) -> None:
    archive, works, settings, storage_url, storage_options = payload
    try:
        outcomes = batch.harvest_images(
            archive,
            works,
            settings,
            storage_url,
            storage_options,
            on_done=lambda outcome: sender.send(("done", outcome)),
        )
        sender.send(("result", [o.key for o in outcomes]))  # each was sent as it was done
    except BaseException as exc:  # noqa: BLE001 - told to the run, which records it per image
        with contextlib.suppress(Exception):  # the run is gone: nobody to tell
            sender.send(("error", f"image worker failed: {type(exc).__name__}: {exc}"))


def _watch(conn: Connection, parent: int) -> None:
    """Stop the worker's batch when the run says so, or when the run is gone."""
    while not stopping.requested():
        try:
            if conn.poll(POLL_SECONDS):
                kind, reason = conn.recv()
                if kind == "stop":
                    stopping.request(reason)
                return  # "ack" of the outcomes, "stop" or "exit": this batch is over
        except (EOFError, OSError):
            stopping.request(f"{stopping.INTERRUPTED}: the run's process is gone")
            return
        if os.getppid() != parent:
            stopping.request(f"{stopping.INTERRUPTED}: the run's process is gone")
            return
