"""A stop is honoured within 10 s in every phase, SIGTERM and SIGINT alike.

One harness, parametrized over the phases of a run and both signals: a real ``obsharvest
run`` (signals need a real process) is held in one phase -- a server that accepts and
never answers, an archive fault that stalls that phase's requests, a slow query, or a
rendezvous point (``obsharvest.runtime.crashpoints``) where the run waits for the test --
and is sent the signal once the archive, the file system or the hold says it is there (a
condition, never a fixed sleep). It must exit 143/130 within 10 s of the signal, with its
summary on stdout, the stop named on stderr and no traceback. Header reads are the case
of ``tests/e2e/test_stopping.py``.

The runs share one Prefect API (the session's harness) and two archives per module: a
plain one whose faults each case sets, and one whose queries take a minute.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.conftest import TARGET_DEC, TARGET_RA

from .test_stopping import _wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("obsharvest")
SIGNALS = [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
READY_TIMEOUT = 120.0  # seconds for a run to reach its phase (a busy 2-core machine)
STOP_LIMIT = 10.0  # seconds from the signal to the exit


class BlackHole:
    """A TCP server that accepts every connection and never says a byte."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self.held:
            conn.close()


class Hold:
    """The test's end of a rendezvous point: the run connects when it reaches the point
    and waits there until released."""

    def __init__(self, point: str) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(1.0)
        host, port = self._sock.getsockname()
        self.env = {"OBSHARVEST_RENDEZVOUS": f"{point}@{host}:{port}"}
        self._conn: socket.socket | None = None

    def reached(self) -> bool:
        if self._conn is None:
            try:
                self._conn, _ = self._sock.accept()
            except TimeoutError:
                return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            self._conn.sendall(b"g")
            self._conn.close()
        self._sock.close()


class _Reader:
    """A pipe read to its end in a thread, so the test can look at it while the run goes on."""

    def __init__(self, pipe) -> None:
        self._parts: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self._parts.append(line)

    def text(self) -> str:
        return "".join(self._parts)

    def all(self) -> str:
        self._thread.join(timeout=30)
        return self.text()


@dataclass
class Ctx:
    """What one case has: the archives, its output, and what it set up."""

    plain: EmbeddedArchive
    slow: EmbeddedArchive
    tmp: Path
    hole: BlackHole | None = None
    hold: Hold | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    """How to hold a run in one phase: the archive (or a black hole) it talks to, its
    faults and options, the condition that says it is there, and what else to check."""

    args: Callable[[Ctx], list[str]]
    ready: Callable[[Ctx, subprocess.Popen], bool]
    archive: str = "plain"  # plain, slow or hole
    faults: tuple[str, ...] = ()
    hold: str | None = None
    after: Callable[[Ctx, str, str], None] | None = None


def _tap(ctx: Ctx, archive: str) -> str:
    if archive == "hole":
        assert ctx.hole is not None
        return ctx.hole.url + "/tap"
    return (ctx.slow if archive == "slow" else ctx.plain).tap_url


def _requests(archive: EmbeddedArchive, endpoint: str) -> int:
    methods = archive.stats().get(endpoint, {}).get("methods", {})
    return sum(methods.values())


def _one_target(ctx: Ctx) -> list[str]:
    return ["--ra", str(TARGET_RA), "--dec", str(TARGET_DEC), "--output", str(ctx.tmp / "out")]


