"""Rich progress bars for the CLI, fed by ``flows.progress`` events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tasks.report import human_bytes

from . import progress

_LABELS = {"query": "ObsCore queries (targets)", "images": "Datalink, WCS check, store (images)"}


@contextlib.contextmanager
def bars(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
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
        ids: dict[str, int] = {}
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
