"""obsharvest's side: one ``harvest(HarvestParams(...))`` with default settings, timed, plus
what the Prefect API recorded about it (task runs and their start/end times).

Nothing in obsharvest is changed or wrapped: the stage split comes from the task runs'
own start and end times, read back through the Prefect client after the flow returns.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.dataset as ds

from .workload import BAND, CALIB_LEVEL

# task run names (flows/harvest.py) -> stage of the split
STAGES = (("query-", "query"), ("images-", "images"), ("write-metadata", "metadata"))


@dataclass
class HarvestRun:
    seconds: float
    run_id: str
    images: int  # unique images decided
    rows: int  # (target, image) rows in the Parquet
    stored: list[str]  # obs_publisher_did of the files stored
    failures: int
    task_runs: int = 0
    task_names: list[str] = field(default_factory=list)
    wall_start: float = 0.0  # time.time() when the flow was called
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, + "other"
    cpu: float = 0.0  # CPU seconds of this process (the client) during the run
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)  # (time.time(), CPU s)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> first, last
    heartbeat_join: float = 0.0  # s of the run's end spent joining Prefect's heartbeat thread

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds used between two ``time.time()`` instants (from the samples)."""
        return _cpu_at(self.cpu_samples, end) - _cpu_at(self.cpu_samples, start)

    def stage_cpu(self, stage: str) -> tuple[float, float]:
        """(CPU seconds, wall seconds) of a stage, from its first task's start to its last
        task's end; (nan, 0) when it has no span."""
        if stage not in self.spans or len(self.cpu_samples) < 2:
            return float("nan"), 0.0
        start, end = self.spans[stage]
        return self.cpu_between(start, end), end - start


def _cpu() -> float:
    """CPU seconds of the client: this process, its image worker processes (alive, read
    from /proc) and those that ended (reaped children)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime + _workers_cpu()


def _workers_cpu() -> float:
    from obsharvest.images import processes

    total = 0.0
    for pid in processes.worker_pids():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # ended a moment ago: counted with the reaped children
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _cpu_at(samples: list[tuple[float, float]], at: float) -> float:
    """CPU seconds at ``at``, interpolated linearly between the samples around it."""
    times = [t for t, _ in samples]
    k = bisect.bisect_left(times, at)
    if k <= 0:
        return samples[0][1]
    if k >= len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[k - 1], samples[k]
    return c0 + (c1 - c0) * (at - t0) / max(t1 - t0, 1e-9)


class _HeartbeatJoins:
    """Seconds spent at flow runs' ends joining Prefect's heartbeat thread.

    Prefect 3.9's sync flow engine ends every flow run by joining its heartbeat thread
    (``flows.heartbeat_frequency``, on by default), which sleeps in whole seconds: up to
    1 s after the flow's own work has ended, 0.5 s on average, so a run's wall time
    rounds up to that thread's next second (``prefect.flow_engine._send_heartbeats``).
    Measured by wrapping that context manager, to say how much of a run's end it is;
    nothing is changed and the wall times stay what a user waits. Runs started in this
    process send their own heartbeats (``flows/heartbeats.py``), so this stays 0 for them:
    it shows that no run here waits for Prefect's thread."""

    def __init__(self) -> None:
        self.total = 0.0
        self._lock = threading.Lock()
        try:
            import prefect.flow_engine as engine
        except ImportError:  # pragma: no cover - prefect is a dependency
            return
        real = getattr(engine, "_send_heartbeats", None)
        if real is None or getattr(real, "_joins_measured", False):
            return
        recorder = self

        @contextlib.contextmanager
        def measured(*args, **kwargs):
            with real(*args, **kwargs) as value:
                yield value
                ending = time.perf_counter()
            with recorder._lock:
                recorder.total += time.perf_counter() - ending

        measured._joins_measured = True  # type: ignore[attr-defined]
        engine._send_heartbeats = measured


HEARTBEAT_JOINS = _HeartbeatJoins()


