"""Incremental harvests: remember how far in time the output is complete.

A scheduled run should query only what is new since the last successful run over the
same output. The state lives with the output (``<output>/state/incremental/*.json``,
through fsspec, so it works in object storage) and is written only after the run's Parquet
and files are safely written, and only when nothing failed: a failed image must be queried
again next time. Watermarks are per target, so a target added to the list gets its whole
history; they belong to the constraints they were earned under (other bands mean other
images), so a run with other constraints starts from none. Images ingested late with
observation times before the watermark are not seen by incremental runs; a periodic full
run (cheap: decided pairs are not fetched again) catches them.

Runs into one output at once must not lose each other's watermarks, so the state is
append-only like the Parquet: each successful run adds a file of its own (unique name,
written whole: temporary + rename, or a single PUT on object stores), and :func:`load`
takes, per target, the greatest watermark of all files with the run's constraints. Every
watermark is a claim ("complete up to"), so the greatest of several true claims is true.
After writing, a run folds the files into one per constraints (:func:`fold`): it writes
the merged file first and then removes the files it read, and only those, so a claim is
always in some file, whatever other runs write or fold meanwhile. The file of earlier
versions (``state/incremental.json``) is read and folded like the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from obsharvest.metadata import READ_ATTEMPTS, direct_write, forget_listings, part_name
from obsharvest.models import Target
from obsharvest.query.adql import Constraints
from obsharvest.storage.output import Output

log = logging.getLogger(__name__)

STATE_DIR = "state/incremental"  # one file per successful run, folded after each save
STATE_PATH = "state/incremental.json"  # the single file of earlier versions: still read
VERSION = 1


def _state_name(tag: str) -> str:
    return part_name(tag).removesuffix(".parquet") + ".json"


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


def _files(fs, root: str) -> list[str]:
    """The state files, oldest first: the single file of earlier versions, then the
    per-run and folded ones (their names start with the UTC time they were written)."""
    for path in (posixpath.join(root, STATE_PATH), posixpath.join(root, STATE_DIR)):
        forget_listings(fs, path)  # another run may have written or folded since
    legacy = posixpath.join(root, STATE_PATH)
    try:
        found = fs.find(posixpath.join(root, STATE_DIR))
    except FileNotFoundError:
        found = []
    files = sorted(
        p for p in found if p.endswith(".json") and not posixpath.basename(p).startswith((".", "_"))
    )
    return ([legacy] if fs.exists(legacy) else []) + files


def _read_json(fs, path: str) -> dict | None:
    """A state file's content; None when it is damaged (that only costs a full re-query)."""
    try:
        with fs.open(path, "r") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_all(fs, root: str) -> list[tuple[str, dict | None]]:
    """(path, content) of every readable state file. A file that vanishes between the
    listing and its read was folded by another run, which wrote its claims first: list
    again."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return [(path, _read_json(fs, path)) for path in _files(fs, root)]
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS:
                raise
    return []  # unreachable


def _merged(key: str, contents: Sequence[dict | None]) -> State:
    """One state from several files: per target the greatest watermark of the files with
    constraints ``key``, and their runs (each once), oldest first."""
    marks: dict[str, float] = {}
    runs: dict[str, dict] = {}
    for data in contents:
        if data is None:
            continue
        if data.get("version") != VERSION or data.get("constraints") != key:
            continue
        for run in data.get("runs", []):
            if isinstance(run, dict):
                runs.setdefault(str(run.get("run_id") or json.dumps(run, sort_keys=True)), run)
        for name, value in (data.get("watermarks") or {}).items():
            value = float(value)
            if name not in marks or value > marks[name]:
                marks[str(name)] = value
    ordered = sorted(runs.values(), key=lambda r: str(r.get("finished_at") or ""))
    return State(key, marks, ordered)


def load(output: Output | str, key: str) -> State:
    """The saved state for constraints ``key``, merged from every state file; an empty one
    on the first run or when no run had these constraints."""
    output = Output.of(output)
    return _merged(key, [data for _, data in _read_all(output.fs, output.root)])


def states(output: Output | str) -> dict[str, State]:
    """Every constraints' state in the output, by constraints key (for inspection)."""
    output = Output.of(output)
    contents = [data for _, data in _read_all(output.fs, output.root)]
    keys = {d.get("constraints") for d in contents if d and d.get("version") == VERSION}
    return {k: _merged(k, contents) for k in sorted(k for k in keys if isinstance(k, str))}


def _write(fs, path: str, text: str) -> None:
    """A new file that appears whole: one PUT on object stores, else temporary + rename."""
    directory = posixpath.dirname(path)
    if direct_write(fs):
        fs.pipe_file(path, text.encode())
        return
    fs.makedirs(directory, exist_ok=True)
    tmp = posixpath.join(directory, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with fs.open(tmp, "w") as fh:
            fh.write(text)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def save(output: Output | str, state: State, run_id: str | None = None) -> str:
    """Add ``state`` as a file of its own (no other run's file is replaced), then fold the
    state files; returns the path written. Folding is tidying: if it fails, the state is
    still complete, and the failure is only logged."""
    output = Output.of(output)
    path = output.path(STATE_DIR, _state_name(run_id or "run"))
    _write(output.fs, path, state.to_json())
    try:
        fold(output)
    except Exception as exc:  # the state is saved; the next run folds
        log.warning("could not fold the incremental state files: %s", exc)
    return path


def fold(output: Output | str) -> list[str]:
    """Merge the state files into one per constraints; returns the paths removed.

    The merged file is written before any file is removed, and only files read here are
    removed, so every watermark stays in some file whatever other runs do meanwhile; two
    folds at once may leave two files with the same claims, which the next one merges.
    """
    output = Output.of(output)
    fs, root = output.fs, output.root
    found = _read_all_present(fs, root)
    by_key: dict[str | None, list[tuple[str, dict | None]]] = {}
    for path, data in found:
        if data is not None and data.get("version") == VERSION:
            constraints = data.get("constraints")
        else:
            constraints = None  # damaged or foreign: grouped under None, left alone
        by_key.setdefault(constraints, []).append((path, data))
    removed = []
    for key, group in by_key.items():
        if key is None or len(group) < 2:
            continue  # damaged or foreign files are left for a person to look at
        merged = _merged(key, [d for _, d in group])
        _write(fs, posixpath.join(root, STATE_DIR, _state_name("folded")), merged.to_json())
        for path, _ in group:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)
            removed.append(path)
    return removed


def _read_all_present(fs, root: str) -> list[tuple[str, dict | None]]:
    """Like :func:`_read_all`, but a file that vanished is skipped: another fold took it
    and wrote its claims into a file of its own, which this fold leaves alone."""
    out = []
    for path in _files(fs, root):
        try:
            out.append((path, _read_json(fs, path)))
        except FileNotFoundError:
            continue
    return out


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
    record = {**run, "finished_at": run.get("finished_at") or datetime.now(UTC).isoformat()}
    return State(state.key, marks, [*state.runs, record])
