"""How one `obsharvest run --plan` grows with the number of targets (issue "Bulk for real").

``python -m benchmarks.scale [--sizes 1000,4000,16000,64000]`` (``make bench-scale``)
starts the embedded archive as its own process (``obsharvest archive``: a real archive is
another machine, and its memory must not be counted), then for each size writes a seeded
target list spread uniformly within 1 degree of RA 62, Dec -37 and times one
``obsharvest run --plan`` on it in a fresh process, as a user would run it. For each size
it prints the wall time, the peak RSS, and the (target, image) rows and unique images read
back from the Parquet; then the growth between consecutive sizes and PASS/FAIL against
the targets:

- peak RSS at the largest size < 1.5 GB, and <= 1.3x the peak at 4000 targets;
- wall time per 4x rows <= 4.4 (the time ratio normalised by the actual rows ratio:
  ``time_ratio / (rows_ratio / 4)``), for every consecutive pair.

Peak RSS is ``ru_maxrss`` from ``wait4`` of the harvest process: the larger of its own peak
and that of any child it waited for (its temporary Prefect API). /proc is also polled for
the harvest process's own VmHWM and the peak of the whole tree's summed RSS, and when in
the run that peak came, so a failure says where memory grows.

The archive's FITS files are generated on first request; they are kept in ``--cache-dir``
and an untimed warm-up run (``--warmup``) requests them first, so no size pays for
generation. Exit code 0 whatever the figures, 1 if a run failed or timed out.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CENTRE = (62.0, -37.0)  # the seed tutorial's point
RSS_LIMIT_MB = 1500.0  # 1.5 GB
RSS_GROWTH_LIMIT = 1.3  # largest size over 4000 targets
TIME_PER_4X_LIMIT = 4.4  # time ratio per 4x rows (4.0 would be linear)
RSS_REFERENCE_SIZE = 4000
POLL_SECONDS = 0.5


def say(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.scale", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default="1000,4000,16000,64000",
        help="comma-separated target counts, ascending (default 1000,4000,16000,64000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the target lists")
    parser.add_argument("--radius", type=float, default=1.0, help="deg around RA 62, Dec -37")
    parser.add_argument(
        "--profile",
        default=str(ROOT / "config" / "local.yaml"),
        help="profile of the runs (default config/local.yaml, the demo's: i-band calexps); "
        "its embedded archive is replaced by the one this starts",
    )
    parser.add_argument(
        "--obsharvest",
        default=_default_cli(),
        help="command that runs the obsharvest CLI (default: the one next to this Python)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=0.0,
        help="skip a size whose run is predicted (from the earlier sizes) to take longer; "
        "0: no limit",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1000,
        help="targets of an untimed first run that makes the archive generate its files (0: none)",
    )
    parser.add_argument("--visits", type=int, default=120, help="archive: visits in the field")
    parser.add_argument("--binning", type=int, default=10, help="archive: pixel binning")
    parser.add_argument(
        "--cache-dir",
        default=str(Path(tempfile.gettempdir()) / "obsharvest-bench-scale-cache"),
        help="archive's FITS cache, kept between invocations",
    )
    parser.add_argument(
        "--workdir", default=None, help="target lists, outputs and logs (default: a temp dir)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the workdir (logs, rss.tsv per size)"
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes {args.sizes}: give integers, e.g. 1000,4000")
    if not args.sizes or any(n <= 0 for n in args.sizes) or args.sizes != sorted(args.sizes):
        parser.error("--sizes: positive counts in ascending order")
    return args


def _default_cli() -> str:
    """The console script of the running venv: the same install as this Python."""
    beside = Path(sys.executable).parent / "obsharvest"
    return str(beside) if beside.exists() else (shutil.which("obsharvest") or "obsharvest")


# --- targets ------------------------------------------------------------------------------


def make_targets(n: int, seed: int, radius: float) -> list[tuple[str, float, float]]:
    """``n`` points uniform on the sphere within ``radius`` deg of the centre; seeded, so a
    size gets the same list every time (and differing seeds give the warm-up its own)."""
    rng = random.Random(f"{seed}-{n}")
    ra0, dec0 = (math.radians(v) for v in CENTRE)
    cos_max = math.cos(math.radians(radius))
    out = []
    for k in range(n):
        rho = math.acos(1.0 - rng.random() * (1.0 - cos_max))  # uniform in area
        pa = rng.uniform(0.0, 2.0 * math.pi)
        sin_dec = math.sin(dec0) * math.cos(rho) + math.cos(dec0) * math.sin(rho) * math.cos(pa)
        dec = math.asin(sin_dec)
        ra = ra0 + math.atan2(
            math.sin(pa) * math.sin(rho) * math.cos(dec0),
            math.cos(rho) - math.sin(dec0) * sin_dec,
        )
        out.append((f"s{n}-{k:06d}", math.degrees(ra) % 360.0, math.degrees(dec)))
    return out


def write_targets(path: Path, targets: Sequence[tuple[str, float, float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["name,ra,dec", *(f"{name},{ra:.7f},{dec:.7f}" for name, ra, dec in targets)]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the archive --------------------------------------------------------------------------


@contextlib.contextmanager
def archive(cli: list[str], args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """``obsharvest archive`` in a session of its own (a Ctrl-C meant for the benchmark does
    not reach it; it is stopped here, always); yields its TAP URL and process id."""
    cmd = [
        *cli, "archive", "--host", "127.0.0.1", "--port", "0", "--seed", "42",
        "--visits", str(args.visits), "--binning", str(args.binning),
        "--cache-dir", args.cache_dir,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        tap_url = _read_tap_url(proc)
        # keep draining what it prints, so a full pipe never blocks the server
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield tap_url, proc.pid
    finally:
        proc.terminate()  # SIGTERM: it stops and removes its data directory
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_tap_url(proc: subprocess.Popen, wait: float = 300.0) -> str:
    deadline = time.monotonic() + wait
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"archive exited ({proc.wait()}): {''.join(seen)[-2000:]}")
        seen.append(line)
        if line.startswith("TAP service:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"archive printed no 'TAP service:' line within {wait:.0f} s")


# --- one run, measured --------------------------------------------------------------------


@dataclass
class Run:
    size: int
    wall: float = 0.0
    returncode: int | None = None
    timed_out: bool = False
    peak_mb: float = 0.0  # ru_maxrss of wait4: the harvest or a child it waited for
    own_hwm_mb: float = 0.0  # the harvest process's own VmHWM (polled)
    tree_mb: float = 0.0  # peak of the summed VmRSS of the process tree (polled)
    tree_peak_at: float = 0.0  # seconds into the run of that peak
    rows: int = 0
    images: int = 0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # t, own, tree
    client_cpu: float = 0.0  # CPU s of the harvest process and its children (wait4)
    api_cpu: float = 0.0  # ... of which its temporary Prefect API (polled)
    workers_cpu: float = 0.0  # ... of which its image worker processes (polled)
    archive_cpu: float = 0.0  # CPU s the archive process used during the run

    @property
    def client_ms_per_row(self) -> float:
        """The harvest's own CPU (its Prefect API left out) per (target, image) row."""
        return 1000 * (self.client_cpu - self.api_cpu) / max(self.rows, 1)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc/<pid>/task/<tid>/children (every thread's:
    a child belongs to the thread that forked it)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    return found


