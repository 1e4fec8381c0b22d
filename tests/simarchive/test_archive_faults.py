"""Fault injection: each fault is real on the wire, reproducible for a seed, and counted."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import pyvo
import requests
from pyvo.dal import DALRateLimitError, DALServiceError
from pyvo.dal.adhoc import DatalinkResults

from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive


@pytest.fixture(scope="module")
def faulty():
    with EmbeddedArchive(ArchiveSettings(n_visits=12)) as running:
        yield running


@pytest.fixture(autouse=True)
def no_faults_after(faulty):
    yield
    faulty.set_faults(FaultPlan())


@pytest.fixture(scope="module")
def file_url(faulty):
    service = pyvo.dal.TAPService(faulty.tap_url)
    row = service.search("SELECT TOP 1 access_url FROM ivoa.ObsCore WHERE calib_level = 2")[0]
    link = DatalinkResults.from_result_url(row["access_url"])
    return next(r for r in link if r["semantics"] == "#this")["access_url"]


def test_dropped_connection_is_the_seed_tutorials_error(faulty):
    """Seed §1.2: DALServiceError('Connection aborted.', RemoteDisconnected(...))."""
    service = pyvo.dal.TAPService(faulty.tap_url)
    job = service.submit_job("SELECT TOP 1 obs_id FROM ivoa.ObsCore")
    faulty.set_faults(FaultPlan.parse(["tap_async.drop=1"]))
    with pytest.raises(DALServiceError) as err:
        job.run()
    assert "Connection aborted." in str(err.value)
    assert "RemoteDisconnected" in str(err.value)
    assert err.value.code == 0
    faulty.set_faults(FaultPlan())
    job.run().wait(timeout=30)  # the service itself is fine: a retry succeeds
    assert job.phase == "COMPLETED"
    assert faulty.faults.report() == {}  # counters restart with each plan


def _pattern(url: str, n: int) -> list[int]:
    codes = []
    for _ in range(n):
        try:
            codes.append(requests.head(url, timeout=10).status_code)
        except requests.ConnectionError:
            codes.append(0)
    return codes


def test_faults_repeat_exactly_for_a_seed(faulty, file_url):
    plan = FaultPlan.parse(["files.drop=0.3", "files.unavailable=0.2"], seed=11)
    faulty.set_faults(plan)
    first = _pattern(file_url, 40)
    faulty.set_faults(plan)
    assert _pattern(file_url, 40) == first
    faulty.set_faults(FaultPlan.parse(["files.drop=0.3", "files.unavailable=0.2"], seed=12))
    assert _pattern(file_url, 40) != first
    assert 0 in first and 503 in first and 200 in first
    stats = requests.get(faulty.base_url + "/_stats", timeout=10).json()
    assert stats["faults"]["files"]["drop"] == sum(c == 0 for c in _pattern_seed(12))


def _pattern_seed(seed: int) -> list[int]:
    from obsharvest.simarchive.faults import draw

    out = []
    for n in range(40):
        if draw(seed, "files", n, "drop") < 0.3:
            out.append(0)
        elif draw(seed, "files", n, "unavailable") < 0.2:
            out.append(503)
        else:
            out.append(200)
    return out


def test_503_and_429_carry_retry_after(faulty):
    service = pyvo.dal.TAPService(faulty.tap_url)
    faulty.set_faults(FaultPlan.parse(["tap_sync.unavailable=1", "tap_sync.retry_after=3"]))
    with pytest.raises(DALServiceError) as err:
        service.search("SELECT TOP 1 obs_id FROM ivoa.ObsCore")
    assert err.value.code == 503
    reply = requests.get(
        faulty.tap_url + "/sync",
        params={"QUERY": "SELECT TOP 1 obs_id FROM ivoa.ObsCore"},
        timeout=10,
    )
    assert reply.headers["Retry-After"] == "3"
    faulty.set_faults(FaultPlan.parse(["tap_sync.throttled=1", "tap_sync.retry_after=2"]))
    with pytest.raises(DALRateLimitError) as limited:
        service.search("SELECT TOP 1 obs_id FROM ivoa.ObsCore")
    assert limited.value.retry_after_seconds == 2


def test_truncated_body_fails_the_download_and_range_resumes(faulty, file_url):
    whole = requests.get(file_url, timeout=30).content
    faulty.set_faults(FaultPlan.parse(["files.truncate=1"]))
    faulty.reset_stats()
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(file_url, timeout=30).content  # noqa: B018
    sent = faulty.stats()["files"]["bytes"]
    assert 0 < sent < len(whole)
    faulty.set_faults(FaultPlan())
    rest = requests.get(file_url, headers={"Range": f"bytes={sent}-"}, timeout=30)
    assert rest.status_code == 206 and whole[sent:] == rest.content


def test_latency_and_slow_first_byte(faulty, file_url):
    faulty.set_faults(FaultPlan.parse(["tap.latency=0.4"]))
    start = time.monotonic()
    requests.get(faulty.tap_url + "/availability", timeout=10)
    assert time.monotonic() - start >= 0.4
    faulty.set_faults(FaultPlan.parse(["files.slow_first_byte=1", "files.first_byte_delay=0.6"]))
    start = time.monotonic()
    with requests.get(file_url, stream=True, timeout=10) as reply:
        headers_at = time.monotonic() - start
        reply.raw.read(10)
        body_at = time.monotonic() - start
    assert headers_at < 0.5 <= body_at


def test_bandwidth_caps_per_connection_and_total(faulty, file_url):
    chunk = {"Range": "bytes=0-99999"}  # 100 kB
    faulty.set_faults(FaultPlan.parse(["files.bandwidth=250000"]))
    start = time.monotonic()
    assert len(requests.get(file_url, headers=chunk, timeout=30).content) == 100_000
    assert time.monotonic() - start >= 0.35
    faulty.set_faults(FaultPlan.parse(["total.bandwidth=400000"]))
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        sizes = list(
            pool.map(
                lambda _: len(requests.get(file_url, headers=chunk, timeout=30).content), range(4)
            )
        )
    assert sizes == [100_000] * 4
    assert time.monotonic() - start >= 0.8  # 400 kB through a 400 kB/s pipe, shared


def test_faults_can_be_set_over_http(faulty):
    reply = requests.post(faulty.base_url + "/_faults", data={"fault": "tap.drop=1"}, timeout=10)
    assert reply.status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(faulty.tap_url + "/availability", timeout=10)
    bad = requests.post(faulty.base_url + "/_faults", data={"fault": "tap.boom=1"}, timeout=10)
    assert bad.status_code == 400 and "unknown kind" in bad.text


def _this_url(faulty, access_url: str) -> str:
    link = DatalinkResults.from_result_url(access_url)
    return next(r for r in link if r["semantics"] == "#this")["access_url"]


def test_expired_urls_stay_expired_and_repeat_for_a_seed(faulty):
    """An expired signed URL is refused every time; a fresh one is a new draw, and which
    issues are expired depends only on (seed, file, issue number), not on request order."""
    service = pyvo.dal.TAPService(faulty.tap_url)
    rows = service.search("SELECT TOP 6 access_url FROM ivoa.ObsCore WHERE calib_level = 2")
    plan = FaultPlan.parse(["files.expired=0.5"], seed=3)

    def outcomes(order: list[int]) -> dict[tuple[int, int], int]:
        faulty.set_faults(plan)
        seen = {}
        for issue in range(3):
            for i in order:
                url = _this_url(faulty, rows[i]["access_url"])
                codes = {requests.head(url, timeout=10).status_code for _ in range(2)}
                assert len(codes) == 1  # an expired URL does not come back to life
                seen[(i, issue)] = codes.pop()
        return seen

    forward = outcomes(list(range(6)))
    assert set(forward.values()) == {200, 403}
    assert faulty.faults.report()["files"]["expired"] == list(forward.values()).count(403)
    assert outcomes(list(reversed(range(6)))) == forward
