"""The temporary Prefect API of a command-line run, owned by the run.

Without ``PREFECT_API_URL`` Prefect starts an ephemeral API server itself, as a child in
the same process group: Ctrl-C in a terminal then reaches the server too, which shuts
down while the run still needs it to record its end, and a run killed before Prefect's
exit handler ran left the server behind as an orphan (seen: still running 35 minutes
later). So the CLI starts the same server (Prefect's ``create_app`` under uvicorn, as
Prefect does) in its own session, away from the terminal's signals, tied to the run's
life on Linux (``PR_SET_PDEATHSIG``: the kernel stops it even if the run is SIGKILLed),
and stops it at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 90.0  # seconds for the API to answer /health (first start builds its DB)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


class TemporaryApi:
    """One uvicorn process serving Prefect's API on a free loopback port."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.url = ""
        # The server's own log: its shutdown can log a cancelled database rollback with
        # a traceback, which is not the user's business; shown only when it fails to start.
        self.log = tempfile.TemporaryFile(prefix="obsharvest-prefect-api-")  # noqa: SIM115 (lives as long as the server)

    def start(self, should_stop=lambda: False) -> str:
        import importlib.util

        spec = importlib.util.find_spec("prefect")
        app_dir = Path(spec.origin).parent.parent if spec and spec.origin else None
        port = _free_port()
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        command = [sys.executable, "-m", "uvicorn"]
        if app_dir:
            command += ["--app-dir", str(app_dir)]
        command += [
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the terminal's Ctrl-C is the run's to handle
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        atexit.register(self._stop_at_exit)
        self.url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(self.url):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the temporary Prefect API exited at start (code "
                    f"{self.process.returncode}){self._last_line()}"
                )
            if should_stop() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the temporary Prefect API did not start")
            time.sleep(0.1)
        return self.url

    def _last_line(self) -> str:
        """The last line the server wrote, for a one-line reason."""
        with contextlib.suppress(OSError):
            self.log.seek(0)
            lines = self.log.read()[-4000:].decode(errors="replace").strip().splitlines()
            if lines:
                return f": {lines[-1].strip()}"
        return ""

    def _stop_at_exit(self) -> None:
        """Logging's own exit handler was registered before this one, so it would run
        after it: flush the handlers (Prefect's sends the last logs to this API) first."""
        import logging

        logging.shutdown()
        self.stop()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def api_for_run(should_stop=lambda: False) -> Iterator[str | None]:
    """The configured API (None: nothing to do), or a temporary one for this run, set
    in ``PREFECT_API_URL`` before Prefect reads its settings."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    api = TemporaryApi()
    os.environ["PREFECT_API_URL"] = api.start(should_stop)
    # stopped at exit, not here: atexit runs handlers last-in first-out, and this one
    # was registered before Prefect's, so Prefect's last log and state writes still land
    yield api.url
