"""Object storage for real, on every store the README names: S3 (SeaweedFS), Google Cloud
Storage (fake-gcs-server) and Azure Blob (Azurite), each a server over HTTP on 127.0.0.1
(``cloud``: tests/conftest.py, tests/emulators.py). Writes, atomic publishes and aborts, a
harvest and its rerun run on all three; the S3-only parts (multipart memory, the
AwsCredentials block) on SeaweedFS."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pyarrow.dataset as ds
import pytest

from obsharvest.metadata import MetadataStore
from obsharvest.storage.download import download
from obsharvest.storage.output import Output
from obsharvest.storage.store import ObjectStore
from tests.emulators import AZURITE_KEY, Cloud
from tests.seaweed import TEST_KEY, TEST_SECRET, s3_client

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
PUBLISH = {"s3": "direct", "gcs": "direct", "azure": "copy"}  # store.py says why
SECRET = {"s3": TEST_SECRET, "azure": AZURITE_KEY}  # GCS' emulator takes no credentials


@pytest.fixture
def bucket(s3):
    name = f"test-{uuid.uuid4().hex[:12]}"
    client = s3_client(s3)
    client.create_bucket(Bucket=name)
    client.close()
    return name


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _uploads(client, bucket: str) -> list[str]:
    """Keys of multipart uploads started and neither completed nor aborted."""
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _chunks(body: bytes, size: int = MiB):
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _clear_instance_caches() -> None:
    """Forget every cached s3fs/gcsfs/adlfs instance (their options, their listings)."""
    for protocol in ("s3", "gs", "az"):
        with contextlib.suppress(ImportError, ValueError):
            fsspec.get_filesystem_class(protocol).clear_instance_cache()


def test_put_then_identical_object_is_found_and_skipped(cloud: Cloud):
    bucket = cloud.new_bucket()
    store = ObjectStore(cloud.url(bucket, "prefix"), cloud.options)
    assert store.publish == PUBLISH[cloud.kind]
    body = os.urandom(3 * MiB + 17)
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    sha = hashlib.sha256(body).hexdigest()
    key = "lsst/calexp/i/img-1.fits"

    stored = store.put_stream(key, _chunks(body), expected_size=len(body), expected_md5=md5)

    assert stored.uri == store.fs.unstrip_protocol(f"{bucket}/prefix/{key}") and not stored.skipped
    assert cloud.read(bucket, f"prefix/{key}") == body
    sidecar = cloud.read(bucket, f"prefix/{key}.sha256")
    # what `sha256sum -c` reads in the object's directory, then obsharvest's size and MD5
    assert sidecar.decode() == f"{sha}  img-1.fits\n# obsharvest: size={len(body)} md5={md5}\n"
    found = store.exists_same(key, len(body), sha)
    assert found is not None and found.skipped and found.sha256 == sha
    assert store.exists_same(key, len(body), "0" * 64) is None
    assert store.exists_same(key, len(body) + 1) is None
    # download() trusts the stored object and never contacts this (closed) port
    again = download("http://127.0.0.1:9/x.fits", store, key, expected_size=len(body))
    assert again.skipped and again.sha256 == sha
    assert cloud.keys(bucket) == [f"prefix/{key}", f"prefix/{key}.sha256"]  # no temporary


def test_existence_checks_see_writes_of_other_processes_despite_cached_listings(cloud: Cloud):
    """The back ends answer info() from a cached listing of the parent: a Dask worker or
    another run writing meanwhile must not be missed, nor a deleted object taken as present."""
    bucket = cloud.new_bucket()
    store = ObjectStore(cloud.url(bucket, "p"), cloud.options)
    one = os.urandom(1000)
    store.put_stream("d/one.fits", [one])
    assert [p.rsplit("/", 1)[-1] for p in store.fs.ls(f"{bucket}/p/d")] == [
        "one.fits",
        "one.fits.sha256",
    ]  # the listing is now cached
    other = ObjectStore(cloud.url(bucket, "p"), cloud.options)
    other.fs = cloud.fs()  # "elsewhere": an instance of its own
    two = os.urandom(2000)
    other.put_stream("d/two.fits", [two])
    assert store.exists_same("d/two.fits", len(two), hashlib.sha256(two).hexdigest())
    other.delete("d/one.fits")
    assert store.exists_same("d/one.fits", len(one)) is None


def test_a_stream_failing_midway_leaves_no_object_and_no_upload(cloud: Cloud):
    """Atomic publishes: 12 MiB sent (more than one 8 MiB part/block/chunk) and then the
    source fails. Neither while streaming nor after is anything new under a key a reader
    lists; an earlier object under the same key stays as it was."""
    bucket = cloud.new_bucket()
    store = ObjectStore(cloud.url(bucket, "fits"), cloud.options)
    old = os.urandom(100_000)
    store.put_stream("kept.fits", [old])
    listed_while_streaming = []
    client = s3_client(cloud.endpoint) if cloud.kind == "s3" else None
    in_progress = []

    def failing(key: str):
        for _ in range(12):
            yield os.urandom(MiB)
        listed_while_streaming.append(cloud.keys(bucket))
        if client is not None:
            in_progress.append(_uploads(client, bucket))
        raise ConnectionError("archive went away")

    for key in ("new.fits", "kept.fits"):
        with pytest.raises(ConnectionError):
            store.put_stream(key, failing(key), expected_size=20 * MiB)

    before = ["fits/kept.fits", "fits/kept.fits.sha256"]
    assert listed_while_streaming == [before, before]
    assert cloud.keys(bucket) == before
    assert cloud.read(bucket, "fits/kept.fits") == old
    assert store.exists_same("kept.fits", len(old), hashlib.sha256(old).hexdigest())
    if client is not None:
        assert in_progress == [["fits/new.fits"], ["fits/kept.fits"]]  # multipart had begun
        assert _uploads(client, bucket) == []  # ... and was aborted
        client.close()


def test_a_killed_runs_temporary_is_removed_once_stale(cloud: Cloud):
    """Azure's temporary key (a run killed between its upload and its copy) is listed with
    its age and removed once older than asked, the real objects kept. S3 and GCS make no
    temporaries: their stores list nothing."""
    bucket = cloud.new_bucket()
    store = ObjectStore(cloud.url(bucket, "fits"), cloud.options)
    store.put_stream("d/real.fits", [b"SIMPLE"])
    temp = f"{bucket}/fits/d/.half.fits.part-{uuid.uuid4().hex}"
    store.fs.pipe_file(temp, b"half")
    assert store.delete_partials() == []  # fresh: maybe a concurrent run's
    if store.publish == "direct":
        assert store.delete_partials(older_than=0) == []
        return
    deadline = time.monotonic() + 60
    while not (removed := store.delete_partials(older_than=2)):  # its age, as the store says
        assert time.monotonic() < deadline, "the temporary was never old enough"
        time.sleep(0.5)
    assert [p.rsplit("/", 1)[-1] for p in removed] == [temp.rsplit("/", 1)[-1]]
    store.fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(f"{bucket}/fits/d")) == [
        "real.fits",
        "real.fits.sha256",
    ]


def test_two_writers_of_one_key_at_once_both_succeed(cloud: Cloud):
    """Runs at once store one image (it serves targets of both) under one key. On Azure two
    block-list uploads of one blob collide (the first commit drops the other's staged
    blocks, the second commit fails: InvalidBlockList): the store's temporary key + copy
    keeps them apart. Either body may win, whole."""
    bucket = cloud.new_bucket()
    stores = [ObjectStore(cloud.url(bucket, "same"), cloud.options) for _ in range(2)]
    stores[1].fs = cloud.fs()  # another process, as far as caches go
    bodies = [os.urandom(20 * MiB), os.urandom(20 * MiB)]
    gate = threading.Barrier(2)
    results: list = [None, None]

    def write(i: int) -> None:
        def parts():
            for n, part in enumerate(_chunks(bodies[i])):
                if n == 10:  # one 8 MiB part/block/chunk of each is sent before either ends
                    gate.wait(60)
                yield part

        try:
            results[i] = stores[i].put_stream("img.fits", parts(), expected_size=20 * MiB)
        except Exception as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(isinstance(r, Exception) for r in results), results
    assert cloud.read(bucket, "same/img.fits") in bodies
    assert cloud.keys(bucket) == ["same/img.fits", "same/img.fits.sha256"]


_UPLOADER = textwrap.dedent(
    """
    import hashlib, json, resource, sys
    from obsharvest.storage.store import ObjectStore

    def peak_kib():  # VmHWM: peak resident set size, the figure getrusage's ru_maxrss reports
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    endpoint, bucket, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    extra = {"write_block_size": int(sys.argv[4])} if len(sys.argv) > 4 else {}
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}}
    store = ObjectStore(f"s3://{bucket}/big", options, **extra)
    store.put_stream("warm-up", [b"x"])  # client, connection pool, models loaded
    # botocore's start-up peak would hide the upload: start counting the peak from here
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = peak_kib()
    sha = hashlib.sha256()

    def chunks():
        for i in range(mib):
            block = hashlib.sha256(i.to_bytes(8, "big")).digest() * (1 << 15)  # 1 MiB
            sha.update(block)
            yield block

    stored = store.put_stream(f"{mib}.fits", chunks(), expected_size=mib << 20)
    peak = peak_kib()
    print(json.dumps({"base_kib": base, "peak_kib": peak, "sha256": stored.sha256,
                      "streamed": sha.hexdigest(), "size": stored.size,
                      "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    """
)


def _upload_in_child(s3: str, bucket: str, mib: int, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _UPLOADER, s3, bucket, str(mib), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_objects_go_multipart_in_bounded_memory(s3, bucket):
    """Peak RSS of a process uploading 120 MiB is within 1.3x of one uploading 30 MiB, and
    the upload adds a bounded amount over the process's resident size (RSS, not tracemalloc:
    s3fs and aiohttp hold parts in bytes objects and C buffers)."""
    small = _upload_in_child(s3, bucket, 30)
    large = _upload_in_child(s3, bucket, 120)
    client = s3_client(s3)
    for result, mib in ((small, 30), (large, 120)):
        assert result["size"] == mib * MiB and result["sha256"] == result["streamed"]
        head = client.head_object(Bucket=bucket, Key=f"big/{mib}.fits")
        assert head["ContentLength"] == mib * MiB
    parts = int(
        client.head_object(Bucket=bucket, Key="big/120.fits")["ETag"].strip('"').split("-")[1]
    )
    assert parts >= 120 // 9  # ~8 MiB parts, not one buffered body
    ratio = large["peak_kib"] / small["peak_kib"]
    growth_mib = (large["peak_kib"] - large["base_kib"]) / 1024
    print(
        f"peak RSS 30 MiB: {small['peak_kib'] / 1024:.0f} MiB, 120 MiB: "
        f"{large['peak_kib'] / 1024:.0f} MiB (ratio {ratio:.2f}); growth while uploading "
        f"120 MiB: {growth_mib:.0f} MiB"
    )
    assert ratio < 1.3
    # measured here: 29 MiB with 8 MiB parts; s3fs's default 50 MiB parts: 156 MiB (and a
    # ratio of 1.29, which the ratio alone would let through)
    assert growth_mib < 48
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key="big/120.fits")["Body"]
    while block := body.read(8 * MiB):
        digest.update(block)
    assert digest.hexdigest() == large["sha256"]


# -- a whole harvest into S3 -------------------------------------------------------------


def _flow_run_parameters(run_id: str) -> dict:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return (await client.read_flow_run(uuid.UUID(run_id))).parameters

    return asyncio.run(read())


def _api_logs(run_ids: list[str]) -> list[str]:
    """What the Prefect UI shows for these flow runs (and their task runs)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()

    async def read():
        ids = [uuid.UUID(r) for r in run_ids]
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
            )
        return [log.message for log in logs]

    return asyncio.run(read())


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter().format(record))


@pytest.fixture
def all_logs():
    """Every record of our loggers (DEBUG), s3fs's and Prefect's (which does not propagate
    to the root logger, so pytest's caplog misses it), with tracebacks."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's first set-up would drop handlers added before it
    handler = _Collect()
    names = ("flows", "tasks", "s3fs", "gcsfs", "adlfs", "azure", "fsspec")
    debug = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in debug]
    for lg in debug:
        lg.setLevel(logging.DEBUG)
    for name in ("", "prefect"):
        logging.getLogger(name).addHandler(handler)
    yield handler.lines
    for name in ("", "prefect"):
        logging.getLogger(name).removeHandler(handler)
    for lg, level in zip(debug, levels, strict=True):
        lg.setLevel(level)


@pytest.mark.usefixtures("prefect_harness")
def test_harvest_into_the_cloud_then_rerun_fetches_nothing(
    cloud: Cloud, archive, monkeypatch, all_logs
):
    """A harvest with the store's options in its parameters, then a rerun that reaches the
    store through the environment only (AWS_*, STORAGE_EMULATOR_HOST,
    AZURE_STORAGE_CONNECTION_STRING): every stored file is the archive's, the rerun fetches
    nothing and adds only its Parquet rows, and no secret reaches a log."""
    from obsharvest.flows.harvest import harvest_params

    from .test_harvest_flow import params_for

    bucket = cloud.new_bucket()
    output = cloud.url(bucket, "run")
    # first run: credentials in the parameters
    first = harvest_params(params_for(archive, output, output_storage_options=cloud.options))
    assert first.ok and first.stored_images > 0 and first.downloaded == first.stored_images

    fs = cloud.fs()
    rows = ds.dataset(f"{bucket}/run/metadata", filesystem=fs, format="parquet").to_table()
    rows = rows.to_pylist()
    stored = [r for r in rows if r["obsh_stored"]]
    assert len(stored) == first.stored_images and len(rows) == first.images
    fits_uri = fs.unstrip_protocol(f"{bucket}/run/fits/")
    for row in stored:
        assert row["obsh_storage_uri"].startswith(fits_uri)
        key = row["obsh_storage_uri"].removeprefix(fs.unstrip_protocol(bucket) + "/")
        data = cloud.read(bucket, key)
        source, _ = archive.files.ensure(archive._product_by_id(row["obs_publisher_did"]))
        original = Path(source).read_bytes()
        assert len(data) == row["obsh_file_size"] == len(original)
        assert hashlib.sha256(data).hexdigest() == row["obsh_sha256"]
        assert row["obsh_sha256"] == hashlib.sha256(original).hexdigest()
    keys = cloud.keys(bucket)
    assert not [k for k in keys if ".part-" in k or k.endswith(".tmp")]
    assert not [k for k in keys if ".obsharvest-probe-" in k]
    fits_keys = [k for k in keys if k.endswith(".fits")]
    assert len(fits_keys) == len(stored)
    assert {k + ".sha256" for k in fits_keys} <= set(keys)
    if cloud.kind == "s3":
        client = s3_client(cloud.endpoint)
        assert _uploads(client, bucket) == []
        client.close()

    # rerun: credentials and endpoint from the environment only
    for name, value in cloud.env.items():
        monkeypatch.setenv(name, value)
    _clear_instance_caches()
    archive.reset_stats()
    again = harvest_params(params_for(archive, output))
    stats = archive.stats()
    assert "files" not in stats and "datalink" not in stats
    assert again.ok and again.downloaded == 0 and again.reused == first.images
    now = cloud.keys(bucket)
    added = set(now) - set(keys)
    assert set(keys) <= set(now)  # nothing replaced or removed
    assert added and all(k.startswith("run/metadata/") for k in added)  # its Parquet rows
    # the rerun's rows supersede the first run's: still one row per pair
    current = MetadataStore(Output(output, cloud.options)).read()
    assert current.num_rows == len(rows)
    assert set(current.column("obsh_run_id").to_pylist()) == {again.run_id}

    # the secret reached neither the logs nor, on the environment route, the Prefect API
    api_logs = _api_logs([first.run_id, again.run_id])
    assert any("images:" in line for line in api_logs)
    assert any("images:" in line for line in all_logs), all_logs[:20]
    secret = SECRET.get(cloud.kind)
    if secret:
        assert secret not in "\n".join(all_logs + api_logs)
        assert secret in json.dumps(_flow_run_parameters(first.run_id))  # why env is better
        assert secret not in json.dumps(_flow_run_parameters(again.run_id))
    _clear_instance_caches()


@pytest.mark.usefixtures("prefect_harness")
def test_harvest_into_s3_with_an_aws_credentials_block(s3, bucket, archive, monkeypatch, all_logs):
    """The prefect-aws route: the flow names a block; the secret lives only in the block."""
    import s3fs
    from prefect_aws import AwsClientParameters, AwsCredentials

    from obsharvest.flows.harvest import harvest_params

    from .test_harvest_flow import params_for

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no other way in
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    block = f"seaweed-{bucket}"
    AwsCredentials(
        aws_access_key_id=TEST_KEY,
        aws_secret_access_key=TEST_SECRET,
        aws_client_parameters=AwsClientParameters(endpoint_url=s3),
    ).save(block, overwrite=True)
    s3fs.S3FileSystem.clear_instance_cache()

    output = f"s3://{bucket}/block-run"
    summary = harvest_params(params_for(archive, output, storage={"aws_credentials_block": block}))
    assert summary.ok and summary.stored_images > 0

    client = s3_client(s3)
    fits_keys = [k for k in _keys(client, bucket, "block-run/fits/") if k.endswith(".fits")]
    assert len(fits_keys) == summary.stored_images
    assert _keys(client, bucket, "block-run/metadata/")
    assert TEST_SECRET not in json.dumps(_flow_run_parameters(summary.run_id))
    assert TEST_SECRET not in "\n".join(all_logs + _api_logs([summary.run_id]))
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.usefixtures("prefect_harness")
def test_an_unknown_credentials_block_is_one_clear_line(tmp_path):
    from obsharvest.errors import CredentialsError
    from obsharvest.flows.harvest import preflight
    from obsharvest.flows.params import HarvestParams

    params = HarvestParams.model_validate(
        {
            "service": {"tap_url": "http://127.0.0.1:9/tap"},
            "ra": 62,
            "dec": -37,
            "output_url": "s3://bucket/x",
            "storage": {"aws_credentials_block": "no-such-block"},
        }
    )
    with pytest.raises(CredentialsError, match="no AwsCredentials block named 'no-such-block'"):
        preflight(params)


def test_the_servers_bind_loopback_only(cloud: Cloud):
    """Every port the store's test server opened is on 127.0.0.1 (SeaweedFS opens eight)."""
    import psutil

    port = cloud.endpoint.rsplit(":", 1)[1]
    ours = [
        p
        for p in psutil.Process().children(recursive=True)
        if any(port in a for a in p.cmdline()) and p.is_running()
    ]
    assert len(ours) == 1, [p.cmdline() for p in ours]
    listening = [c.laddr for c in ours[0].net_connections("tcp") if c.status == "LISTEN"]
    assert len(listening) >= (8 if cloud.kind == "s3" else 1)
    assert {a.ip for a in listening} == {"127.0.0.1"}
