"""The CLI's progress, fed by ``obsharvest.flows.progress`` events: rich bars on a terminal, plain
lines at a steady interval elsewhere (cron mails, worker logs, ``| tee``), where bars
would be a stream of control codes or nothing at all."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from obsharvest.report import human_bytes
from obsharvest.tasks import progress

_LABELS = {"query": "ObsCore queries (targets)", "images": "Datalink, WCS check, store (images)"}
_SHORT = {"query": "queries", "images": "images"}


@contextlib.contextmanager
def progress_display(
    *, terminal: bool, verbose: bool = False, interval: float = 30.0
) -> Iterator[None]:
    """Bars on a terminal; elsewhere a line every ``interval`` seconds (0: none); nothing
    with ``verbose`` (the debug log says more)."""
    if verbose:
        yield
    elif terminal:
        with bars(enabled=True):
            yield
    elif interval > 0:
        with lines(interval):
            yield
    else:
        yield


class ProgressLines:
    """Counts from progress events, written as one line per ``tick``.

    ``tick`` is what the timer thread calls every interval; tests call it directly.
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.bytes = 0
        self._lock = threading.Lock()
        self._last = ""
        self.beats = 0  # lines written

    def on_event(self, event: str, stage: str, count: int, nbytes: int) -> None:
        with self._lock:
            if event == "start":
                self.totals[stage] = count
                self.done.setdefault(stage, 0)
            else:
                self.done[stage] = self.done.get(stage, 0) + count
                self.bytes += nbytes

    def line(self) -> str:
        with self._lock:
            parts = []
            for stage, total in self.totals.items():
                done = min(self.done.get(stage, 0), total) if total else self.done.get(stage, 0)
                share = f" ({100 * done / total:.0f}%)" if total else ""
                parts.append(f"{_SHORT.get(stage, stage)} {done}/{total}{share}")
            if self.bytes:
                parts.append(f"{human_bytes(self.bytes)} stored")
        elapsed = self.clock() - self.started
        return f"progress: {', '.join(parts) or 'starting'}; {elapsed:.0f} s elapsed"

    def tick(self, *, force: bool = False) -> str | None:
        """Write the line (even when nothing moved: a steady heartbeat); ``force`` only
        matters for the closing line, written when something changed since the last."""
        text = self.line()
        body = text.rsplit(";", 1)[0]
        if force and body == self._last:
            return None
        self._last = body
        self.beats += 1
        print(text, file=self.stream, flush=True)
        return text


@contextlib.contextmanager
def lines(interval: float, stream: TextIO | None = None) -> Iterator[ProgressLines]:
    """A progress line every ``interval`` seconds on ``stream`` (stderr) while inside."""
    display = ProgressLines(stream or sys.stderr)
    stop = progress.listen(display.on_event)
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval):
            display.tick()

    thread = threading.Thread(target=beat, name="progress-lines", daemon=True)
    thread.start()
    try:
        yield display
    finally:
        done.set()
        stop()
        thread.join(timeout=1.0)
        if display.beats:  # a run shorter than one interval stays silent: the summary says it
            display.tick(force=True)


@contextlib.contextmanager
def bars(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[size]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        ids: dict[str, TaskID] = {}
        stored = {"bytes": 0}

        def on_event(event: str, stage: str, count: int, nbytes: int) -> None:
            if event == "start":
                ids[stage] = bar.add_task(_LABELS.get(stage, stage), total=count, size="")
            elif stage in ids:
                stored["bytes"] += nbytes
                size = human_bytes(stored["bytes"]) if stored["bytes"] else ""
                bar.update(ids[stage], advance=count, size=size)

        stop = progress.listen(on_event)
        try:
            yield
        finally:
            stop()
