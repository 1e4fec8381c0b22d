"""Never hang: a service that stops answering ends the run with a clear failure, in bounded time.

The embedded archive holds connections open without answering (``stall``), or after half a
body (``stall_body``), as real servers do. Each test sets small timeouts and a small retry
budget and checks that the harvest ends by itself, within a bound derived from them, with
a failure that names what stalled. Every fault is seeded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from obsharvest.flows.harvest import harvest_params
from obsharvest.net.http import ServiceSession
from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

from .test_harvest_flow import params_for

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_harness")]

READ, CONNECT, ATTEMPTS, MAX_WAIT = 1.0, 1.0, 2, 0.1
RETRY = {
    "read_timeout": READ,
    "connect_timeout": CONNECT,
    "attempts": ATTEMPTS,
    "deadline_seconds": 5.0,
    "initial_wait": 0.05,
    "max_wait": MAX_WAIT,
}
PYVO_POLL_TIMEOUT = 10.0  # pyvo's own timeout on a UWS phase read (DEFAULT_JOB_POLL_TIMEOUT)
# what a harvest takes with no fault at all (flow and task runs, queries, Parquet), generously
OVERHEAD = 15.0
LOG_LINE_LIMIT = 1000


def budget(stalls: float) -> float:
    """The longest a run may take when ``stalls`` read timeouts run out one after another
    in each of the retry policy's attempts (plus its backoff and the run's own time)."""
    return OVERHEAD + ATTEMPTS * (stalls * READ + MAX_WAIT)


@pytest.fixture(scope="module")
def stalling():
    """A small archive whose faults each test sets; held connections end with it."""
    with EmbeddedArchive(ArchiveSettings(n_visits=20)) as archive:
        yield archive


def _harvest(archive, tmp_path, faults: list[str], *, seed: int, **extra):
    archive.set_faults(FaultPlan.parse(faults, seed=seed))
    params = params_for(archive, tmp_path, retry=RETRY, **extra)
    started = time.monotonic()
    try:
        summary = harvest_params(params)
        took = time.monotonic() - started
        injected = archive.faults.report()
    finally:
        archive.set_faults(FaultPlan())  # the next test starts from a healthy archive
    return summary, took, injected


def _all_failed_with(summary, *words: str) -> None:
    assert not summary.ok and summary.failures
    for what, reason in summary.failures:
        assert all(w in reason for w in words), (what, reason)
        assert "\n" not in reason and len(reason) < 600


# -- the session ------------------------------------------------------------------------


@pytest.mark.timeout(10, func_only=True)
def test_the_session_times_out_every_request_and_stretches_uws_blocking_polls():
    session = ServiceSession(None, [], timeout=(2.0, 5.0))
    assert session.timeout_for("http://x/tap/sync", None) == (2.0, 5.0)
    assert session.timeout_for("http://x/tap/sync", 30) == (30.0, 30.0)  # asked: kept
    assert session.timeout_for("http://x/tap/sync", (1, None)) == (1.0, 5.0)
    # UWS 1.1 blocking poll: the server may rightly say nothing for WAIT seconds
    poll = "http://x/tap/async/1?WAIT=10&PHASE=EXECUTING"
    assert session.timeout_for(poll, None) == (2.0, 15.0)
    assert session.timeout_for(poll, 12) == (12.0, 15.0)
    # pyvo's wait(): WAIT=-1 (until the phase changes) with its own bounded timeout
    assert session.timeout_for("http://x/tap/async/1?WAIT=-1", 600) == (600.0, 600.0)


@pytest.mark.timeout(30, func_only=True)
def test_a_request_to_a_server_that_never_answers_ends_after_the_read_timeout(stalling):
    import requests

    stalling.set_faults(FaultPlan.parse(["tap.stall=1"], seed=3))
    session = ServiceSession(None, [stalling.tap_url], timeout=(CONNECT, READ))
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        session.get(stalling.tap_url + "/capabilities")  # no timeout given: the session's
    assert time.monotonic() - started < READ + 2
    stalling.set_faults(FaultPlan())


@pytest.mark.timeout(30, func_only=True)
def test_a_stalled_soda_cutout_is_a_transient_failure_after_the_read_timeout(stalling, tmp_path):
    from obsharvest.access.soda import CutoutRequest, fetch_cutout
    from obsharvest.errors import TransientReadError
    from obsharvest.net.retry import is_transient
    from obsharvest.storage.store import ObjectStore

    stalling.set_faults(FaultPlan.parse(["cutout.stall=1"], seed=4))
    request = CutoutRequest(stalling.soda_url, "ivo://x/y?z", 62.0, -37.0, 0.01)
    session = ServiceSession(None, [stalling.tap_url], timeout=(CONNECT, READ))
    store = ObjectStore(str(tmp_path))
    try:
        started = time.monotonic()
        with pytest.raises(TransientReadError, match="timed out") as caught:
            fetch_cutout(request, store, "c/t.fits", session=session)  # the session's timeout
        assert time.monotonic() - started < READ + 2
        assert is_transient(caught.value)
        with pytest.raises(TransientReadError, match="timed out"):  # or an explicit one
            fetch_cutout(request, store, "c/t.fits", timeout=(CONNECT, READ))
        assert time.monotonic() - started < 2 * (READ + 2)
        assert stalling.faults.report()["cutout"]["stall"] == 2
    finally:
        stalling.set_faults(FaultPlan())
    assert not list(tmp_path.rglob("*.fits"))


@pytest.mark.timeout(10, func_only=True)
def test_object_stores_get_the_timeouts_the_user_did_not_set():
    from obsharvest.storage.store import ObjectStore, with_timeouts

    t = (2.0, 7.0)
    s3 = with_timeouts("s3://b/p", {"key": "k", "config_kwargs": {"read_timeout": 30}}, t)
    assert s3 == {"key": "k", "config_kwargs": {"connect_timeout": 2.0, "read_timeout": 30}}
    gcs = with_timeouts("gs://b/p", {}, t)["requests_timeout"]
    assert (gcs.total, gcs.sock_connect, gcs.sock_read) == (None, 2.0, 7.0)
    assert with_timeouts("gs://b/p", {"requests_timeout": 5}, t) == {"requests_timeout": 5}
    assert with_timeouts("abfs://c/p", {"read_timeout": 9}, t) == {
        "read_timeout": 9,
        "connection_timeout": 2,
    }
    http = with_timeouts("https://h/p", {"client_kwargs": {"trust_env": True}}, t)
    assert http["client_kwargs"]["trust_env"] and http["client_kwargs"]["timeout"].sock_read == 7
    for local in ("/data/x", "file:///data/x", "memory://x"):
        assert with_timeouts(local, {"auto_mkdir": True}, t) == {"auto_mkdir": True}
    assert with_timeouts("s3://b/p", {"anon": True}, None) == {"anon": True}
    # what s3fs is given: botocore's Config sees both (no network is touched here)
    store = ObjectStore(
        "s3://bucket/p",
        {
            "key": "k",
            "secret": "s",
            "endpoint_url": "http://127.0.0.1:9",
            "skip_instance_cache": True,
        },
        timeout=t,
    )
    assert store.fs.config_kwargs == {"connect_timeout": 2.0, "read_timeout": 7.0}


# -- whole harvests ---------------------------------------------------------------------


@pytest.mark.timeout(90, func_only=True)
def test_a_stalled_sync_tap_query_fails_the_targets_clearly(stalling, tmp_path):
    summary, took, injected = _harvest(
        stalling, tmp_path, ["tap_sync.stall=1"], seed=11, query={"mode": "sync"}
    )
    _all_failed_with(summary, "sync TAP query", "timed out")
    assert [what for what, _ in summary.failures] == ["target seed"]
    assert injected["tap_sync"]["stall"] == ATTEMPTS
    assert took < budget(stalls=1), took


@pytest.mark.timeout(90, func_only=True)
def test_a_stalled_async_tap_submission_fails_the_targets_clearly(stalling, tmp_path):
    summary, took, _ = _harvest(
        stalling,
        tmp_path,
        ["tap_async.stall=1"],
        seed=12,
        query={"mode": "async", "deadline_seconds": 5},
    )
    _all_failed_with(summary, "async TAP query", "timed out")
    assert took < budget(stalls=1), took


@pytest.mark.timeout(120, func_only=True)
def test_an_async_tap_job_that_stalls_after_it_was_accepted_fails_clearly(tmp_path):
    """The job is created and started (it runs for a few seconds), then every request
    stalls: the phase reads and blocking polls, then the resubmission. Each one ends by its
    own timeout (pyvo's phase read carries its own, ``PYVO_POLL_TIMEOUT``)."""
    with EmbeddedArchive(ArchiveSettings(n_visits=20, query_delay=3.0)) as archive:
        started_job = threading.Event()
        stop = threading.Event()

        def stall_once_started() -> None:  # waits on the archive's own request counters
            while not stop.is_set():
                posts = archive.stats().get("tap_async", {}).get("methods", {}).get("POST", 0)
                if posts >= 1:  # the job was created running (PHASE=RUN in that POST)
                    archive.set_faults(FaultPlan.parse(["tap_async.stall=1"], seed=13))
                    started_job.set()
                    return
                stop.wait(0.01)

        watcher = threading.Thread(target=stall_once_started, daemon=True)
        watcher.start()
        # the first stalled request may be one pyvo reads with its own 10 s timeout (the
        # created job, a phase): the retry deadline leaves room for the resubmission
        retry = {**RETRY, "deadline_seconds": PYVO_POLL_TIMEOUT + 10}
        params = params_for(
            archive, tmp_path, retry=retry, query={"mode": "async", "deadline_seconds": 5}
        )
        began = time.monotonic()
        try:
            summary = harvest_params(params)
        finally:
            stop.set()
            watcher.join(5)
        took = time.monotonic() - began
        injected = archive.faults.report()
    assert started_job.is_set()
    _all_failed_with(summary, "async TAP query", "timed out")
    assert injected["tap_async"]["stall"] >= ATTEMPTS
    # worst case, first attempt: a blocking poll (WAIT up to the query deadline, + the read
    # timeout), then pyvo's phase read with its own timeout; second: the submission stalls
    worst = (5 + READ) + PYVO_POLL_TIMEOUT + READ
    assert took < OVERHEAD + worst + ATTEMPTS * MAX_WAIT, took


@pytest.mark.timeout(90, func_only=True)
def test_a_stalled_datalink_service_fails_every_image_clearly(stalling, tmp_path):
    summary, took, injected = _harvest(stalling, tmp_path, ["datalink.stall=1"], seed=14)
    _all_failed_with(summary, "Datalink", "timed out")
    assert summary.images and len(summary.failures) == summary.images
    assert injected["datalink"]["stall"] >= ATTEMPTS
    assert took < budget(stalls=1), took


@pytest.mark.timeout(90, func_only=True)
def test_a_stalled_header_read_fails_its_images_clearly(stalling, tmp_path):
    summary, took, injected = _harvest(stalling, tmp_path, ["files.stall=1"], seed=15)
    _all_failed_with(summary, "reading", "ReadTimeout")
    assert len(summary.failures) == summary.images
    assert not list(tmp_path.rglob("*.fits"))
    assert injected["files"]["stall"] >= ATTEMPTS * summary.images
    # the images' header reads run in parallel, each stalling once per attempt
    assert took < budget(stalls=1), took


@pytest.mark.timeout(180, func_only=True)
def test_a_download_that_stalls_mid_body_is_retried_then_reported(stalling, tmp_path):
    """Half the file arrives, then nothing: the read timeout ends the transfer, it is
    resumed (``Range``) and retried, each time stalling again, then reported."""
    summary, took, injected = _harvest(
        stalling,
        tmp_path,
        ["files.stall_body=1"],
        seed=16,
        verification={"mode": "off"},  # no header reads: the downloads meet the stall
        concurrency={"download_workers": 8, "verify_workers": 8},
    )
    _all_failed_with(summary, "cut off", "Read timed out")
    assert len(summary.failures) == summary.images
    assert not [p for p in tmp_path.rglob("*.fits")]  # nothing partial under a final key
    assert injected["files"]["stall_body"] >= ATTEMPTS * summary.images
    # per image and attempt: the first GET and up to 3 resumes, each stalling once
    assert took < budget(stalls=1 + 3), took


# -- failure logs -------------------------------------------------------------------------


def _api_log_lines(flow_run_id: str) -> list[str]:
    """Every line the Prefect API holds for the flow run (task runs' logs included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # what the handlers still hold, sent and stored
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])),
                limit=200,
                offset=offset,
            )
            for log in page:
                lines += log.message.splitlines() or [""]
            if len(page) < 200:
                return lines
            offset += len(page)


@pytest.mark.timeout(120, func_only=True)
def test_failure_logs_are_one_short_line_per_image_and_no_stray_traceback(
    stalling, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    summary, _, _ = _harvest(stalling, tmp_path, ["files.stall=1"], seed=17)
    assert not summary.ok and len(summary.failures) == summary.images > 1
    captured = caplog.text.splitlines()
    api = _api_log_lines(summary.run_id)
    assert api, "no logs reached the Prefect API"
    for where, lines in (("caplog", captured), ("Prefect API", api)):
        too_long = [line[:200] + "…" for line in lines if len(line) > LOG_LINE_LIMIT]
        assert not too_long, (where, too_long)
        assert not [line for line in lines if line.strip() == "NoneType: None"], where
        assert not [line for line in lines if "ImageOutcome(" in line], where
        # one line per failed image, naming it, and one summary line for the batch
        for image, _ in summary.failures:
            assert sum(f"image {image} failed:" in line for line in lines) >= 1, (where, image)
        assert any(f"{summary.images} images: 0 stored" in line for line in lines), where
