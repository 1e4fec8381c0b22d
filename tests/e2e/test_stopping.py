"""Nothing hangs, everything stops: SIGTERM and SIGINT end a real ``obsharvest run``
within 10 s with the Parquet written, whatever the network does; nothing it started
outlives it; a rerun completes the rest; a run deadline stops it the same way.

The archive runs in the test's process with every file request stalled (accepted, never
answered), so the run is stuck in header reads when the signal comes: the worst case.
Signals are sent once the archive has seen those requests (a condition, not a sleep).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.conftest import TARGET_DEC, TARGET_RA

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("obsharvest")
STALLED = FaultPlan.parse(["files.stall=1"], seed=3)


@pytest.fixture(scope="module")
def stalled_archive():
    with EmbeddedArchive(ArchiveSettings(seed=5, n_visits=24, binning=10)) as archive:
        yield archive


def _command(archive, output: Path, *extra: str) -> list[str]:
    return [
        str(CLI),
        "run",
        "--config",
        "config/local.yaml",
        "--set",
        "service.embedded=null",
        "--set",
        f"service.tap_url={archive.tap_url}",
        "--ra",
        str(TARGET_RA),
        "--dec",
        str(TARGET_DEC),
        "--output",
        str(output),
        *extra,
    ]


def _start(archive, output: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return subprocess.Popen(
        _command(archive, output, *extra),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _shared_api_env() -> dict[str, str]:
    """The environment of a run that reports to the session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _file_requests(archive) -> int:
    return archive.stats().get("files", {}).get("methods", {}).get("GET", 0)


def _descendants(pid: int) -> set[int]:
    """Every process whose parent chain leads to ``pid`` (read from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _rows(output: Path) -> list[dict]:
    """The Parquet's current view (a rerun's rows supersede the stopped run's)."""
    from obsharvest.metadata import MetadataStore

    table = MetadataStore(str(output)).read()
    return table.to_pylist() if table is not None else []


def _failure(row: dict) -> str | None:
    """The row's failure reason, whatever the harvest column is called."""
    for key in ("failure", "obsh_failure"):
        if key in row:
            return row[key]
    raise KeyError("no failure column")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.timeout(180)
def test_a_signal_stops_a_stalled_run_within_10s_and_a_rerun_completes(
    stalled_archive, prefect_harness, tmp_path, sig, code
):
    archive = stalled_archive
    archive.set_faults(STALLED)
    archive.reset_stats()
    run = _start(archive, tmp_path)
    try:
        _wait_for(lambda: _file_requests(archive) >= 1, 120, "the run to reach the files")
        children = _descendants(run.pid)
        assert children, "the run should have started its temporary Prefect API"
        sent = time.monotonic()
        run.send_signal(sig)
        out, err = run.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == code, err[-2000:]
    assert took < 10, f"took {took:.1f} s to stop"
    assert "interrupted by" in err and "Traceback" not in err, err[-2000:]
    assert "rerun to complete the rest" in err
    assert "Parquet:" in out  # the summary was printed
    rows = _rows(tmp_path)
    assert rows and all((_failure(r) or "").startswith("interrupted by") for r in rows)
    _wait_for(lambda: not any(_alive(p) for p in children), 10, "the run's children to end")

    archive.set_faults(FaultPlan())
    rerun = subprocess.run(  # on the session's Prefect API: the stop is what is tested here
        _command(archive, tmp_path),
        cwd=ROOT,
        env=_shared_api_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = _rows(tmp_path)
    assert all(_failure(r) is None for r in rows)
    truth = archive.truth(TARGET_RA, TARGET_DEC)
    stored = {r["obs_publisher_did"] for r in rows if r.get("stored", r.get("obsh_stored"))}
    assert stored and stored == truth & {r["obs_publisher_did"] for r in rows}


@pytest.mark.timeout(120)
def test_sigterm_during_start_up_leaves_nothing_behind(stalled_archive, tmp_path):
    run = _start(stalled_archive, tmp_path)
    try:
        # as soon as the temporary Prefect API exists, before any flow ran
        _wait_for(lambda: bool(_descendants(run.pid)), 60, "the temporary Prefect API")
        children = _descendants(run.pid)
        sent = time.monotonic()
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 143, err[-2000:]
    assert took < 10
    assert "Traceback" not in err
    _wait_for(lambda: not any(_alive(p) for p in children), 10, "the run's children to end")


@pytest.mark.timeout(180)
def test_a_run_deadline_stops_a_stalled_run(stalled_archive, prefect_harness, tmp_path):
    archive = stalled_archive
    archive.set_faults(STALLED)
    try:
        started = time.monotonic()
        done = subprocess.run(
            _command(archive, tmp_path, "--set", "execution.run_deadline_seconds=6"),
            cwd=ROOT,
            env=_shared_api_env(),
            capture_output=True,
            text=True,
            timeout=150,
        )
        took = time.monotonic() - started
    finally:
        archive.set_faults(FaultPlan())
    assert done.returncode == 1, done.stderr[-2000:]
    assert "run deadline of 6 s passed" in done.stderr
    assert took < 6 + 60, f"{took:.0f} s"  # start-up (imports, flow) plus the grace
    rows = _rows(tmp_path)
    assert rows and all("run deadline" in (_failure(r) or "") for r in rows)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.timeout(120)
def test_the_archive_command_stops_and_removes_its_data_directory(tmp_path, sig):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where its temporary directory goes
    for when in ("starting", "serving"):
        archive = subprocess.Popen(
            [str(CLI), "archive", "--port", "0", "--visits", "12"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if when == "serving":
                assert archive.stdout.readline().startswith("TAP service:")
            else:
                _wait_for(lambda: any(tmp_path.iterdir()), 60, "its data directory")
            archive.send_signal(sig)
            archive.communicate(timeout=20)
        finally:
            if archive.poll() is None:
                archive.kill()
        assert archive.returncode == 0, when
        assert not list(tmp_path.iterdir()), f"left behind when stopped while {when}"
