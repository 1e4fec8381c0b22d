"""Progress events from tasks to whoever is watching (the CLI's progress bars).

Tasks run in threads of the same process when started from the CLI, so a process-wide
listener is enough; elsewhere (a deployment) nobody listens and events cost nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Listener = Callable[[str, str, int, int], None]  # (event, stage, count, bytes)
_listeners: list[Listener] = []
_lock = threading.Lock()


def listen(listener: Listener) -> Callable[[], None]:
    with _lock:
        _listeners.append(listener)

    def stop() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return stop


def _emit(event: str, stage: str, count: int, nbytes: int) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(event, stage, count, nbytes)


def start(stage: str, total: int) -> None:
    _emit("start", stage, total, 0)


def advance(stage: str, count: int = 1, nbytes: int = 0) -> None:
    _emit("advance", stage, count, nbytes)
