"""Several ObsTAP services in one run against one run per service (issue 24, item 6).

``python -m benchmarks.many`` starts K embedded archives (``--services``, 4), each its own
process over a warmed FITS cache (as ``make bench`` does: a real archive is another
machine) and each with its own seed, so each serves its own images under its own DIDs,
all with the same latency per request (``--latency``, 50 ms) and no bandwidth cap. On the
same targets, in fresh outputs, with the Prefect API started before any timing, it times
per round (``--runs``):

1. each service harvested alone (one run per service): the slowest is the reference;
2. one run over all the services (``services: [...]``, as ``obsharvest run --tap URL
   --tap URL ...``);
3. the baseline, the way ``pyvo.discover.images_globally`` asks services: one after
   another. It is the sum of the runs of 1., which are exactly that, made in this round.

It prints the times, ``multi / slowest single`` and ``multi / sequential``, a PASS/FAIL
line for the goal (the run over all services within 1.3x the slowest single-service run),
and whether the run over all services stored exactly the union of what the single runs
stored (read back from each output's Parquet) and exactly the WCS truth.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .bench import JOIN_SAID, prefect_api
from .harvest_run import HEARTBEAT_JOINS, HarvestRun, _runner, add_prefect_facts
from .workload import (
    BAND,
    CALIB_LEVEL,
    CENTRE,
    fault_items,
    set_network,
    spread_targets,
    start_archive,
    warm,
    warmed_server,
    write_targets_csv,
)

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.3  # issue 24: the run over every service within 1.3x the slowest single one
FIRST_SEED = 42  # make bench's archive; the others take the next seeds


@dataclass
class Options:
    services: int = 4
    targets: int = 5
    radius: float = 1.0
    latency: float = 0.05
    bandwidth: float = 0.0
    visits: int = 24
    binning: int = 10
    runs: int = 1
    cache_dir: Path = ROOT / ".cache" / "bench"
    start_prefect: bool = True  # False: the caller has a Prefect API configured (tests)


def parse_args(argv: Sequence[str] | None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.many", description=__doc__.split("\n")[0]
    )
    p.add_argument("--services", type=int, default=d.services, help="archives (%(default)s)")
    p.add_argument("--targets", type=int, default=d.targets, help="targets (%(default)s)")
    p.add_argument("--radius", type=float, default=d.radius, help="deg around (62, -37)")
    p.add_argument("--latency", type=float, default=d.latency, help="s per request, each archive")
    p.add_argument(
        "--bandwidth", type=float, default=d.bandwidth, help="B/s per archive; 0: no cap"
    )
    p.add_argument("--visits", type=int, default=d.visits, help="visits in each archive")
    p.add_argument("--binning", type=int, default=d.binning, help="image binning (10: ~2 MB)")
    p.add_argument("--runs", type=int, default=d.runs, help="rounds (%(default)s)")
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir, help="generated FITS kept here")
    a = p.parse_args(argv)
    if a.services < 2 or a.targets < 1 or a.runs < 1:
        p.error("--services must be at least 2, --targets and --runs at least 1")
    return Options(
        services=a.services,
        targets=a.targets,
        radius=a.radius,
        latency=a.latency,
        bandwidth=a.bandwidth,
        visits=a.visits,
        binning=a.binning,
        runs=a.runs,
        cache_dir=a.cache_dir,
    )


def say(message: str) -> None:
    print(f"[many] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One timed harvest: its wall time, what it stored per service (``obsh_service``),
    and the Prefect facts (stage split) of ``harvest_run``."""

    seconds: float
    cpu: float  # CPU seconds of this process (the client) during the run
    archive_cpu: float  # CPU seconds of every archive process during the run
    stored: dict[str, set[str]]  # service name -> obs_publisher_did of rows stored
    failures: int
    facts: HarvestRun
    service_seconds: dict[str, float] = field(default_factory=dict)  # summary, per service

    @property
    def all_stored(self) -> set[str]:
        return set().union(*self.stored.values())


@dataclass
class Round:
    single: dict[str, Run]
    multi: Run

    @property
    def slowest(self) -> float:
        return max(r.seconds for r in self.single.values())

    @property
    def sequential(self) -> float:
        return sum(r.seconds for r in self.single.values())


def params_for(services: dict[str, str], targets_csv: Path, output: Path):
    """The run's parameters: the services by name, the seed's i-band calexp query."""
    from obsharvest.flows.params import HarvestParams

    return HarvestParams.model_validate(
        {
            "services": [{"name": n, "tap_url": u} for n, u in services.items()],
            "targets": str(targets_csv),
            "constraints": {"bands": [BAND], "calib_levels": [CALIB_LEVEL]},
            "output_url": str(output),
        }
    )