def _targets(ctx: Ctx, count: int, per_shard: int) -> list[str]:
    """``count`` targets a few arcminutes apart, in shards of ``per_shard``."""
    path = ctx.tmp / "targets.csv"
    lines = ["name,ra,dec"]
    for i in range(count):
        dra, ddec = 0.02 * (i % 7) - 0.06, 0.02 * (i // 7 % 7) - 0.06
        ra = TARGET_RA + dra / math.cos(math.radians(TARGET_DEC))
        lines.append(f"t{i},{ra:.6f},{TARGET_DEC + ddec:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return [
        "--targets",
        str(path),
        "--output",
        str(ctx.tmp / "out"),
        "--set",
        f"execution.shard_targets={per_shard}",
    ]


def _parquet_parts(ctx: Ctx) -> list[Path]:
    return list((ctx.tmp / "out" / "metadata").rglob("*.parquet"))


def _no_running_job(ctx: Ctx, out: str, err: str) -> None:
    """The job the run left on the server was aborted (or deleted), not left running."""
    active = [j.phase for j in ctx.slow.jobs.list() if j.phase in ("QUEUED", "EXECUTING")]
    assert not active, f"jobs still running on the server: {active}"


def _shards_not_started(ctx: Ctx, out: str, err: str) -> None:
    assert "not started" in out, out[-2000:]
    assert _parquet_parts(ctx), "the first shard's Parquet should stay"


def _decided_is_written(ctx: Ctx, out: str, err: str) -> None:
    assert "Parquet: " in out and _parquet_parts(ctx), out[-2000:]


PHASES: dict[str, Phase] = {
    # preflight: no Prefect yet, no archive; a TAP URL that accepts and never answers
    "preflight-capabilities": Phase(
        archive="hole",
        args=_one_target,
        ready=lambda ctx, run: bool(ctx.hole and ctx.hole.held),
    ),
    # the token check (the UWS job list) stalls: sent only with a token
    "preflight-token": Phase(
        faults=("tap_async.stall=1",),
        args=_one_target,
        ready=lambda ctx, run: _requests(ctx.plain, "tap_async") >= 1,
    ),
    # the write probe of an S3 output whose endpoint never answers
    "preflight-write-probe": Phase(
        args=lambda ctx: [
            "--ra",
            str(TARGET_RA),
            "--dec",
            str(TARGET_DEC),
            "--plan",
            "--output",
            "s3://bucket/out",
            "--set",
            "output_storage_options={key: k, secret: s, client_kwargs: {endpoint_url: "
            f"{ctx.hole.url if ctx.hole else ''}}}}}",
        ],
        ready=lambda ctx, run: bool(ctx.hole and ctx.hole.held),
    ),
    "query-sync": Phase(
        archive="slow",
        args=lambda ctx: [*_one_target(ctx), "--set", "query.mode=sync"],
        ready=lambda ctx, run: _requests(ctx.slow, "tap_sync") >= 1,
    ),
    "query-async": Phase(
        archive="slow",
        args=lambda ctx: [*_one_target(ctx), "--set", "query.mode=async"],
        ready=lambda ctx, run: any(j.phase == "EXECUTING" for j in ctx.slow.jobs.list()),
        after=_no_running_job,
    ),
    "datalink": Phase(
        faults=("datalink.stall=1",),
        args=_one_target,
        ready=lambda ctx, run: _requests(ctx.plain, "datalink") >= 1,
    ),
    # no header reads: the first file request is the download
    "download": Phase(
        faults=("files.stall=1",),
        args=lambda ctx: [*_one_target(ctx), "--set", 'verification.mode="off"'],
        ready=lambda ctx, run: _requests(ctx.plain, "files") >= 1,
    ),
    "cutout": Phase(
        faults=("cutout.stall=1",),
        args=lambda ctx: [
            *_one_target(ctx),
            "--radius",
            "0.01",
            "--set",
            "products.mode=cutout",
        ],
        ready=lambda ctx, run: _requests(ctx.plain, "cutout") >= 1,
    ),
    # the case: a sharded plan run stopped the moment its first Parquet part appears
    "parquet": Phase(
        args=lambda ctx: [*_targets(ctx, 48, 12), "--plan"],
        ready=lambda ctx, run: bool(_parquet_parts(ctx)),
        after=_shards_not_started,
    ),
    "between-shards": Phase(
        hold="shard",
        args=lambda ctx: [*_targets(ctx, 8, 4), "--plan"],
        ready=lambda ctx, run: bool(ctx.hold and ctx.hold.reached()),
        after=_shards_not_started,
    ),
    "summary": Phase(
        hold="summary",
        args=lambda ctx: [*_one_target(ctx), "--plan"],
        ready=lambda ctx, run: bool(ctx.hold and ctx.hold.reached()),
        after=_decided_is_written,
    ),
    "artifacts": Phase(
        hold="report",
        args=lambda ctx: [*_one_target(ctx), "--plan"],
        ready=lambda ctx, run: bool(ctx.hold and ctx.hold.reached()),
        after=_decided_is_written,
    ),
}


@pytest.fixture(scope="module")
def plain_archive():
    with EmbeddedArchive(ArchiveSettings(seed=5, n_visits=24, binning=10)) as archive:
        yield archive


@pytest.fixture(scope="module")
def slow_archive():
    """Every query takes half a minute: a sync reply or an async job still running."""
    settings = ArchiveSettings(seed=5, n_visits=24, binning=10, query_delay=30.0)
    with EmbeddedArchive(settings) as archive:
        yield archive


def _env(ctx: Ctx) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        ACCESS_TOKEN="stop-phase-token",  # so the preflight checks the token too
        AWS_EC2_METADATA_DISABLED="true",
        **ctx.env,
    )
    return env