def _kill_tree(pids: Sequence[int], pgid: int) -> None:
    """Stop a run: its process group, then any descendant that left it (the Prefect API
    runs in a session of its own; it would also die with its parent)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    time.sleep(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (/proc/<pid>/stat); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def role_of(pid: int) -> str:
    """What a process of the harvest's tree is, by its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            line = fh.read().replace(b"\0", b" ")
    except OSError:
        return "gone"
    if b"obsharvest.images.processes" in line:
        return "worker"
    if b"uvicorn" in line or b"prefect" in line and b"server" in line:
        return "api"
    return "client"


def run_harvest(
    cmd: list[str], size: int, log: Path, timeout: float, archive_pid: int | None = None
) -> Run:
    """Run ``cmd`` to its end (or kill it at ``timeout``), polling its memory and its
    children's CPU meanwhile; ``wait4`` gives the exact peak and CPU of the process and the
    children it waited for; the archive's CPU is read before and after."""
    run = Run(size)
    archive_before = cpu_seconds(archive_pid) if archive_pid else 0.0
    seen: dict[int, tuple[str, float]] = {}  # pid -> role, CPU s when last polled
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: killed as one on timeout or Ctrl-C
        )  # fmt: skip
        tree = [proc.pid]
        try:
            while True:
                elapsed = time.perf_counter() - started
                tree = process_tree(proc.pid) or tree
                own = _status_kb(proc.pid, "VmHWM:") / 1024
                total = sum(_status_kb(p, "VmRSS:") for p in tree) / 1024
                run.own_hwm_mb = max(run.own_hwm_mb, own)
                if total > run.tree_mb:
                    run.tree_mb, run.tree_peak_at = total, elapsed
                run.samples.append((elapsed, _status_kb(proc.pid, "VmRSS:") / 1024, total))
                for p in tree[1:]:  # the role again each time: a child's first cmdline is
                    role = role_of(p)  # its parent's, until it execs
                    if role != "gone":
                        seen[p] = (role, cpu_seconds(p) or seen.get(p, (role, 0.0))[1])
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    run.wall = time.perf_counter() - started
                    run.returncode = proc.returncode = os.waitstatus_to_exitcode(status)
                    run.peak_mb = usage.ru_maxrss / 1024  # kB on Linux
                    run.client_cpu = usage.ru_utime + usage.ru_stime
                    run.api_cpu = sum(c for r, c in seen.values() if r == "api")
                    run.workers_cpu = sum(c for r, c in seen.values() if r == "worker")
                    if archive_pid:
                        run.archive_cpu = cpu_seconds(archive_pid) - archive_before
                    return run
                if elapsed > timeout:
                    run.timed_out = True
                    run.wall = elapsed
                    _kill_tree(tree, proc.pid)
                    _, status, usage = os.wait4(proc.pid, 0)
                    run.returncode = proc.returncode = os.waitstatus_to_exitcode(status)
                    run.peak_mb = usage.ru_maxrss / 1024
                    return run
                time.sleep(POLL_SECONDS)
        except BaseException:  # Ctrl-C: leave no harvest behind
            if proc.poll() is None:
                _kill_tree(tree, proc.pid)
                proc.wait()
            raise


