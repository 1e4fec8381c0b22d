"""Running beyond one process: batches on a Dask cluster, and a global limit on the archive.

The Dask workers are separate processes: they reach the session's Prefect API through
``PREFECT_API_URL`` (without it each would start its own SQLite server: "database is
locked") and the embedded archive over 127.0.0.1, like any machine of a cluster would.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import Execution
from obsharvest.flows.runners import RunnerError, task_runner_for

from .test_harvest_flow import params_for

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[2]
VOLATILE = ("obsh_run_id", "obsh_harvested_at", "obsh_storage_uri")


def _rows(output: Path) -> list[dict]:
    rows = ds.dataset(str(output / "metadata"), format="parquet").to_table().to_pylist()
    for row in rows:
        uri = row.pop("obsh_storage_uri")
        row["storage_key"] = uri.split("/fits/", 1)[1] if uri else None
        for name in VOLATILE[:2]:
            row.pop(name)
    return sorted(rows, key=lambda r: (r["obsh_target_name"], r["obs_publisher_did"]))


def _objects(output: Path) -> dict[str, str]:
    root = output / "fits"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_runner_factory():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    threads = task_runner_for(Execution(), task_workers=5)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 5
    remote = task_runner_for(Execution(runner="dask", dask_address="tcp://10.0.0.1:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.1:8786"
    local = task_runner_for(
        Execution(
            runner="dask",
            dask_cluster_class="distributed.LocalCluster",
            dask_cluster_kwargs={"n_workers": 3},
            dask_adapt_kwargs={"maximum": 6},
        )
    )
    assert local.cluster_kwargs == {"n_workers": 3} and local.adapt_kwargs == {"maximum": 6}
    with pytest.raises(RunnerError, match="no_such_module"):
        task_runner_for(Execution(runner="dask", dask_cluster_class="no_such_module.Cluster"))
    with pytest.raises(ValueError, match="runner: dask"):
        Execution(dask_address="tcp://10.0.0.1:8786")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two worker processes, each its own OS process (``dask scheduler``,
    ``dask worker --nworkers 2``), so nothing of Dask runs inside the test process."""
    import time
    from types import SimpleNamespace

    from distributed import Client
    from prefect.settings import PREFECT_API_URL

    from tests.prefect_server import BIN, background, free_port

    api = PREFECT_API_URL.value()
    assert api, "the Prefect test harness must be running"
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_HOME": os.environ["PREFECT_HOME"],
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(REPO),
    }
    logs = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    scheduler = [
        str(BIN / "dask"),
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--no-dashboard",
    ]
    workers = [
        str(BIN / "dask"),
        "worker",
        address,
        "--nworkers",
        "2",
        "--nthreads",
        "2",
        "--host",
        "127.0.0.1",
        "--no-dashboard",
        "--local-directory",
        str(logs),
    ]
    with (
        background(scheduler, env, logs / "scheduler.log"),
        background(workers, env, logs / "workers.log"),
    ):
        deadline = time.monotonic() + 90
        while True:
            try:
                with Client(address, timeout=5) as client:
                    if len(client.scheduler_info()["workers"]) == 2:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (logs / "workers.log").read_text()[-2000:]
            time.sleep(1)
        yield SimpleNamespace(scheduler_address=address)


def test_dask_harvest_equals_the_threaded_one(archive, cluster, tmp_path):
    from distributed import Client, get_task_stream

    threads = harvest_params(
        params_for(archive, tmp_path / "threads", concurrency={"images_per_task": 8})
    )
    with Client(cluster.scheduler_address) as client, get_task_stream(client) as stream:
        dask = harvest_params(
            params_for(
                archive,
                tmp_path / "dask",
                concurrency={"images_per_task": 8},
                execution={"runner": "dask", "dask_address": cluster.scheduler_address},
            )
        )
        workers = set(client.scheduler_info()["workers"])
    assert threads.ok and dask.ok and dask.stored_images == threads.stored_images > 0
    ran = [t for t in stream.data if t.get("worker") in workers]
    # the submitted tasks: one query batch and the image batches (write-metadata is
    # called, not submitted: it runs in the flow's process)
    batches = -(-dask.images // 8)
    batches += (
        batches % 2
    )  # a multiple of the two task workers (obsharvest.runtime.workers.batches)
    assert len(ran) == 1 + batches, stream.data
    assert len({t["worker"] for t in ran}) == 2  # both worker processes took batches
    assert _rows(tmp_path / "dask") == _rows(tmp_path / "threads")
    objects = _objects(tmp_path / "dask")
    assert objects == _objects(tmp_path / "threads")
    assert len([k for k in objects if k.endswith(".fits")]) == threads.stored_images


# -- a global concurrency limit across tasks, runs and workers ---------------------------


class _SlotLog(logging.Handler):
    """(task run, event, time) of the slot messages the image and query tasks log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[tuple[str, str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for event in ("holding a slot", "releasing the slot"):
            if message.startswith(event):
                self.events.append((getattr(record, "task_run_id", "?"), event, record.created))


def _held(events: list[tuple[str, str, float]]) -> list[tuple[float, float]]:
    start = {tr: t for tr, e, t in events if e == "holding a slot"}
    end = {tr: t for tr, e, t in events if e == "releasing the slot"}
    assert start.keys() == end.keys()
    return sorted((start[k], end[k]) for k in start)


def _overlaps(intervals: list[tuple[float, float]]) -> int:
    return sum(1 for a, b in zip(intervals, intervals[1:], strict=False) if b[0] < a[1])


def _create_limit(name: str, limit: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async def create():
        async with get_client() as client:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )

    asyncio.run(create())


def test_a_global_limit_of_one_serialises_batches(tmp_path):
    from prefect.logging.configuration import ensure_logging_setup

    from obsharvest.simarchive.faults import FaultPlan
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    ensure_logging_setup()
    one, many = f"archive-{uuid.uuid4().hex[:8]}", f"archive-{uuid.uuid4().hex[:8]}"
    _create_limit(one, 1)
    _create_limit(many, 10)
    handler = _SlotLog()
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    try:
        with EmbeddedArchive(ArchiveSettings(n_visits=24)) as slow:
            # every file request takes 50 ms: a batch holds its slot for a while
            slow.set_faults(FaultPlan.parse(["files.latency=0.05"], seed=1))
            runs = {}
            # limit 1: three image batches; the control (a limit of 10): two batches, which
            # the two task workers run at once
            for name, per_task in ((one, 2), (many, 3)):
                handler.events.clear()
                summary = harvest_params(
                    params_for(
                        slow,
                        tmp_path / name,
                        concurrency={"task_workers": 2, "images_per_task": per_task},
                        execution={"archive_concurrency_limit": name},
                    )
                )
                assert summary.ok and summary.images >= 6
                runs[name] = _held(list(handler.events))
    finally:
        logger.removeHandler(handler)
    assert len(runs[one]) == 1 + 3  # the query batch and every image batch took a slot
    print(
        {k: [(round(a - v[0][0], 2), round(b - v[0][0], 2)) for a, b in v] for k, v in runs.items()}
    )
    assert _overlaps(runs[one]) == 0, runs[one]
    assert _overlaps(runs[many]) > 0, runs[many]  # the control: the overlap is visible
