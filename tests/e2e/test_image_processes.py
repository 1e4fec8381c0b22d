"""Image batches in worker processes (``images/processes.py``): the same rows as in the
run's own threads, a worker that dies leaves a failure per image and never a missing row,
and a stop reaches the workers (issue 25, item 2).

The workers are real processes (fresh interpreters) against the session's embedded
archive; the batch-size threshold is lowered so the small workloads here use them.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.images import processes
from obsharvest.metadata import MetadataStore
from obsharvest.runtime import stopping
from obsharvest.simarchive.faults import FaultPlan
from obsharvest.tasks import progress
from tests.conftest import TARGET_DEC, TARGET_RA

pytestmark = pytest.mark.usefixtures("prefect_harness")

TARGETS = [("a", TARGET_RA, TARGET_DEC), ("b", TARGET_RA + 0.05, TARGET_DEC - 0.04)]


@pytest.fixture(autouse=True)
def small_batches_use_workers(monkeypatch):
    monkeypatch.setattr(processes, "MIN_IMAGES", 1)
    processes._POOL.close()  # idle workers of an earlier test would not be counted
    started: list[processes._Worker] = []
    real = processes._Worker.__init__

    def remember(self) -> None:
        real(self)
        started.append(self)

    monkeypatch.setattr(processes._Worker, "__init__", remember)
    yield started
    stopping.reset()
    processes._POOL.close()


def params_for(archive, tmp_path, name: str, **concurrency) -> HarvestParams:
    targets = tmp_path / f"{name}.csv"
    targets.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in TARGETS))
    return HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(targets),
            "constraints": {"bands": ["i"], "calib_levels": [2]},
            "output_url": str(tmp_path / name),
            "concurrency": {"images_per_task": 20, **concurrency},
        }
    )


def rows_of(output) -> dict[tuple[str, str], tuple]:
    table = MetadataStore(str(output)).read()
    assert table is not None
    return {
        (r["obsh_target_name"], r["obs_publisher_did"]): (
            r["obsh_verdict"],
            r["obsh_stored"],
            r["obsh_sha256"],
            r["obsh_failure"],
        )
        for r in table.to_pylist()
    }


def test_rows_equal_those_of_the_run_s_own_threads(archive, tmp_path, small_batches_use_workers):
    in_threads = harvest_params(params_for(archive, tmp_path, "threads", image_processes=False))
    assert small_batches_use_workers == []
    in_workers = harvest_params(params_for(archive, tmp_path, "workers", image_processes=True))
    assert small_batches_use_workers, "no worker process was started"
    assert all(w.proc.pid != os.getpid() for w in small_batches_use_workers)
    assert in_threads.ok and in_workers.ok
    threads, workers = rows_of(tmp_path / "threads"), rows_of(tmp_path / "workers")
    assert threads == workers
    truth = archive.truth(TARGET_RA, TARGET_DEC)
    of_a = {did for name, did in workers if name == "a"}
    assert {did for (name, did), row in workers.items() if name == "a" and row[1]} == of_a & truth
    assert in_workers.stored_images == in_threads.stored_images > 0


def test_a_worker_that_dies_leaves_a_failure_per_image(
    archive, tmp_path, small_batches_use_workers
):
    """SIGKILL the first worker as soon as it reports an image: its batch's images that it
    had not reported are failures naming the exit, every other row is as usual."""
    killed: list[int] = []

    def kill_first(event: str, stage: str, count: int, nbytes: int) -> None:
        if stage == "images" and event == "advance" and not killed and small_batches_use_workers:
            worker = small_batches_use_workers[0]
            killed.append(worker.proc.pid)
            os.kill(worker.proc.pid, signal.SIGKILL)

    # slow files: the worker is still at its batch when its first report arrives
    archive.set_faults(FaultPlan.parse(["files.latency=0.2"], seed=1))
    stop_listening = progress.listen(kill_first)
    try:
        summary = harvest_params(
            params_for(archive, tmp_path, "killed", image_processes=True, task_workers=1)
        )
    finally:
        stop_listening()
        archive.set_faults(FaultPlan())
    assert killed
    rows = rows_of(tmp_path / "killed")
    failures = [row[3] for row in rows.values() if row[3]]
    assert failures and all("image worker process ended (exit code -9)" in f for f in failures)
    assert len({did for _, did in rows}) == summary.images > len(set(failures))  # none missing
    assert {image for image, _ in summary.failures} == {
        did for (_, did), row in rows.items() if row[3]
    }
    assert not summary.ok


def test_a_stop_reaches_the_workers(archive, tmp_path, small_batches_use_workers):
    """A stop asked while workers run: every row is written (unfinished images as
    interrupted), and the workers that saw it are gone, not kept for another batch."""
    archive.set_faults(FaultPlan.parse(["files.latency=0.3"], seed=1))
    asked = threading.Event()

    def stop_after_first(event: str, stage: str, count: int, nbytes: int) -> None:
        if stage == "images" and event == "advance" and not asked.is_set():
            asked.set()
            stopping.request("interrupted by SIGTERM", signum=signal.SIGTERM)

    stop_listening = progress.listen(stop_after_first)
    try:
        summary = harvest_params(params_for(archive, tmp_path, "stopped", image_processes=True))
    finally:
        stop_listening()
        archive.set_faults(FaultPlan())
    assert asked.is_set()
    rows = rows_of(tmp_path / "stopped")
    assert summary.interrupted
    assert any((row[3] or "").startswith("interrupted by SIGTERM") for row in rows.values())
    for worker in small_batches_use_workers:
        assert worker.proc.wait(15) == 0  # it ended with its batch
    assert not processes._POOL._idle