def count_rows(output: Path) -> tuple[int, int]:
    """(target, image) rows and unique images in the run's Parquet (a fresh output, so no
    superseded rows). An image is its ``obs_publisher_did`` (``obs_id`` if absent)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    metadata = output / "metadata"
    if not metadata.is_dir():
        return 0, 0
    dataset = ds.dataset(str(metadata), format="parquet")
    key = "obs_publisher_did" if "obs_publisher_did" in dataset.schema.names else "obs_id"
    column = dataset.to_table(columns=[key]).column(key)
    return len(column), pc.count_distinct(column).as_py()


def harvest_command(cli: list[str], profile: str, tap_url: str, csv: Path, out: Path) -> list[str]:
    """The demo's profile pointed at the archive started here, in plan mode."""
    return [
        *cli, "run", "--config", profile,
        "--set", "service.embedded=null", "--set", f"service.tap_url={tap_url}",
        "--targets", str(csv), "--output", str(out), "--plan", "--progress-interval", "30",
    ]  # fmt: skip


def write_samples(path: Path, run: Run) -> None:
    lines = ["seconds\tharvest_rss_mb\ttree_rss_mb"]
    lines += [f"{t:.1f}\t{own:.0f}\t{tree:.0f}" for t, own, tree in run.samples]
    path.write_text("\n".join(lines) + "\n")


def predict_wall(done: Sequence[Run], size: int) -> float | None:
    """Wall time for ``size`` extrapolated from the last two runs' power law (linear in
    the size from one run)."""
    if not done:
        return None
    last = done[-1]
    if len(done) == 1:
        return last.wall * size / last.size
    prev = done[-2]
    exponent = math.log(last.wall / prev.wall) / math.log(last.size / prev.size)
    return last.wall * (size / last.size) ** max(exponent, 1.0)


# --- report -------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def print_results(runs: Sequence[Run]) -> None:
    print()
    print(
        f"{'targets':>8} {'rows':>9} {'images':>7} {'wall s':>8} {'peak RSS MB':>12} "
        f"{'own HWM MB':>11} {'tree MB':>8} {'tree peak at':>13} {'status':>8}"
    )
    for r in runs:
        status = "timeout" if r.timed_out else ("ok" if r.ok else f"exit {r.returncode}")
        at = f"{r.tree_peak_at:.0f}s/{100 * r.tree_peak_at / r.wall:.0f}%" if r.wall else "-"
        print(
            f"{r.size:>8} {r.rows:>9} {r.images:>7} {r.wall:>8.1f} {r.peak_mb:>12.0f} "
            f"{r.own_hwm_mb:>11.0f} {r.tree_mb:>8.0f} {at:>13} {status:>8}"
        )
    print()
    print(
        f"{'targets':>8} {'client CPU s':>13} {'its API s':>10} {'its workers s':>14} "
        f"{'archive CPU s':>14} {'client ms/row':>14}"
    )
    for r in runs:
        print(
            f"{r.size:>8} {r.client_cpu:>13.1f} {r.api_cpu:>10.1f} {r.workers_cpu:>14.1f} "
            f"{r.archive_cpu:>14.1f} {r.client_ms_per_row:>14.3f}"
        )
    if len(runs) < 2:
        return
    print()
    print(
        f"{'growth':>14} {'rows x':>7} {'RSS x':>6} {'own HWM x':>10} {'wall x':>7} "
        f"{'wall per 4x rows':>17}"
    )
    for a, b in zip(runs, runs[1:], strict=False):
        rows = _ratio(b.rows, a.rows)
        wall = _ratio(b.wall, a.wall)
        print(
            f"{f'{a.size}->{b.size}':>14} {rows:>7.2f} {_ratio(b.peak_mb, a.peak_mb):>6.2f} "
            f"{_ratio(b.own_hwm_mb, a.own_hwm_mb):>10.2f} {wall:>7.2f} "
            f"{_ratio(wall, rows / 4):>17.2f}"
        )


