"""Many runs, one output (issue 16): the Parquet and the incremental state are append-only.

Each run adds files of its own; a later row of a (target, image) pair supersedes an earlier
one when read; ``obsharvest compact`` drops superseded rows safely. The end-to-end tests
start three CLI harvests with different targets into one output at once (a local
directory, then S3 on SeaweedFS), make their Parquet writes overlap for certain (each run
waits at the write, its file written but not yet published, until all three are there: a
barrier, no sleeps), and check every row of all three is in the current view exactly
once. Before append-only writes, the same test lost rows (one run's file replaced the
others') or ended a run with a FileNotFoundError (its temporary removed by another run).

Every store the README names gets the same scenario: a local directory, S3 (SeaweedFS),
Google Cloud Storage (fake-gcs-server) and Azure Blob (Azurite) -- the CLI harvests once
per store, and ten rounds of three runs' output steps (write probes into an output that
does not exist yet, a shared image, Parquet, the gallery index) in worker processes
(tests/output_race.py). Before issue 22 a round failed one run's write probe with "no such
directory" (another run's probe removed the directory it had made) and the gallery index
showed only the run that ended last.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import pyvo

from obsharvest import incremental
from obsharvest.metadata import FILE_NAME, MetadataStore, current, file_metadata
from obsharvest.runtime.crashpoints import RENDEZVOUS_ENV
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from obsharvest.storage.output import Output
from tests.emulators import CLOUDS, Cloud, azure_cloud, gcs_cloud, s3_cloud
from tests.output_race import SHARED_KEY, Workers
from tests.seaweed import s3_client

REPO = Path(__file__).resolve().parents[2]
# three runs, two targets each, all in the archive's field: some images serve targets of
# two runs (stored once, by whichever run gets there first)
GROUPS = {
    "a": [("a-seed", 62.0, -37.0), ("a-east", 62.3, -37.05)],
    "b": [("b-north", 62.05, -36.8), ("b-ne", 62.35, -36.75)],
    "c": [("c-sw", 61.6, -37.3), ("c-core", 61.7, -36.8)],
}
T0 = datetime(2025, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- the supersede rule


def _rows(pairs, verdict="contains", *, at=None, run=None, band="i") -> pa.Table:
    n = len(pairs)
    columns = {
        "obsh_target_name": [t for t, _ in pairs],
        "obs_publisher_did": [d for _, d in pairs],
        "dataproduct_subtype": ["lsst.calexp"] * n,
        "lsst_band": [band] * n,
        "obsh_verdict": [verdict] * n,
    }
    if at is not None:
        columns["obsh_harvested_at"] = pa.array([at] * n, pa.timestamp("us", tz="UTC"))
    if run is not None:
        columns["obsh_run_id"] = [run] * n
    return pa.table(columns)


def _view(table: pa.Table | None) -> dict:
    assert table is not None
    rows = table.to_pylist()
    pairs = [(r["obsh_target_name"], r["obs_publisher_did"]) for r in rows]
    assert len(pairs) == len(set(pairs)), "a pair twice in the current view"
    return {(r["obsh_target_name"], r["obs_publisher_did"]): r["obsh_verdict"] for r in rows}


def test_the_newest_row_of_a_pair_is_current_whatever_the_order_of_rows():
    old = _rows([("s", "1"), ("s", "2")], "outside", at=T0, run="r1")
    new = _rows([("s", "2")], "contains", at=T0 + timedelta(seconds=1), run="r0")
    other = _rows([("t", "2")], "outside", at=T0 + timedelta(hours=1), run="r9")
    rows = pa.concat_tables([old, new, other]).to_pylist()
    for seed in range(5):
        random.Random(seed).shuffle(rows)
        view = _view(current(pa.Table.from_pylist(rows)))
        # the later time wins over the greater run id; other pairs are untouched
        assert view == {("s", "1"): "outside", ("s", "2"): "contains", ("t", "2"): "outside"}


def test_equal_times_go_to_the_greater_run_id_and_a_missing_time_is_oldest():
    tie = pa.concat_tables(
        [_rows([("s", "1")], "b", at=T0, run="run-b"), _rows([("s", "1")], "a", at=T0, run="run-a")]
    )
    assert _view(current(tie)) == {("s", "1"): "b"}
    undated = _rows([("s", "1")], "undated", at=T0, run="z")
    undated = undated.set_column(
        undated.column_names.index("obsh_harvested_at"),
        "obsh_harvested_at",
        pa.nulls(1, pa.timestamp("us", tz="UTC")),
    )
    both = pa.concat_tables([_rows([("s", "1")], "dated", at=T0, run="r"), undated])
    assert _view(current(both)) == {("s", "1"): "dated"}
    # no time and no run id at all (rows of hand-made tables): the later row wins
    plain = pa.concat_tables([_rows([("s", "1")], "first"), _rows([("s", "1")], "second")])
    assert _view(current(plain)) == {("s", "1"): "second"}
    assert current(plain.slice(0, 0)).num_rows == 0


def test_rows_keep_their_order_and_a_table_without_duplicates_is_returned_as_it_is():
    table = _rows([("b", "2"), ("a", "1"), ("c", "3")], at=T0, run="r")
    assert current(table) is table
    doubled = pa.concat_tables([table, _rows([("a", "1")], "x", at=T0 + timedelta(1), run="r")])
    assert [r["obsh_target_name"] for r in current(doubled).to_pylist()] == ["b", "c", "a"]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_appends_supersede_and_a_target_filter_is_the_view_of_its_targets(where, tmp_path):
    url = str(tmp_path) if where == "local" else f"memory://appends-{os.getpid()}/out"
    store = MetadataStore(url)
    assert store.read() is None
    store.append(_rows([("a", "1"), ("a", "2"), ("b", "1")], "outside", at=T0, run="r1"), "r1")
    store.append(_rows([("a", "2"), ("c", "3")], "contains", at=T0 + timedelta(1), run="r2"), "r2")
    store.append(_rows([("b", "9")], "contains", at=T0, run="r3", band="r"), "r3")
    assert len(store.files()) == 3  # one file per run and partition, none rewritten
    assert all(Path(p).name.startswith("part-") for p in store.files())
    view = _view(store.read())
    assert view == {
        ("a", "1"): "outside",
        ("a", "2"): "contains",
        ("b", "1"): "outside",
        ("c", "3"): "contains",
        ("b", "9"): "contains",
    }
    some = store.read(targets=["a", "b"], columns=["obsh_verdict"])
    assert _view(some) == {k: v for k, v in view.items() if k[0] in ("a", "b")}
    assert set(some.column_names) == {
        "obsh_target_name",
        "obs_publisher_did",
        "obsh_verdict",
        "obsh_run_id",
        "obsh_harvested_at",
    }
    done = store.compact()
    assert (done.files_before, done.files_after) == (3, 2)  # band r had one file already
    assert done.rows_before - done.rows_after == 1
    assert _view(store.read()) == view


def test_writers_at_once_each_add_a_file_and_no_row_is_lost(tmp_path):
    store = MetadataStore(str(tmp_path))
    n = 8
    start = threading.Barrier(n)
    errors = []

    def write(i: int) -> None:
        try:
            rows = _rows([(f"t{i}", "shared"), (f"t{i}", f"own-{i}")], at=T0, run=f"r{i}")
            start.wait(timeout=60)
            store.append(rows, run_id=f"r{i}")
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(store.files()) == n
    assert len(_view(store.read())) == 2 * n
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_compaction_never_removes_a_file_written_while_it_runs(tmp_path, monkeypatch):
    import obsharvest.metadata as metadata

    store = MetadataStore(str(tmp_path))
    store.append(_rows([("a", "1"), ("a", "2")], "outside", at=T0, run="r1"), "r1")
    store.append(_rows([("a", "2")], "contains", at=T0 + timedelta(1), run="r2"), "r2")
    before = set(store.files())
    view_of = metadata.current
    wrote = []

    def current_while_a_run_writes(table):
        # the compaction has read its files; a run appends now, superseding one pair
        if not wrote:
            late = _rows([("a", "1"), ("z", "9")], "late", at=T0 + timedelta(2), run="r3")
            wrote.extend(MetadataStore(str(tmp_path)).append(late, run_id="r3"))
        return view_of(table)

    monkeypatch.setattr(metadata, "current", current_while_a_run_writes)
    done = store.compact()
    monkeypatch.undo()
    after = set(store.files())
    assert set(done.removed) == before  # what it read, and only that
    assert after - before == {*done.written, *wrote} and len(after) == 2  # its own, the run's
    assert _view(store.read()) == {("a", "1"): "late", ("a", "2"): "contains", ("z", "9"): "late"}


def test_a_read_that_meets_a_file_a_compaction_removed_lists_again(tmp_path, monkeypatch):
    store = MetadataStore(str(tmp_path))
    store.append(_rows([("a", "1")], "outside", at=T0, run="r1"), "r1")
    store.append(_rows([("a", "1")], "contains", at=T0 + timedelta(1), run="r2"), "r2")
    listing = MetadataStore.files
    calls = []

    def files_then_compact(self):
        found = listing(self)
        if not calls:  # between this reader's listing and its reads, a compaction runs
            calls.append(found)
            MetadataStore(self.output).compact()
        return found

    monkeypatch.setattr(MetadataStore, "files", files_then_compact)
    assert _view(store.read()) == {("a", "1"): "contains"}
    monkeypatch.undo()
    assert not set(calls[0]) & set(store.files())  # it did read a removed listing first


def test_files_of_earlier_versions_are_just_more_files(tmp_path):
    """An output of the single-file layout (``obscore.parquet`` per partition) is read with
    the part files that runs add to it, and compacted like them."""
    store = MetadataStore(str(tmp_path))
    old = _rows([("a", "1"), ("a", "2")], "outside", at=T0, run="old")
    legacy = tmp_path / "metadata" / "lsst.calexp" / "i" / FILE_NAME
    legacy.parent.mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(old.replace_schema_metadata(file_metadata(old)), legacy)
    store.append(_rows([("a", "2")], "contains", at=T0 + timedelta(1), run="new"), "new")
    assert legacy.exists()  # current format already: nothing to migrate
    assert _view(store.read()) == {("a", "1"): "outside", ("a", "2"): "contains"}
    store.compact()
    assert not legacy.exists() and len(store.files()) == 1
    assert _view(store.read()) == {("a", "1"): "outside", ("a", "2"): "contains"}


def test_stale_temporaries_go_and_a_running_writers_stay(tmp_path):
    store = MetadataStore(str(tmp_path))
    store.append(_rows([("a", "1")], at=T0, run="r"), "r")
    directory = Path(store.files()[0]).parent
    dead, live = directory / ".part-dead.parquet.1.tmp", directory / ".part-live.parquet.2.tmp"
    for path in (dead, live):
        path.write_bytes(b"half a file")
    old = datetime.now().timestamp() - 2 * 3600
    os.utime(dead, (old, old))
    done = store.compact()
    assert done.temps_removed == (str(dead),) and live.exists() and not dead.exists()
    assert _view(store.read()) == {("a", "1"): "contains"}  # temporaries are never read


def test_the_next_write_removes_a_killed_writers_temporary_and_keeps_a_live_ones(tmp_path):
    import obsharvest.metadata as metadata

    store = MetadataStore(str(tmp_path))
    store.append(_rows([("a", "1")], at=T0, run="r"), "r")
    directory = Path(store.files()[0]).parent
    gone = subprocess.Popen(["true"])
    gone.wait()  # a writer of this host that no longer exists
    host = metadata._HOST or "host"
    dead = directory / f".part-x.parquet.0badf00d.{gone.pid}-{host}.tmp"
    live = directory / f".part-y.parquet.0badf00d.{os.getpid()}-{host}.tmp"
    elsewhere = directory / f".part-z.parquet.0badf00d.{gone.pid}-another_host.tmp"
    for path in (dead, live, elsewhere):
        path.write_bytes(b"half a file")
    store.append(_rows([("a", "2")], at=T0, run="r2"), "r2")
    assert not dead.exists() and live.exists() and elsewhere.exists()
    assert len(_view(store.read())) == 2


# ---------------------------------------------------------------- incremental state


def test_a_state_file_is_json_a_person_can_read(tmp_path):
    path = incremental.save(str(tmp_path), incremental.State("k", {"a": 1.0}), "r1")
    (only,) = (tmp_path / "state" / "incremental").glob("*.json")
    assert str(only) == path
    content = json.loads(only.read_text())
    assert content["constraints"] == "k" and content["watermarks"] == {"a": 1.0}


def test_runs_at_once_keep_each_others_watermarks(tmp_path):
    out = str(tmp_path)
    a, b = incremental.load(out, "k"), incremental.load(out, "k")
    # both loaded the same (empty) state; each saves its own targets' watermarks
    a.watermarks["a"] = 60000.0
    b.watermarks["b"] = 60001.0
    incremental.save(out, a, run_id="run-a")
    incremental.save(out, b, run_id="run-b")
    merged = incremental.load(out, "k")
    assert merged.watermarks == {"a": 60000.0, "b": 60001.0}
    files = list((tmp_path / "state" / "incremental").glob("*.json"))
    assert len(files) == 1  # folded after each save
    assert not [p for p in (tmp_path / "state").rglob("*") if p.name.endswith(".tmp")]
    # an older claim never lowers a newer one
    stale = incremental.State("k", {"a": 59000.0})
    incremental.save(out, stale, run_id="run-stale")
    assert incremental.load(out, "k").watermarks == {"a": 60000.0, "b": 60001.0}


def test_the_single_state_file_of_earlier_versions_is_read_and_folded(tmp_path):
    legacy = tmp_path / incremental.STATE_PATH
    legacy.parent.mkdir(parents=True)
    legacy.write_text(incremental.State("k", {"old": 1.0}, [{"run_id": "r0"}]).to_json())
    incremental.save(str(tmp_path), incremental.State("other", {"x": 2.0}), "r1")
    incremental.save(str(tmp_path), incremental.State("k", {"new": 3.0}), "r2")
    states = incremental.states(str(tmp_path))
    assert states["k"].watermarks == {"old": 1.0, "new": 3.0}
    assert states["other"].watermarks == {"x": 2.0}  # other constraints: kept apart
    assert not legacy.exists()  # folded into a file of the new layout
    assert [r["run_id"] for r in states["k"].runs] == ["r0"]


def test_a_fold_that_dies_before_removing_leaves_every_claim(tmp_path, monkeypatch):
    out = str(tmp_path)
    incremental.save(out, incremental.State("k", {"a": 1.0}), "r1")
    monkeypatch.setattr(incremental, "fold", lambda *a, **k: [])
    incremental.save(out, incremental.State("k", {"b": 2.0}), "r2")
    monkeypatch.undo()
    import fsspec.implementations.local as local

    def dies(self, path):
        raise OSError("killed")

    monkeypatch.setattr(local.LocalFileSystem, "rm_file", dies)
    with pytest.raises(OSError):
        incremental.fold(out)  # merged file written, nothing removed
    monkeypatch.undo()
    assert len(list((tmp_path / "state" / "incremental").glob("*.json"))) == 3
    assert incremental.load(out, "k").watermarks == {"a": 1.0, "b": 2.0}
    incremental.fold(out)
    assert len(list((tmp_path / "state" / "incremental").glob("*.json"))) == 1
    assert incremental.load(out, "k").watermarks == {"a": 1.0, "b": 2.0}


# ---------------------------------------------------------------- three CLI runs at once


@pytest.fixture(scope="module")
def field():
    """One archive for the module's runs, with the pairs each target's query finds."""
    with EmbeddedArchive(ArchiveSettings(n_visits=16)) as archive:
        service = pyvo.dal.TAPService(archive.tap_url)
        expected = {}
        for group in GROUPS.values():
            for name, ra, dec in group:
                found = service.search(
                    "SELECT obs_publisher_did FROM ivoa.ObsCore WHERE CONTAINS(POINT('ICRS', "
                    f"{ra}, {dec}), s_region) = 1 AND lsst_band = 'i' AND calib_level = 2"
                ).to_table()
                dids = {str(d) for d in found["obs_publisher_did"]}
                assert dids, f"{name} must have images"
                expected.update({(name, d): archive.truth(ra, dec) for d in dids})
        yield archive, expected


@contextlib.contextmanager
def barrier(parties: int, timeout: float = 240.0):
    """A TCP barrier for ``obsharvest.runtime.crashpoints.rendezvous``: holds every process that
    connects until ``parties`` have, then lets them all go. Yields (address, arrived,
    procs): put the processes in ``procs``, and if one of them ends without arriving (it
    failed), the others are let go at once instead of after ``timeout``."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(1.0)  # how often to look for a process that ended (failure only)
    arrived: list[str] = []
    procs: list[subprocess.Popen] = []

    def serve() -> None:
        waiting = []
        deadline = time.monotonic() + timeout
        while len(waiting) < parties and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break  # a run ended before the barrier: it will never come
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            arrived.append(conn.recv(100).decode().strip())
            waiting.append(conn)
        for conn in waiting:
            with contextlib.suppress(OSError):
                conn.sendall(b"g")
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield "{}:{}".format(*server.getsockname()[:2]), arrived, procs
    finally:
        thread.join(timeout + 5)
        server.close()


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("obsharvest")
    return [str(script)] if script.exists() else [sys.executable, "-m", "obsharvest.flows.cli"]


