"""Reliability: faults beyond the retry budget, expired URLs, and crashes at five points.

The harvest runs as a user runs it (``obsharvest run`` in a subprocess) against the
embedded archive in this process, so the archive's counters show what a rerun fetched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from obsharvest.flows.harvest import harvest_params
from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.conftest import TARGET_DEC, TARGET_RA

from .test_harvest_flow import params_for, read_rows

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_harness")


def pairs(output: Path) -> list[tuple[str, str]]:
    """The (target, image) pairs of the Parquet's current view (a rerun's rows supersede)."""
    rows = read_rows(output)
    return [(r["obsh_target_name"], r["obs_publisher_did"]) for r in rows]


def test_faults_beyond_the_budget_fail_clearly_and_a_rerun_completes(tmp_path):
    with EmbeddedArchive(ArchiveSettings(n_visits=30)) as archive:
        archive.set_faults(
            FaultPlan.parse(["files.unavailable=0.5", "files.retry_after=0"], seed=5)
        )
        params = params_for(
            archive, tmp_path, retry={"attempts": 2, "initial_wait": 0.01, "max_wait": 0.02}
        )
        failed = harvest_params(params)
        assert not failed.ok
        for image, reason in failed.failures:  # what is missing, and why
            assert image.startswith("ivo://") and "503" in reason and "\n" not in reason
        stored_before = {r["obs_publisher_did"] for r in read_rows(tmp_path) if r["obsh_stored"]}
        missing = {i for i, _ in failed.failures}
        assert stored_before and missing
        assert {r["obs_publisher_did"] for r in read_rows(tmp_path) if r["obsh_failure"]} == missing

        archive.set_faults(FaultPlan())
        archive.reset_stats()
        rerun = harvest_params(params)
        assert rerun.ok
        gets = archive.stats()["files"]["status"].get(200, 0)
        truth = archive.truth(TARGET_RA, TARGET_DEC)
        assert rerun.downloaded == len(missing & truth)  # only what was missing
        assert gets <= 2 * len(missing)  # HEAD + GET per missing image, nothing for the rest
        assert len(pairs(tmp_path)) == len(set(pairs(tmp_path)))


def test_expired_signed_urls_are_resolved_again(tmp_path):
    with EmbeddedArchive(ArchiveSettings(n_visits=30)) as archive:
        archive.set_faults(FaultPlan.parse(["files.expired=0.3"], seed=2))
        summary = harvest_params(params_for(archive, tmp_path))
        assert summary.ok, summary.failures
        assert archive.faults.report()["files"]["expired"] > 0
        images = summary.images
        assert archive.stats()["datalink"]["requests"] > 1  # re-resolved after 403s
        truth = archive.truth(TARGET_RA, TARGET_DEC)
        assert {r["obs_publisher_did"] for r in read_rows(tmp_path) if r["obsh_stored"]} == {
            r["obs_publisher_did"] for r in read_rows(tmp_path)
        } & truth
        assert images > 0


def _run_cli(archive, output: Path, env_extra: dict) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **env_extra}
    cmd = [
        sys.executable,
        "-m",
        "obsharvest.flows.cli",
        "run",
        "--config",
        "config/local.yaml",
        "--targets",
        "config/demo-targets.csv",
        "--output",
        str(output),
        "--set",
        f"service.tap_url={archive.tap_url}",
        "--set",
        "service.embedded=null",
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def crash_archive():
    with EmbeddedArchive(ArchiveSettings(n_visits=60)) as archive:
        yield archive


@pytest.mark.parametrize("point", ["query", "datalink", "download:40", "parquet", "report"])
def test_killed_at_any_point_a_rerun_completes_without_refetching(point, crash_archive, tmp_path):
    archive = crash_archive
    archive.reset_stats()
    crashed = _run_cli(archive, tmp_path, {"OBSHARVEST_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    # what the crashed run left in storage, complete and verified (partials are never visible)
    kept = sum(p.stat().st_size for p in tmp_path.rglob("*.fits"))
    # a download killed mid-file leaves a hidden temporary, never the final key. The
    # crashed run's are made two hours old (a killed nightly run's, found the next night);
    # one made now stands for a run writing into the same store at this moment
    left = _partials(tmp_path)
    assert bool(left) == point.startswith("download"), left
    for path in left:
        os.utime(path, (path.stat().st_atime - 7200, path.stat().st_mtime - 7200))
    concurrent = tmp_path / "fits" / f".concurrent.fits.part-{'0' * 32}"
    concurrent.parent.mkdir(parents=True, exist_ok=True)
    concurrent.write_bytes(b"SIMPLE  =                    T")
    archive.reset_stats()
    rerun = _run_cli(archive, tmp_path, {})
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    found = pairs(tmp_path)
    assert found and len(found) == len(set(found))  # no duplicate (target, image) rows
    stored = [r for r in read_rows(tmp_path) if r["obsh_stored"]]
    total = sum({r["obs_publisher_did"]: r["obsh_file_size"] for r in stored}.values())
    refetched = archive.stats().get("files", {}).get("bytes", 0)
    # bytes fetched again for images already stored (headers included): under 5% of the total
    assert refetched - (total - kept) < 0.05 * total, (point, refetched, total, kept)
    if point in ("parquet", "report"):  # every file was stored before the crash
        assert kept == total
    # every visible object is complete: its bytes match the checksum recorded when stored
    import hashlib

    from obsharvest.storage.store import parse_sidecar

    for row in stored:
        path = Path(row["obsh_storage_uri"].removeprefix("file://"))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["obsh_sha256"]
        sidecar = parse_sidecar(Path(str(path) + ".sha256").read_bytes())
        assert sidecar is not None and sidecar["sha256"] == row["obsh_sha256"]
    assert not [p for p in tmp_path.rglob("*.tmp")]  # Parquet temporaries never survive a rerun
    # the rerun removed the killed run's temporaries, and kept the one being written now
    assert _partials(tmp_path) == [concurrent]


def _partials(output: Path) -> list[Path]:
    """The hidden temporaries in the FITS store under ``output``."""
    return sorted(p for p in (output / "fits").rglob(".*") if ".part-" in p.name)