def print_checks(runs: Sequence[Run]) -> None:
    """PASS/FAIL lines against the issue's targets (only over runs that completed)."""
    good = [r for r in runs if r.ok]
    print()
    if not good:
        print("FAIL  no run completed")
        return
    top = good[-1]
    verdict = "PASS" if top.peak_mb < RSS_LIMIT_MB else "FAIL"
    print(f"{verdict}  peak RSS at {top.size}: {top.peak_mb:.0f} MB < {RSS_LIMIT_MB:.0f} MB")
    ref = next((r for r in good if r.size == RSS_REFERENCE_SIZE), None)
    if ref is None or ref is top:
        print(
            f"SKIP  peak RSS growth: needs a completed run at {RSS_REFERENCE_SIZE} and a larger one"
        )
    else:
        growth = top.peak_mb / ref.peak_mb
        verdict = "PASS" if growth <= RSS_GROWTH_LIMIT else "FAIL"
        print(f"{verdict}  peak RSS {top.size} / {ref.size}: {growth:.2f}x <= {RSS_GROWTH_LIMIT}x")
    pairs = list(zip(good, good[1:], strict=False))
    if not pairs:
        print("SKIP  wall time per 4x rows: needs two completed sizes")
    for a, b in pairs:
        per4 = _ratio(b.wall / a.wall, _ratio(b.rows, a.rows) / 4)
        verdict = "PASS" if per4 <= TIME_PER_4X_LIMIT else "FAIL"
        print(
            f"{verdict}  wall time per 4x rows {a.size}->{b.size}: {per4:.2f} <= {TIME_PER_4X_LIMIT}"
        )


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli = shlex.split(args.obsharvest)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="obsharvest-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    # SIGTERM as Ctrl-C, so the finally blocks stop the harvest and the archive
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    runs: list[Run] = []
    failed = False
    try:
        say(f"workdir {workdir}; starting the archive (cache {args.cache_dir})")
        with archive(cli, args) as (tap_url, archive_pid):
            say(f"archive at {tap_url}")
            if args.warmup:
                say(f"warm-up: {args.warmup} targets, untimed (makes the archive's files)")
                csv = write_targets(
                    workdir / "warmup.csv", make_targets(args.warmup, args.seed + 1000, args.radius)
                )
                cmd = harvest_command(cli, args.profile, tap_url, csv, workdir / "warmup-out")
                warm = run_harvest(
                    cmd, args.warmup, workdir / "warmup.log", args.timeout, archive_pid
                )
                say(f"warm-up done in {warm.wall:.0f} s (exit {warm.returncode})")
                shutil.rmtree(workdir / "warmup-out", ignore_errors=True)
            for size in args.sizes:
                guess = predict_wall(runs, size)
                if args.budget_minutes and guess and guess > 60 * args.budget_minutes:
                    say(f"skipping {size}: predicted {guess / 60:.0f} min > --budget-minutes")
                    continue
                say(f"{size} targets" + (f" (predicted {guess:.0f} s)" if guess else ""))
                here = workdir / str(size)
                csv = write_targets(
                    here / "targets.csv", make_targets(size, args.seed, args.radius)
                )
                cmd = harvest_command(cli, args.profile, tap_url, csv, here / "out")
                run = run_harvest(cmd, size, here / "run.log", args.timeout, archive_pid)
                run.rows, run.images = count_rows(here / "out")
                write_samples(here / "rss.tsv", run)
                runs.append(run)
                say(
                    f"{size}: {run.wall:.0f} s, peak {run.peak_mb:.0f} MB, {run.rows} rows, "
                    f"{run.images} images, exit {run.returncode}"
                    + (" (TIMEOUT)" if run.timed_out else "")
                )
                if not run.ok:
                    failed = True
                    say(f"run failed; its log: {here / 'run.log'}")
                    break  # the next size would fail the same way, only slower
                shutil.rmtree(here / "out", ignore_errors=True)  # a 64k output is large
    except KeyboardInterrupt:
        say("interrupted: harvest and archive stopped")
        failed = True
    finally:
        print_results(runs)
        print_checks(runs)
        if args.keep or failed:
            print(f"\nlogs and RSS samples: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