def _targets(path: Path, groups) -> Path:
    lines = ["name,ra,dec"] + [f"{n},{ra},{dec}" for g in groups for n, ra, dec in g]
    path.write_text("\n".join(lines) + "\n")
    return path


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A CLI process whose output goes to ``log``: a pipe nobody reads while the test waits
    for another process would stop it once full (64 KiB), before it reaches the barrier."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _run(archive, targets: Path, output: str, env: dict, *extra: str) -> subprocess.Popen:
    cmd = [
        *_cli(),
        "run",
        "--config",
        "config/local.yaml",
        "--set",
        "service.embedded=null",
        "--set",
        f"service.tap_url={archive.tap_url}",
        "--targets",
        str(targets),
        "--output",
        output,
        *extra,
    ]
    return _start(cmd, env, targets.with_suffix(f".{uuid.uuid4().hex[:6]}.log"))


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    proc.wait(timeout=400)
    return proc.returncode, proc.log.read_text(errors="replace")[-6000:]


def _env(prefect_harness_url: str, **extra) -> dict:
    return {**os.environ, "PREFECT_API_URL": prefect_harness_url, **extra}


def _fresh_fs(url: str, options: dict | None):
    """A file system instance of its own (no cached listings) and the path of ``url``."""
    import fsspec

    return fsspec.core.url_to_fs(url, **(options or {}), skip_instance_cache=True)