def stored_by_service(output: Path) -> dict[str, set[str]]:
    from obsharvest.metadata import MetadataStore

    table = MetadataStore(str(output)).read(
        columns=["obs_publisher_did", "obsh_stored", "obsh_service"]
    )
    out: dict[str, set[str]] = {}
    for row in [] if table is None else table.to_pylist():
        if row["obsh_stored"]:
            out.setdefault(row["obsh_service"], set()).add(row["obs_publisher_did"])
    return out


def _cpu() -> float:
    """The client's CPU seconds, its image worker processes included."""
    from .harvest_run import _cpu as client_cpu

    return client_cpu()


def _archive_cpu(archives: Sequence) -> float:
    """CPU seconds the archive processes have used (``/proc/<pid>/stat``): what the
    servers took of the machine's cores while the client ran."""
    total = 0
    for a in archives:
        with open(f"/proc/{a._proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


async def _task_flow_run(flow_run_id: str) -> str:
    """The flow run that holds the harvest's tasks: the run itself, or its ``harvest-run``
    subflow when the flow needs another task runner (several services size the thread
    pool per service, flows/harvest.py)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        parent = await client.read_flow_run(flow_run_id)
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
            )
        )
    return str(children[0].id) if children else flow_run_id


def timed_run(services: dict[str, str], targets_csv: Path, output: Path, archives: Sequence) -> Run:
    """One harvest in this process, timed as ``harvest_run.run_harvest`` times one."""
    params = params_for(services, targets_csv, output)
    runner = _runner()
    wall_start, cpu0, acpu0 = time.time(), _cpu(), _archive_cpu(archives)
    joins0 = HEARTBEAT_JOINS.total
    started = time.perf_counter()
    summary = runner(params)
    seconds = time.perf_counter() - started
    joined = HEARTBEAT_JOINS.total - joins0
    cpu, archive_cpu = _cpu() - cpu0, _archive_cpu(archives) - acpu0
    stored = stored_by_service(output)
    facts = HarvestRun(
        seconds=seconds,
        run_id=asyncio.run(_task_flow_run(summary.run_id)),
        images=summary.images,
        rows=0,
        stored=sorted(set().union(*stored.values())),
        failures=len(summary.failures),
        wall_start=wall_start,
        heartbeat_join=joined,
    )
    return Run(
        seconds=seconds,
        cpu=cpu,
        archive_cpu=archive_cpu,
        stored=stored,
        failures=len(summary.failures),
        facts=add_prefect_facts(facts),
        service_seconds={s.name: s.seconds for s in summary.services},
    )


def run(options: Options) -> tuple[list[str], list[Round], set[str]]:
    """Start, warm, time; returns the printed lines, the rounds and the WCS truth."""
    work = Path(tempfile.mkdtemp(prefix="obsharvest-many-"))
    targets = spread_targets(options.targets, options.radius)
    archives: list = []
    truth: set[str] = set()
    rounds: list[Round] = []
    try:
        for k in range(options.services):
            seed = FIRST_SEED + k
            archive = start_archive(options.visits, options.binning, options.cache_dir, seed)
            archives.append(archive)
            say(f"archive {k + 1} (seed {seed}): warming its FITS cache in {options.cache_dir}")
            truth |= warm(archive, targets).matches
            archives[-1] = archive = warmed_server(archive, own_process=True)
            set_network(archive, fault_items(options.latency, options.bandwidth))
        services = {f"svc{k + 1}": a.tap_url for k, a in enumerate(archives)}
        csv = write_targets_csv(targets, work / "targets.csv")
        with prefect_api(options.start_prefect):
            say("untimed warm-up run over every service")
            timed_run(services, csv, work / "warmup", archives)
            for i in range(options.runs):
                single: dict[str, Run] = {}
                multi = None
                # alternate which goes first, so neither always meets a fresher process
                order = ["single", "multi"] if i % 2 == 0 else ["multi", "single"]
                for what in order:
                    if what == "multi":
                        multi = timed_run(services, csv, work / f"multi-{i}", archives)
                        say(f"round {i + 1}: all {len(services)} services {multi.seconds:.2f} s")
                        continue
                    for name, url in services.items():
                        r = timed_run({name: url}, csv, work / f"{name}-{i}", archives)
                        single[name] = r
                        say(f"round {i + 1}: {name} alone {r.seconds:.2f} s")
                assert multi is not None
                rounds.append(Round(single, multi))
                for out in work.glob(f"*-{i}"):
                    shutil.rmtree(out, ignore_errors=True)
        return render(options, rounds, truth), rounds, truth
    finally:
        for archive in archives:
            archive.stop()
        shutil.rmtree(work, ignore_errors=True)


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _ratios(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{_median(values):.3f} (" + " ".join(f"{v:.3f}" for v in values) + ")"


def render(options: Options, rounds: list[Round], truth: set[str]) -> list[str]:
    names = list(rounds[0].single)
    n = len(rounds)
    lines = [
        f"obsharvest, several services (issue 24, item 6): {options.services} embedded archives "
        f"(seeds {FIRST_SEED}..{FIRST_SEED + options.services - 1}, {options.visits} visits, "
        f"binning {options.binning}), each its own process",
        f"network: {options.latency * 1000:.0f} ms per request on every endpoint of each, "
        + (f"{options.bandwidth / 1e6:.0f} MB/s cap" if options.bandwidth > 0 else "no cap")
        + f"; {options.targets} targets within {options.radius} deg of RA {CENTRE[0]}, "
        f"Dec {CENTRE[1]}, {BAND}-band calexps; {n} round(s), medians",
        "",
        f"{'run':<28}{'wall (s)':>10}{'CPU: client':>13}{'archives':>10}{'stored':>8}   "
        "stage split (s)",
    ]

    def line(title: str, runs: list[Run]) -> str:
        r = runs[sorted(range(len(runs)), key=lambda j: runs[j].seconds)[len(runs) // 2]]
        split = " | ".join(f"{k} {v:.2f}" for k, v in r.facts.stages.items())
        split += f" (heartbeat join {r.facts.heartbeat_join:.2f})"
        return (
            f"{title:<28}{_median([x.seconds for x in runs]):>10.2f}"
            f"{_median([x.cpu for x in runs]):>13.2f}{_median([x.archive_cpu for x in runs]):>10.2f}"
            f"{len(r.all_stored):>8}   {split}"
        )

    for name in names:
        lines.append(line(f"{name} alone", [rd.single[name] for rd in rounds]))
    lines.append(line(f"all {len(names)} in one run", [rd.multi for rd in rounds]))
    seq = [rd.sequential for rd in rounds]
    lines.append(f"{'sequential (sum of alone)':<28}{_median(seq):>10.2f}")
    per_service = " | ".join(f"{k} {v:.2f}" for k, v in rounds[-1].multi.service_seconds.items())
    lines.append(f"{'':<28}per service in the run over all (last round, s): {per_service}")
    vs_slowest = [rd.multi.seconds / rd.slowest for rd in rounds]
    vs_seq = [rd.multi.seconds / rd.sequential for rd in rounds]
    lines += [
        "",
        f"multi / slowest single       {_ratios(vs_slowest)}",
        f"multi / sequential baseline  {_ratios(vs_seq)} = "
        f"{1 / _median(vs_seq):.2f}x faster than asking one service after another",
    ]
    union_ok = all(
        rd.multi.all_stored == set().union(*[r.all_stored for r in rd.single.values()])
        for rd in rounds
    )
    split_ok = all(
        rd.multi.stored.get(name, set()) == rd.single[name].all_stored
        for rd in rounds
        for name in names
    )
    truth_ok = all(rd.multi.all_stored == truth for rd in rounds)
    failures = sum(rd.multi.failures + sum(r.failures for r in rd.single.values()) for rd in rounds)
    lines.append(
        f"correctness: the run over all stored {'exactly' if union_ok else 'NOT exactly'} the "
        f"union of the single runs ({len(rounds[0].multi.all_stored)} images), "
        f"{'each' if split_ok else 'NOT each'} under the service that stored it alone; "
        f"{'exactly' if truth_ok else 'NOT exactly'} the {len(truth)} WCS matches; "
        f"failures: {failures}"
    )
    # Prefect's heartbeat join rounds each run up to its heartbeat thread's next second
    # (harvest_run._HeartbeatJoins): said apart, not judged on, and only where Prefect's own
    # heartbeats ran (a run not started in-process)
    joins = (r.facts.heartbeat_join for rd in rounds for r in (rd.multi, *rd.single.values()))
    if max(joins) > JOIN_SAID:
        unjoined = [
            (rd.multi.seconds - rd.multi.facts.heartbeat_join)
            / max(r.seconds - r.facts.heartbeat_join for r in rd.single.values())
            for rd in rounds
        ]
        lines.append(
            f"without Prefect's heartbeat join at each run's end: multi / slowest single "
            f"{_ratios(unjoined)} (not judged: a user waits for the join)"
        )
    ratio = _median(vs_slowest)
    verdict = "PASS" if ratio <= GOAL and union_ok and truth_ok else "FAIL"
    lines.append(
        f"{verdict}  multi-service wall {_median([rd.multi.seconds for rd in rounds]):.2f} s = "
        f"{ratio:.3f}x the slowest single-service run "
        f"({_median([rd.slowest for rd in rounds]):.2f} s) <= {GOAL}x"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    home = tempfile.mkdtemp(prefix="obsharvest-many-prefect-")
    os.environ["PREFECT_HOME"] = home
    started = time.perf_counter()
    try:
        lines, _, _ = run(options)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print("\n".join(lines))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