@pytest.mark.parametrize(("sig", "code"), SIGNALS, ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.timeout(240)
def test_a_stop_is_honoured_within_10s(plain_archive, slow_archive, tmp_path, phase, sig, code):
    spec = PHASES[phase]
    ctx = Ctx(plain_archive, slow_archive, tmp_path)
    plain_archive.set_faults(FaultPlan.parse(list(spec.faults), seed=3))
    plain_archive.reset_stats()
    slow_archive.reset_stats()
    ctx.hole = BlackHole()
    if spec.hold:
        ctx.hold = Hold(spec.hold)
        ctx.env.update(ctx.hold.env)
    command = [
        str(CLI),
        "run",
        "--config",
        "config/local.yaml",
        "--set",
        "service.embedded=null",
        "--set",
        f"service.tap_url={_tap(ctx, spec.archive)}",
        "--progress-interval",
        "0",
        *spec.args(ctx),
    ]
    run = subprocess.Popen(
        command, cwd=ROOT, env=_env(ctx), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = _Reader(run.stdout), _Reader(run.stderr)
    stop_line = f"{signal.Signals(sig).name}: stopping"
    try:
        _wait_for(
            lambda: spec.ready(ctx, run) or run.poll() is not None,
            READY_TIMEOUT,
            f"the run to reach {phase}",
        )
        assert run.poll() is None, f"the run ended before {phase}: {stderr.text()[-2000:]}"
        sent = time.monotonic()
        run.send_signal(sig)
        if ctx.hold is not None:  # once the run has taken the signal, the held step goes on
            _wait_for(lambda: stop_line in stderr.text() or run.poll() is not None, 30, stop_line)
            ctx.hold.release()
        run.wait(timeout=60)
        took = time.monotonic() - sent
        out, err = stdout.all(), stderr.all()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        ctx.hole.close()
        plain_archive.set_faults(FaultPlan())
    print(
        f"{phase} {signal.Signals(sig).name}: exit {run.returncode} {took:.1f} s after the signal"
    )
    assert run.returncode == code, f"exit {run.returncode}\n{out[-1500:]}\n{err[-3000:]}"
    assert took < STOP_LIMIT, f"{phase}: {took:.1f} s from the signal to the exit\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert stop_line in err, err[-2000:]
    assert "did not end within" not in err, err[-2000:]  # the flow's own summary, not the CLI's
    assert "Parquet: " in out, f"no summary on stdout:\n{out[-2000:]}\n{err[-2000:]}"
    if spec.after is not None:
        spec.after(ctx, out, err)


MAIN_THREAD_RUN = """
import sys
from obsharvest.flows.config import build_params
from obsharvest.flows.harvest import harvest_params

params = build_params("config/local.yaml", {
    "service.embedded": None, "service.tap_url": sys.argv[1], "ra": sys.argv[2],
    "dec": sys.argv[3], "output_url": sys.argv[4], "plan": True,
}, {})
summary = harvest_params(params)
print("interrupted:", summary.interrupted)
print("metadata written:", summary.metadata_written)
"""


@pytest.mark.timeout(240)
def test_a_flow_in_the_main_thread_takes_sigterm_as_a_stop(plain_archive, tmp_path):
    """A deployment run or a Python caller runs the flow in the main thread, where Prefect's
    SIGTERM handler raises ``TerminationSignal``: held while it sums up, the flow takes the
    signal as a stop and returns its summary (interrupted), not a crash."""
    plain_archive.set_faults(FaultPlan())
    hold = Hold("summary")
    env = {**_env(Ctx(plain_archive, plain_archive, tmp_path)), **hold.env}
    args = [plain_archive.tap_url, str(TARGET_RA), str(TARGET_DEC), str(tmp_path / "out")]
    run = subprocess.Popen(
        [sys.executable, "-c", MAIN_THREAD_RUN, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = _Reader(run.stdout), _Reader(run.stderr)
    try:
        _wait_for(lambda: hold.reached() or run.poll() is not None, READY_TIMEOUT, "the hold")
        assert run.poll() is None, stderr.text()[-2000:]
        sent = time.monotonic()
        run.send_signal(signal.SIGTERM)
        _wait_for(
            lambda: "SIGTERM: stopping" in stderr.text() or run.poll() is not None,
            30,
            "the stop to be taken",
        )
        hold.release()
        run.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    out, err = stdout.all(), stderr.all()
    assert run.returncode == 0, f"exit {run.returncode}\n{err[-3000:]}"
    assert took < STOP_LIMIT, f"{took:.1f} s"
    assert "Traceback" not in err and "Crash" not in err, err[-3000:]
    assert "interrupted: interrupted by SIGTERM" in out and "metadata written: True" in out, out