class _CpuSampler:
    """Samples this process's CPU seconds every ``every`` s in a thread, so a stage's CPU
    can be read off its task runs' start and end times afterwards."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), _cpu()))
            self._stop.wait(self.every)

    def __enter__(self) -> _CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), _cpu()))


def harvest_params(tap_url: str, targets_csv: Path, output: Path, **concurrency):
    from obsharvest.flows.params import HarvestParams

    return HarvestParams.model_validate(
        {
            "service": {"tap_url": tap_url},
            "targets": str(targets_csv),
            "constraints": {"bands": [BAND], "calib_levels": [CALIB_LEVEL]},
            "output_url": str(output),
            "concurrency": concurrency,
        }
    )


def read_rows(output: Path) -> list[dict]:
    """The harvest's decisions per (target, image), keyed by their short names: obsharvest
    writes them as ``obsh_<name>`` (before that, unprefixed, in place of ObsCore's
    ``target_name``), like ``_runner`` this reads either."""
    dataset = ds.dataset(str(output / "metadata"), format="parquet")
    short = ("target_name", "verdict", "stored")
    columns = {f"obsh_{n}" if f"obsh_{n}" in dataset.schema.names else n: n for n in short}
    table = dataset.to_table(columns=[*columns, "obs_publisher_did"])
    return table.rename_columns([*short, "obs_publisher_did"]).to_pylist()


def _runner():
    """obsharvest's entry point for a built ``HarvestParams`` (``harvest_params`` since the
    flow took flat parameters; ``harvest(params)`` before)."""
    import obsharvest.flows.harvest as module

    return getattr(module, "harvest_params", None) or module.harvest


def run_harvest(tap_url: str, targets_csv: Path, output: Path, **concurrency) -> HarvestRun:
    """One harvest with default settings (``concurrency`` overrides a few, e.g.
    ``image_processes=False``)."""
    params = harvest_params(tap_url, targets_csv, output, **concurrency)
    runner = _runner()
    with _CpuSampler() as sampler:
        wall_start, cpu0, joins0 = time.time(), _cpu(), HEARTBEAT_JOINS.total
        started = time.perf_counter()
        summary = runner(params)
        seconds = time.perf_counter() - started
        cpu = _cpu() - cpu0
    rows = read_rows(output)
    stored = sorted({r["obs_publisher_did"] for r in rows if r["stored"]})
    return HarvestRun(
        seconds=seconds,
        run_id=summary.run_id,
        images=summary.images,
        rows=len(rows),
        stored=stored,
        failures=len(summary.failures),
        wall_start=wall_start,
        cpu=cpu,
        cpu_samples=sampler.samples,
        heartbeat_join=HEARTBEAT_JOINS.total - joins0,
    )


async def _task_runs(flow_run_id: str, settle: float = 10.0) -> list:
    """The flow run's task runs, once the API has them all with end times.

    Task run states reach the API as events, a moment after the flow returns: poll until
    the count is stable and every run has ended.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + settle
    last: list = []
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            done = all(r.end_time is not None for r in runs)
            if (done and len(runs) == len(last)) or time.monotonic() > deadline:
                return runs
            last = runs
            await asyncio.sleep(0.3)


def add_prefect_facts(run: HarvestRun) -> HarvestRun:
    """Count the run's task runs and split its wall time by stage (from their timestamps)."""
    runs = asyncio.run(_task_runs(run.run_id))
    run.task_runs = len(runs)
    run.task_names = sorted(tr.name for tr in runs)
    spans: dict[str, list] = {}
    for tr in runs:
        stage = next((s for prefix, s in STAGES if tr.name.startswith(prefix)), None)
        if stage is None or tr.start_time is None or tr.end_time is None:
            continue
        spans.setdefault(stage, []).append((tr.start_time, tr.end_time))
    stages = {}
    for _, stage in STAGES:
        if stage in spans:
            first = min(s for s, _ in spans[stage])
            last = max(e for _, e in spans[stage])
            stages[stage] = (last - first).total_seconds()
            run.spans[stage] = (first.timestamp(), last.timestamp())
        else:
            stages[stage] = 0.0
    ended = [tr.end_time.timestamp() for tr in runs if tr.end_time is not None]
    started = [tr.start_time.timestamp() for tr in runs if tr.start_time is not None]
    if run.wall_start and started and ended:
        # flow run set-up until its first task starts; after its last task until it returns
        stages["flow start"] = max(0.0, min(started) - run.wall_start)
        stages["flow end"] = max(0.0, run.wall_start + run.seconds - max(ended))
    stages["other"] = max(0.0, run.seconds - sum(stages.values()))
    run.stages = stages
    return run


def image_tasks(run: HarvestRun) -> int:
    return sum(1 for name in run.task_names if name.startswith("images-"))
