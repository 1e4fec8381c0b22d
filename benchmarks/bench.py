"""``make bench``: obsharvest against the seed notebook's loop and the raw-transfer limit.

One process starts the embedded archive, warms its FITS cache (under ``.cache/``, so
generation is never timed), restarts it as its own process over that cache with a latency
per request and a bandwidth cap, starts a temporary Prefect API (``prefect_test_harness``,
before any timing), and then runs, on the same N targets, interleaved run by run:

1. obsharvest with default settings (fresh output directory each run),
2. the raw-transfer limit for exactly the files that run stored, and the correct-harvest
   limit (the same GETs, each file hashed and stored durably as obsharvest stores it),
3. the baseline (the seed's sequential loop),
4. obsharvest again with 2N targets (the scaling check).

Then verification's CPU per header is timed in this process over a sample of the stored
files (``benchmarks/verifycpu.py``), two subprocess runs of obsharvest measure peak RSS
with images ~10x larger, and one table with every issue-8 and issue-25 target marked PASS
or MISS is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .workload import BAND, CALIB_LEVEL, CENTRE, fault_items

ROOT = Path(__file__).resolve().parent.parent
# s of joining Prefect's heartbeat thread worth a note: runs started in this process send
# their own heartbeats (flows/heartbeats.py) and join nothing; Prefect's own would
JOIN_SAID = 0.05


@dataclass
class Options:
    targets: int = 10
    runs: int = 3
    latency: float = 0.02
    bandwidth: float = 5e7
    binning: int = 10
    rss_binning: int | None = None  # None: files ~10x bigger than at ``binning``
    rss_targets: int = 2
    rss: bool = True
    radius: float = 1.0
    visits: int = 120
    limit_workers: int = 16
    faults: list[str] = field(default_factory=list)
    cache_dir: Path = ROOT / ".cache" / "bench"
    archive_process: bool = True  # False: the archive shares the clients' process (and GIL)
    start_prefect: bool = True  # False: the caller has a Prefect API configured (tests)

    @property
    def big_binning(self) -> int:
        if self.rss_binning is not None:
            return self.rss_binning
        return max(1, round(self.binning / math.sqrt(10)))


def parse_args(argv: Sequence[str] | None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--targets", type=int, default=d.targets, help="N targets (default %(default)s)")
    p.add_argument("--runs", type=int, default=d.runs, help="runs of each (default %(default)s)")
    p.add_argument("--latency", type=float, default=d.latency, help="s per request, all endpoints")
    p.add_argument(
        "--bandwidth",
        type=float,
        default=d.bandwidth,
        help="B/s for all connections together; 0: no cap",
    )
    p.add_argument(
        "--binning", type=int, default=d.binning, help="image binning (10: 407x400 px, ~2 MB)"
    )
    p.add_argument(
        "--rss-binning",
        type=int,
        default=None,
        help="binning of the larger images (default: files ~10x bigger)",
    )
    p.add_argument("--rss-targets", type=int, default=d.rss_targets, help="targets of the RSS runs")
    p.add_argument("--no-rss", action="store_true", help="skip the RSS subprocess runs")
    p.add_argument(
        "--radius",
        type=float,
        default=d.radius,
        help="deg around (62, -37) the targets spread over",
    )
    p.add_argument("--visits", type=int, default=d.visits, help="visits in the archive")
    p.add_argument(
        "--limit-workers",
        type=int,
        default=d.limit_workers,
        help="threads of the raw-transfer GETs",
    )
    p.add_argument(
        "--fault", action="append", default=[], help="extra archive fault, e.g. files.bandwidth=1e7"
    )
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir, help="generated FITS kept here")
    p.add_argument(
        "--archive-in-process",
        action="store_true",
        help="serve from this process (its threads then compete with the clients' for the GIL)",
    )
    a = p.parse_args(argv)
    if a.targets < 1 or a.runs < 1:
        p.error("--targets and --runs must be at least 1")
    return Options(
        targets=a.targets,
        runs=a.runs,
        latency=a.latency,
        bandwidth=a.bandwidth,
        binning=a.binning,
        rss_binning=a.rss_binning,
        rss_targets=a.rss_targets,
        rss=not a.no_rss,
        radius=a.radius,
        visits=a.visits,
        limit_workers=a.limit_workers,
        faults=a.fault,
        cache_dir=a.cache_dir,
        archive_process=not a.archive_in_process,
    )


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def prefect_api(start: bool) -> Iterator[dict[str, str]]:
    """A temporary Prefect API for the whole benchmark; yields the env a child process needs."""
    if not start:
        from prefect.settings import PREFECT_API_URL

        yield {"PREFECT_API_URL": str(PREFECT_API_URL.value() or "")}
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        yield {"PREFECT_API_URL": str(PREFECT_API_URL.value())}


@dataclass
class Measured:
    harvest: list = field(default_factory=list)
    harvest_stats: list = field(default_factory=list)
    limit: list = field(default_factory=list)
    correct: list = field(default_factory=list)  # correct-harvest limit runs
    baseline: list = field(default_factory=list)
    baseline_stats: list = field(default_factory=list)
    harvest2: list = field(default_factory=list)
    one_process: list = field(default_factory=list)  # image_processes off: one interpreter
    rss_small: object = None
    rss_big: object = None
    big_files_bytes: int = 0  # bytes served from /files during the large-image run
    big_catalogue: object = None
    verify_cpu: object = None  # verifycpu.VerifyCpu
    setup_seconds: dict = field(default_factory=dict)


def _files(stats: dict) -> tuple[int, int]:
    s = stats.get("files", {})
    return s.get("requests", 0), s.get("bytes", 0)


def _requests(stats: dict) -> int:
    return sum(v["requests"] for v in stats.values())


def run(options: Options) -> tuple[report.Table, Measured]:
    """Everything: start, warm, time, measure; returns the table (and the raw numbers)."""
    from .baseline import run_baseline
    from .harvest_run import add_prefect_facts, run_harvest
    from .limit import run_correct_limit, run_limit, signed_urls
    from .verifycpu import measure as measure_verify_cpu
    from .workload import (
        set_network,
        spread_targets,
        start_archive,
        warm,
        warmed_server,
        write_targets_csv,
    )

    m = Measured()
    work = Path(tempfile.mkdtemp(prefix="obsharvest-bench-"))
    network = fault_items(options.latency, options.bandwidth, options.faults)
    targets = spread_targets(options.targets, options.radius)
    targets2 = spread_targets(2 * options.targets, options.radius)
    archive = big = None
    try:
        t0 = time.perf_counter()
        archive = start_archive(options.visits, options.binning, options.cache_dir)
        say(f"archive at {archive.tap_url}; warming its FITS cache in {options.cache_dir}")
        catalogue = warm(archive, [*targets, *targets2])
        archive = warmed_server(archive, options.archive_process)
        cat = catalogue.subset(targets)
        cat2 = catalogue.subset(targets2)
        csv1 = write_targets_csv(targets, work / "targets-n.csv")
        csv2 = write_targets_csv(targets2, work / "targets-2n.csv")
        m.setup_seconds["archive + cache"] = time.perf_counter() - t0
        set_network(archive, network)
        t0 = time.perf_counter()
        with prefect_api(options.start_prefect) as child_env:
            m.setup_seconds["prefect api"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            # first flow run, untimed: the N targets, so image worker processes start here
            run_harvest(archive.tap_url, csv1, work / "warmup")
            m.setup_seconds["warm-up run"] = time.perf_counter() - t0
            for i in range(options.runs):
                out = work / f"harvest-{i}"
                archive.reset_stats()
                h = run_harvest(archive.tap_url, csv1, out)
                m.harvest_stats.append(archive.stats())
                m.harvest.append(add_prefect_facts(h))
                shutil.rmtree(out, ignore_errors=True)
                say(
                    f"run {i + 1}/{options.runs}: obsharvest {h.seconds:.2f} s ({h.images} images, {len(h.stored)} stored)"
                )
                urls = signed_urls(archive.datalink_url, h.stored)
                archive.reset_stats()
                lim = run_limit(urls, options.limit_workers)
                m.limit.append(lim)
                say(
                    f"run {i + 1}/{options.runs}: raw limit {lim.seconds:.2f} s ({lim.bytes / 1e6:.1f} MB)"
                )
                archive.reset_stats()
                stored_at = work / f"correct-limit-{i}"
                ok = run_correct_limit(urls, stored_at, options.limit_workers)
                m.correct.append(ok)
                shutil.rmtree(stored_at, ignore_errors=True)
                say(
                    f"run {i + 1}/{options.runs}: correct-harvest limit {ok.seconds:.2f} s "
                    f"({ok.bytes / 1e6:.1f} MB, fsync {ok.fsync_seconds:.2f} thread-s)"
                )
                archive.reset_stats()
                b = run_baseline(archive.tap_url, targets, work / f"baseline-{i}")
                m.baseline_stats.append(archive.stats())
                m.baseline.append(b)
                shutil.rmtree(work / f"baseline-{i}", ignore_errors=True)
                say(
                    f"run {i + 1}/{options.runs}: baseline {b.seconds:.2f} s ({b.rows} rows, {len(b.downloaded)} saved)"
                )
                out = work / f"one-process-{i}"
                h1 = add_prefect_facts(
                    run_harvest(archive.tap_url, csv1, out, image_processes=False)
                )
                m.one_process.append(h1)
                shutil.rmtree(out, ignore_errors=True)
                say(f"run {i + 1}/{options.runs}: obsharvest in one process {h1.seconds:.2f} s")
                out = work / f"harvest2-{i}"
                h2 = add_prefect_facts(run_harvest(archive.tap_url, csv2, out))
                m.harvest2.append(h2)
                shutil.rmtree(out, ignore_errors=True)
                say(
                    f"run {i + 1}/{options.runs}: obsharvest 2N {h2.seconds:.2f} s ({h2.images} images)"
                )
            m.verify_cpu = measure_verify_cpu(cat, targets, m.harvest[-1].stored)
            say(f"verification: {m.verify_cpu.ms_per_header:.2f} ms CPU per header")
            if options.rss:
                rss_targets = targets[: max(1, options.rss_targets)]
                rss_csv = write_targets_csv(rss_targets, work / "targets-rss.csv")
                big = start_archive(options.visits, options.big_binning, options.cache_dir)
                say(f"RSS: warming binning {options.big_binning} files")
                big_cat = warm(big, rss_targets)
                big = warmed_server(big, options.archive_process)
                set_network(big, network)
                m.rss_small = _rss(archive.tap_url, rss_csv, work / "rss-small", child_env)
                say(f"RSS: binning {options.binning}: peak {m.rss_small.peak_mb:.0f} MB")
                big.reset_stats()
                m.rss_big = _rss(big.tap_url, rss_csv, work / "rss-big", child_env)
                m.big_files_bytes = _files(big.stats())[1]
                m.big_catalogue = big_cat
                say(f"RSS: binning {options.big_binning}: peak {m.rss_big.peak_mb:.0f} MB")
        return build_table(options, m, cat, cat2), m
    finally:
        for running in (archive, big):
            if running is not None:
                running.stop()
        shutil.rmtree(work, ignore_errors=True)


def _rss(tap_url: str, csv: Path, out: Path, env: dict[str, str]):
    from .rss import measure

    try:
        return measure(tap_url, csv, out, env)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def build_table(options: Options, m: Measured, cat, cat2) -> report.Table:
    from .harvest_run import image_tasks

    R = report
    n = options.runs
    t_h = [h.seconds for h in m.harvest]
    t_l = [x.seconds for x in m.limit]
    t_b = [b.seconds for b in m.baseline]
    t_h2 = [h.seconds for h in m.harvest2]
    hb = [t_h[i] / t_b[i] for i in range(n)]
    hl = [t_h[i] / t_l[i] for i in range(n)]
    mi = R.median_index(t_h)
    bi = R.median_index(t_b)
    size_mb = cat.bytes_of(cat.images) / len(cat.images) / 1e6 if cat.images else 0.0
    matches = cat.matches

    # verification bytes: bytes read from /files minus the bytes of the files downloaded,
    # over the bytes of every image whose header was checked
    def h_verify(i: int) -> float:
        _, read = _files(m.harvest_stats[i])
        decided = cat.images
        return (read - cat.bytes_of(m.harvest[i].stored)) / max(cat.bytes_of(decided), 1)

    def b_verify(i: int) -> float:
        _, read = _files(m.baseline_stats[i])
        b = m.baseline[i]
        return (read - cat.bytes_of(b.downloaded)) / max(cat.bytes_of(b.verified), 1)

    hv = [h_verify(i) for i in range(n)]
    bv = [b_verify(i) for i in range(n)]
    speedups = [1 / r for r in hb]
    rows: list[R.Row] = []
    rows.append(
        R.Row(
            f"wall time, median of {n}",
            R.fmt_s(R.median(t_b)),
            R.fmt_s(R.median(t_h)),
            R.fmt_s(R.median(t_l)),
        )
    )
    latency_bound = options.bandwidth <= 0
    speedup_min = R.SPEEDUP_MIN_LATENCY if latency_bound else R.SPEEDUP_MIN
    rows.append(
        R.Row(
            "obsharvest / baseline",
            value=f"{R.fmt_ratios(hb)} = {R.median(speedups):.1f}x faster",
            target=f">= {speedup_min:.0f}x faster",
            passed=R.median(speedups) >= speedup_min,
        )
    )
    rows.append(
        R.Row(
            "obsharvest / raw limit",
            value=R.fmt_ratios(hl),
            target=f"<= {R.LIMIT_MAX}",
            passed=R.median(hl) <= R.LIMIT_MAX,
        )
    )
    t_c = [x.seconds for x in m.correct]
    hc = [t_h[i] / t_c[i] for i in range(n)]
    ci = R.median_index(t_c)
    rows.append(
        R.Row(
            "obsharvest / correct-harvest limit",
            limit=R.fmt_s(R.median(t_c)),
            value=(
                f"{R.fmt_ratios(hc)} (sha256+md5, temp + fsync + rename + sidecar; "
                f"fsync {m.correct[ci].fsync_seconds:.2f} thread-s)"
            ),
            target=f"<= {R.CORRECT_MAX} latency-bound" if latency_bound else "",
            passed=(R.median(hc) <= R.CORRECT_MAX) if latency_bound else None,
        )
    )
    bound = [t_b[i] / t_l[i] for i in range(n)]
    rows.append(
        R.Row(
            "baseline / raw limit",
            value=f"{R.median(bound):.1f}x: the most any client could gain on this network",
        )
    )
    verify_value = f"{R.median(hv) * 100:.2f}% of {cat.bytes_of(cat.images) / 1e6:.0f} MB checked"
    big_cat = m.big_catalogue
    if big_cat is not None and m.rss_big is not None and big_cat.images:
        big_v = (m.big_files_bytes - m.rss_big.stored_bytes) / big_cat.bytes_of(big_cat.images)
        verify_value += f"; {big_v * 100:.2f}% with binning {options.big_binning} files"
    rows.append(
        R.Row(
            "verify bytes / image bytes",
            f"{R.median(bv):.4f}",
            f"{R.median(hv):.4f}",
            value=verify_value,
            target=f"<= {R.VERIFY_MAX:.0%}",
            passed=R.median(hv) <= R.VERIFY_MAX,
        )
    )
    if m.rss_small is not None and m.rss_big is not None:
        ratio = m.rss_big.peak_mb / m.rss_small.peak_mb
        grow = m.rss_big.file_mb / max(m.rss_small.file_mb, 1e-9)
        rows.append(
            R.Row(
                "peak RSS, images ~10x larger",
                obsharvest=f"{m.rss_big.peak_mb:.0f} MB",
                value=(
                    f"{m.rss_small.peak_mb:.0f} -> {m.rss_big.peak_mb:.0f} MB = {ratio:.2f}x "
                    f"(files {m.rss_small.file_mb:.1f} -> {m.rss_big.file_mb:.1f} MB, {grow:.1f}x; "
                    f"{m.rss_big.imported_mb:.0f} MB after imports)"
                ),
                target=f"<= {R.RSS_MAX}x",
                passed=ratio <= R.RSS_MAX,
            )
        )
    else:
        rows.append(R.Row("peak RSS, images ~10x larger", value="not measured (--no-rss)"))
    h, h2 = m.harvest[mi], m.harvest2[R.median_index(t_h2)]
    per10k, how = R.tasks_per_10k(
        [(h.images, h.task_runs, image_tasks(h)), (h2.images, h2.task_runs, image_tasks(h2))]
    )
    rows.append(
        R.Row(
            "task runs per 10k images",
            obsharvest=f"{h.task_runs} in run",
            value=f"{per10k:.0f} ({how}; {h.task_runs}/{h.images} and {h2.task_runs}/{h2.images} images)",
            target=f"<= {R.TASKS_MAX}",
            passed=per10k <= R.TASKS_MAX,
        )
    )
    st = h.stages
    rows.append(
        R.Row(
            "stage split (median run)",
            obsharvest=R.fmt_s(h.seconds),
            value=" | ".join(f"{k} {v:.2f} s" for k, v in st.items())
            + f" (flow end: {h.heartbeat_join:.2f} s joining Prefect's heartbeat thread)",
        )
    )
    rows.append(_cpu_row(h, m, mi))
    if m.one_process:
        rows.append(_cores_row(m, mi))
    vc = m.verify_cpu
    if vc is not None:
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(vc.verdicts.items()))
        rows.append(
            R.Row(
                "verification CPU per header",
                obsharvest=f"{vc.ms_per_header:.2f} ms",
                value=(
                    f"{vc.files} stored files x {vc.repeats}, median ({vc.fastest_ms:.2f}-"
                    f"{vc.slowest_ms:.2f}); {vc.targets_per_header:.1f} targets/header; "
                    f"<= {vc.bytes_read / 1000:.0f} kB read; {verdicts}"
                ),
                target=f"<= {R.VERIFY_CPU_MS_MAX:.0f} ms",
                passed=vc.ms_per_header <= R.VERIFY_CPU_MS_MAX,
            )
        )
    scale = R.median(t_h2) / R.median(t_h)
    img_ratio = h2.images / max(h.images, 1)
    rows.append(
        R.Row(
            "scaling N -> 2N targets",
            obsharvest=R.fmt_s(R.median(t_h2)),
            value=(
                f"{options.targets} -> {2 * options.targets} targets: {R.median(t_h):.2f} -> "
                f"{R.median(t_h2):.2f} s = {scale:.2f}x (images {img_ratio:.2f}x)"
            ),
            target=f"<= {R.SCALING_MAX}x",
            passed=scale <= R.SCALING_MAX,
        )
    )
    li = R.median_index(t_l)
    rows.append(
        R.Row(
            "HTTP requests (median run)",
            str(_requests(m.baseline_stats[bi])),
            str(_requests(m.harvest_stats[mi])),
            str(m.limit[li].files),
        )
    )
    rows.append(
        R.Row(
            "MB from /files (median run)",
            f"{_files(m.baseline_stats[bi])[1] / 1e6:.0f}",
            f"{_files(m.harvest_stats[mi])[1] / 1e6:.0f}",
            f"{m.limit[li].bytes / 1e6:.0f}",
        )
    )
    bw = f"{options.bandwidth / 1e6:.0f} MB/s shared" if options.bandwidth > 0 else "no cap"
    header = [
        "obsharvest benchmark (issues 8 and 25)",
        (
            f"workload: {options.targets} targets within {options.radius} deg of RA {CENTRE[0]}, "
            f"Dec {CENTRE[1]}; seed query {BAND}-band calib_level={CALIB_LEVEL}: "
            f"{cat.n_rows} (target, image) rows, {len(cat.images)} images, {len(matches)} true "
            f"matches ({cat.bytes_of(matches) / 1e6:.0f} MB); binning {options.binning}, "
            f"{size_mb:.2f} MB per file"
        ),
        (
            f"network: {options.latency * 1000:.0f} ms per request on every endpoint, {bw}"
            + (f", extra faults {' '.join(options.faults)}" if options.faults else "")
            + f"; {n} run(s) each, interleaved; Prefect API: "
            + (
                "prefect_test_harness, started before timing"
                if options.start_prefect
                else "the caller's"
            )
        ),
    ]
    table = R.Table(header, rows)
    table.notes += notes(options, m, cat, cat2, hb, hl, hv)
    return table


def _cpu_row(h, m: Measured, mi: int) -> report.Row:
    """obsharvest's CPU in the images stage (this process: the client), per image and as
    cores busy, with an estimate of its parts: verification from the per-header timing,
    storing from the correct-harvest limit's CPU over the raw limit's (same GETs)."""
    cpu, wall = h.stage_cpu("images")
    stored = max(len(h.stored), 1)
    per_image = cpu / max(h.images, 1) * 1000
    value = (
        f"images stage {cpu:.2f} CPU-s / {wall:.2f} s = {cpu / max(wall, 1e-9):.2f} cores busy; "
        f"{per_image:.1f} ms per image ({h.images} decided, {len(h.stored)} stored)"
    )
    lim, ok = m.limit[mi], m.correct[mi]
    storing = (ok.cpu - lim.cpu) / stored * 1000 * len(h.stored) / max(h.images, 1)
    vc = m.verify_cpu
    if vc is not None:
        verifying = vc.ms_per_header
        value += (
            f": verification ~{verifying:.1f}, storing ~{storing:.1f}, other "
            f"{per_image - verifying - storing:.1f}"
        )
    value += f"; whole run {h.cpu:.2f} CPU-s / {h.seconds:.2f} s = {h.cpu / h.seconds:.2f} cores"
    return report.Row("CPU: client (images stage)", obsharvest=f"{cpu:.2f} CPU-s", value=value)


def _cores_row(m: Measured, mi: int) -> report.Row:
    """Image work in worker processes (default) against one interpreter, same run."""
    one = m.one_process
    t1 = [h.seconds for h in one]
    k = report.median_index(t1)
    cpu_w, wall_w = m.harvest[mi].stage_cpu("images")
    cpu_1, wall_1 = one[k].stage_cpu("images")
    ratios = [m.harvest[i].seconds / one[i].seconds for i in range(len(one))]
    return report.Row(
        "image workers / one process",
        obsharvest=report.fmt_s(report.median(t1)),
        value=(
            f"{report.fmt_ratios(ratios)} of the run in one process; images stage "
            f"{wall_w:.2f} s at {cpu_w / max(wall_w, 1e-9):.2f} cores busy, against "
            f"{wall_1:.2f} s at {cpu_1 / max(wall_1, 1e-9):.2f} in one process"
        ),
    )


def notes(options: Options, m: Measured, cat, cat2, hb, hl, hv) -> list[str]:
    """Plain facts under the table: correctness checks, and why a target was missed."""
    R = report
    out = []
    truth_ok = all(set(h.stored) == cat.matches for h in m.harvest)
    base_ok = all(set(b.downloaded) == cat.matches for b in m.baseline)
    out.append(
        f"correctness: obsharvest stored {'exactly' if truth_ok else 'NOT exactly'} the "
        f"{len(cat.matches)} true matches in every run; baseline saved "
        f"{'exactly' if base_ok else 'NOT exactly'} them; failures reported by obsharvest: "
        f"{sum(h.failures for h in m.harvest)}"
    )
    speed = R.median([1 / r for r in hb])
    bound = R.median([m.baseline[i].seconds / m.limit[i].seconds for i in range(options.runs)])
    wanted = R.SPEEDUP_MIN_LATENCY if options.bandwidth <= 0 else R.SPEEDUP_MIN
    if speed < wanted and bound < wanted:
        out.append(
            f"obsharvest / baseline MISS: even the raw transfer of the stored files alone is only "
            f"{bound:.1f}x faster than the baseline here, so no client can reach "
            f"{wanted:.0f}x on this network: the bandwidth cap, not obsharvest, bounds "
            "the speed-up (see benchmarks/README.md)"
        )
    elif speed < wanted:
        joined = ""  # said only where Prefect's own heartbeats ran (a run not started in-process)
        if max(h.heartbeat_join for h in m.harvest) > JOIN_SAID:
            unjoined = R.median(
                [
                    b.seconds / max(h.seconds - h.heartbeat_join, 1e-9)
                    for b, h in zip(m.baseline, m.harvest, strict=False)
                ]
            )
            joined = (
                f"{unjoined:.1f}x without the end of each run spent joining Prefect's heartbeat "
                "thread (not judged: a user waits for it); the rest is "
            )
        out.append(
            f"obsharvest / baseline MISS: the raw transfer is {bound:.1f}x faster than the "
            f"baseline, so {wanted:.0f}x is possible on this network; obsharvest's "
            f"{speed:.1f}x is {joined}its own round trips (header reads, Datalink, queries) "
            "and CPU"
        )
    if R.median(hl) > R.LIMIT_MAX:
        h = m.harvest[R.median_index([x.seconds for x in m.harvest])]
        lim = R.median([x.seconds for x in m.limit])
        joined = (
            f" ({(h.seconds - h.heartbeat_join) / lim:.3f}x without its "
            f"{h.heartbeat_join:.2f} s joining Prefect's heartbeat thread)"
            if h.heartbeat_join > JOIN_SAID
            else ""
        )
        out.append(
            f"obsharvest / raw limit MISS: median run {h.seconds:.2f} s vs {lim:.2f} s{joined}; "
            "stages " + ", ".join(f"{k} {v:.2f} s" for k, v in h.stages.items())
        )
    if R.median(hv) > R.VERIFY_MAX:
        per_image = R.median(
            [
                (_files(m.harvest_stats[i])[1] - cat.bytes_of(m.harvest[i].stored))
                / max(len(cat.images), 1)
                for i in range(options.runs)
            ]
        )
        size = cat.bytes_of(cat.images) / max(len(cat.images), 1)
        out.append(
            f"verify bytes MISS: {per_image / 1024:.1f} KiB read per image (one range read of "
            f"verification.header_block_size) against {size / 1e6:.2f} MB files; the same read "
            f"is {per_image / 195_477_120:.3%} of a real 195 MB calexp (binning 1)"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's INFO lines stay off the terminal; they still reach the API as in any run
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    home = tempfile.mkdtemp(prefix="obsharvest-bench-prefect-")
    os.environ["PREFECT_HOME"] = home
    started = time.perf_counter()
    try:
        table, _ = run(options)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(table.render())
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
