"""A real ``prefect server start`` on 127.0.0.1 for the operations tests (not the harness):
deployments, workers, schedules and the UI need the genuine server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    url: str  # UI root
    api: str
    env: dict[str, str]

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def _request(self, method: str, path: str, body=None, retries: int = 10):
        """One API call; a 503 (the server's SQLite busy under load) is tried again."""
        for attempt in range(retries):
            reply = requests.request(method, self.api + path, json=body, timeout=30)
            if reply.status_code != 503 or attempt == retries - 1:
                reply.raise_for_status()
                return reply.json() if reply.content else None
            time.sleep(1)
        return None

    def get(self, path: str):
        return self._request("GET", path)

    def post(self, path: str, body: dict | list):
        return self._request("POST", path, body)

    def patch(self, path: str, body: dict, retries: int = 10):
        self._request("PATCH", path, body, retries=retries)

    def wait_run(self, run_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{run_id}")
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} did not finish in {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[PrefectServer]:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_API_KEY", None)
    log = open(home / "server.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=home,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{api}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                raise AssertionError((home / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        else:
            raise AssertionError("prefect server did not become healthy in 120 s")
        yield PrefectServer(f"http://127.0.0.1:{port}", api, env)
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def background(cmd: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        _stop(proc)
        log.close()