def _harvest_at_once_then_again_then_compact(
    archive, expected, output, work, env, listing, options=None
):
    """The scenario, on a local or an object-store output (``options``: how this process
    reaches it); ``listing()`` lists its Parquet files."""
    store = MetadataStore(Output(output, options))
    files = {g: _targets(work / f"targets-{g}.csv", [groups]) for g, groups in GROUPS.items()}
    with barrier(len(GROUPS)) as (address, arrived, watched):
        procs = {
            g: _run(
                archive,
                path,
                output,
                {**env, RENDEZVOUS_ENV: f"parquet@{address}"},
                "--set",
                "products.quicklook=true",
            )
            for g, path in files.items()
        }
        watched.extend(procs.values())
        results = {g: _finish(p) for g, p in procs.items()}
    for g, (code, text) in results.items():
        assert code == 0, f"run {g}:\n{text}"
    assert len(arrived) == 3, arrived  # all three held a written, unpublished file at once
    assert len(listing()) == 3  # one file per run (one partition: calexp, band i)

    view = store.read().to_pylist()
    pairs = [(r["obsh_target_name"], r["obs_publisher_did"]) for r in view]
    assert len(pairs) == len(set(pairs)) and set(pairs) == set(expected)
    by_run = {}
    for row in view:
        by_run.setdefault(row["obsh_run_id"], set()).add(row["obsh_target_name"][0])
    assert sorted(map(sorted, by_run.values())) == [["a"], ["b"], ["c"]]  # one run per group
    for row in view:
        contains = (
            row["obs_publisher_did"] in expected[row["obsh_target_name"], row["obs_publisher_did"]]
        )
        assert row["obsh_verdict"] == ("contains" if contains else "outside"), row
        assert row["obsh_stored"] == contains and row["obsh_failure"] is None
    # the gallery shows every run's quicklooks and maps, not only the last run's
    fs, root = _fresh_fs(output, options)
    index = fs.cat_file(f"{root.rstrip('/')}/gallery/index.html").decode()
    for row in view:
        if row["obsh_quicklook_uri"]:
            assert row["obsh_quicklook_uri"].rsplit("/", 1)[1] in index, row
    for name, _, _ in [t for group in GROUPS.values() for t in group]:
        assert f"{name}-footprint.png" in index

    # a fourth run over all the targets: nothing fetched, every row superseded
    archive.reset_stats()
    code, text = _finish(_run(archive, _targets(work / "all.csv", GROUPS.values()), output, env))
    assert code == 0, text
    stats = archive.stats()
    assert "files" not in stats and "datalink" not in stats, stats
    again = store.read().to_pylist()
    assert len(again) == len(view)
    assert {(r["obsh_target_name"], r["obs_publisher_did"]) for r in again} == set(pairs)
    (fourth,) = {r["obsh_run_id"] for r in again}
    assert fourth not in by_run
    assert len(listing()) == 4

    # compaction: the same current view in fewer files, the superseded rows gone
    code, text = _finish(_start([*_cli(), "compact", output], env, work / "compact.log"))
    assert code == 0 and "files -> 1" in text, text
    assert len(listing()) == 1

    def key(r):
        return (r["obsh_target_name"], r["obs_publisher_did"])

    assert sorted(store.read().to_pylist(), key=key) == sorted(again, key=key)


