"""Incremental harvests: remember how far in time the output is complete.

A scheduled run should query only what is new since the last successful run over the
same output. The state lives with the output (``<output>/state/incremental.json``, through
fsspec, so it works in object storage) and is written only after the run's Parquet and
files are safely written, and only when nothing failed: a failed image must be queried
again next time. Watermarks are per target, so a target added to the list gets its whole
history; they are dropped when the constraints change (other bands mean other images).
Images ingested late with observation times before the watermark are not seen by
incremental runs; a periodic full run (cheap: decided pairs are not fetched again)
catches them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import fsspec
import numpy as np

from .adql import Constraints
from .models import Target

STATE_PATH = "state/incremental.json"
VERSION = 1


def constraints_key(constraints: Constraints) -> str:
    """What must not change for watermarks to stay valid (everything but the time window)."""
    text = json.dumps(
        [
            sorted(constraints.bands),
            sorted(constraints.subtypes),
            sorted(constraints.calib_levels),
            constraints.extra_where,
            constraints.band_column,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class State:
    key: str
    watermarks: dict[str, float] = field(default_factory=dict)  # target name → MJD
    runs: list[dict] = field(default_factory=list)  # the last few successful runs

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "constraints": self.key,
                "watermarks": self.watermarks,
                "runs": self.runs[-20:],
            },
            indent=1,
        )


def _fs(output_url: str, storage_options: Mapping | None):
    fs, root = fsspec.core.url_to_fs(output_url, **dict(storage_options or {}))
    return fs, posixpath.join(root.rstrip("/"), STATE_PATH)


def load(output_url: str, storage_options: Mapping | None, key: str) -> State:
    """The saved state, or an empty one (first run, or the constraints changed)."""
    fs, path = _fs(output_url, storage_options)
    try:
        with fs.open(path, "r") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return State(key)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return State(key)  # a damaged state only costs a full (cheap) re-query
    if data.get("version") != VERSION or data.get("constraints") != key:
        return State(key, runs=list(data.get("runs", [])))
    return State(
        key,
        {str(k): float(v) for k, v in data.get("watermarks", {}).items()},
        list(data.get("runs", [])),
    )


def save(output_url: str, storage_options: Mapping | None, state: State) -> None:
    """Write atomically (temporary file, then move), so a crash leaves the old state."""
    fs, path = _fs(output_url, storage_options)
    directory = posixpath.dirname(path)
    fs.makedirs(directory, exist_ok=True)
    tmp = posixpath.join(directory, f".incremental.{uuid.uuid4().hex}.tmp")
    with fs.open(tmp, "w") as fh:
        fh.write(state.to_json())
    fs.mv(tmp, path)


def windows(targets: Sequence[Target], state: State) -> dict[float | None, list[Target]]:
    """Targets grouped by where their query window starts (None: from the beginning)."""
    groups: dict[float | None, list[Target]] = {}
    for target in targets:
        groups.setdefault(state.watermarks.get(target.name), []).append(target)
    return groups


def advanced(
    state: State, targets: Sequence[Target], t_min_values: Sequence[float], run: Mapping
) -> State:
    """The state after a successful run: every target is complete up to the newest image
    start time seen (or keeps its old watermark when the run saw nothing new)."""
    values = np.asarray([v for v in t_min_values if v is not None], dtype=float)
    values = values[np.isfinite(values)]
    newest = float(values.max()) if values.size else None
    marks = dict(state.watermarks)
    for target in targets:
        old = marks.get(target.name)
        candidates = [v for v in (old, newest) if v is not None]
        if candidates:
            marks[target.name] = max(candidates)
    return State(state.key, marks, [*state.runs, dict(run)])