@pytest.mark.timeout(600)
def test_three_harvests_at_once_into_one_local_output(field, prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    archive, expected = field
    output = tmp_path / "out"

    def listing():
        return [p for p in (output / "metadata").rglob("*.parquet") if not p.name.startswith(".")]

    _harvest_at_once_then_again_then_compact(
        archive, expected, str(output), tmp_path, _env(PREFECT_API_URL.value()), listing
    )
    raw = ds.dataset(str(output / "metadata"), format="parquet").to_table()
    assert raw.num_rows == len(expected)  # after compaction: no superseded row left
    assert not [p for p in output.rglob("*") if p.name.endswith(".tmp") or ".part-" in p.name]
    stored = {p.name for p in (output / "fits").rglob("*.fits")}
    assert len(stored) == len({d for (_, d), truth in expected.items() if d in truth})


@pytest.mark.timeout(600)
def test_three_harvests_at_once_into_one_cloud_output(
    field, prefect_harness, cloud: Cloud, tmp_path
):
    """The same on S3, GCS and Azure; the CLI runs reach the store through the environment
    only (AWS_*, STORAGE_EMULATOR_HOST, AZURE_STORAGE_CONNECTION_STRING)."""
    from prefect.settings import PREFECT_API_URL

    archive, expected = field
    bucket = cloud.new_bucket()
    env = _env(PREFECT_API_URL.value(), **cloud.env)

    def listing():
        return [k for k in cloud.keys(bucket, "run/metadata") if k.endswith(".parquet")]

    _harvest_at_once_then_again_then_compact(
        archive, expected, cloud.url(bucket, "run"), tmp_path, env, listing, cloud.options
    )
    keys = cloud.keys(bucket, "run")
    assert not [k for k in keys if ".part-" in k or k.endswith(".tmp") or "-probe-" in k]
    fits = [k for k in keys if k.startswith("run/fits/") and k.endswith(".fits")]
    assert len(fits) == len({d for (_, d), truth in expected.items() if d in truth})
    if cloud.kind == "s3":
        client = s3_client(cloud.endpoint)
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        client.close()


# ---------------------------------------------------------------- ten rounds, every store

ROUNDS = 10


@pytest.fixture(scope="module")
def workers():
    """Three processes, each one run's output steps per round (tests/output_race.py)."""
    pool = Workers(3, {})
    yield pool
    pool.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("where", ["local", *CLOUDS])
def test_ten_rounds_of_three_runs_into_a_new_output(where, workers, request, tmp_path):
    """Ten times, three runs start together into an output that does not exist yet: every
    write probe passes and leaves nothing, the image they share and each one's own are
    stored whole, every run's Parquet rows are current, and the gallery index (rewritten by
    all three at once) lists every run's quicklooks and maps."""
    if where == "local":
        options: dict = {}

        def output_of(n: int) -> str:
            return str(tmp_path / f"round-{n}" / "out")
    else:
        make = {"s3": s3_cloud, "gcs": gcs_cloud, "azure": azure_cloud}[where]
        cloud = make(request.getfixturevalue(where))
        bucket, options = cloud.new_bucket(), cloud.options

        def output_of(n: int) -> str:
            return cloud.url(bucket, f"round-{n}/out")

    for n in range(ROUNDS):
        output = output_of(n)
        failures = workers.round(output, options)
        assert sorted(failures) == [0, 1, 2]
        assert not any(failures.values()), f"round {n}:\n" + "\n".join(
            f for f in failures.values() if f
        )
        fs, root = _fresh_fs(output, options)
        root = root.rstrip("/")
        names = [p[len(root) + 1 :] for p in fs.find(root)]
        assert not [p for p in names if "-probe-" in p or ".part-" in p or p.endswith(".tmp")]
        fits = sorted(p for p in names if p.endswith(".fits"))
        own = [f"fits/lsst.calexp/i/own-{w}.fits" for w in range(3)]
        assert fits == sorted([f"fits/{SHARED_KEY}", *own])
        assert fs.cat_file(f"{root}/fits/{SHARED_KEY}").startswith(b"SIMPLE  = T")
        view = MetadataStore(Output(output, options)).read()
        assert view is not None and view.num_rows == 6, n
        index = fs.cat_file(f"{root}/gallery/index.html").decode()
        for w in range(3):
            assert f"own-{w}.png" in index and f"target-{w}-footprint.png" in index, (n, index)
