"""Datalink, signed URLs and FITS range reads against the embedded archive.

pyvo's DatalinkResults, astropy's FITS reader over fsspec and fsspec's HTTP file system
are used unmodified, over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import time
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import fsspec
import pytest
import pyvo
import requests
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from pyvo.dal.adhoc import DatalinkQuery, DatalinkResults

from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.conftest import TARGET_DEC, TARGET_RA

I_CALEXP_QUERY = (
    "SELECT * FROM ivoa.ObsCore "
    f"WHERE CONTAINS(POINT('ICRS', {TARGET_RA}, {TARGET_DEC}), s_region) = 1 "
    "AND lsst_band = 'i' AND calib_level = 2"
)


@pytest.fixture(scope="module")
def calexps(archive):
    return pyvo.dal.TAPService(archive.tap_url).search(I_CALEXP_QUERY)


def this_row(datalink: DatalinkResults):
    rows = [r for r in datalink if r["semantics"] == "#this"]
    assert len(rows) == 1
    return rows[0]


def test_datalink_this_row_is_a_signed_url_on_another_host(calexps, archive):
    datalink = DatalinkResults.from_result_url(calexps[0]["access_url"])
    row = this_row(datalink)
    url = urlparse(row["access_url"])
    assert url.hostname == "localhost" and urlparse(archive.tap_url).hostname == "127.0.0.1"
    assert {"Signature", "Expires"} <= set(parse_qs(url.query))
    assert row["content_type"] == "application/fits"
    body = requests.get(row["access_url"], timeout=30).content
    assert len(body) == row["content_length"]
    assert body.startswith(b"SIMPLE  =")


def test_wcs_from_range_reads_matches_truth(calexps, archive):
    """Seed §4.1.4 done the cheap way: only header bytes travel, verdicts match the truth."""
    truth = archive.truth(TARGET_RA, TARGET_DEC)
    target = SkyCoord(TARGET_RA, TARGET_DEC, unit="deg")
    verdicts = []
    for row in calexps:
        link = this_row(DatalinkResults.from_result_url(row["access_url"]))
        before = archive.stats().get("files", {}).get("bytes", 0)
        with fits.open(
            link["access_url"],
            use_fsspec=True,
            lazy_load_hdus=True,
            fsspec_kwargs={"block_size": 32768},
        ) as hdul:
            header = hdul[1].header
        read = archive.stats()["files"]["bytes"] - before
        assert read < link["content_length"] / 4, "header read must not fetch the pixels"
        assert header["EXTNAME"] == "IMAGE"
        inside = bool(WCS(header).footprint_contains(target))
        assert inside == (row["obs_publisher_did"] in truth)
        verdicts.append(inside)
    assert True in verdicts and False in verdicts  # the s_region padding problem, reproduced


def test_range_requests_and_etag(calexps):
    url = this_row(DatalinkResults.from_result_url(calexps[0]["access_url"]))["access_url"]
    head = requests.head(url, timeout=10)
    size = int(head.headers["Content-Length"])
    assert head.headers["Accept-Ranges"] == "bytes" and head.status_code == 200

    first = requests.get(url, headers={"Range": "bytes=0-2879"}, timeout=10)
    assert first.status_code == 206
    assert first.headers["Content-Range"] == f"bytes 0-2879/{size}"
    assert len(first.content) == 2880 and first.content.startswith(b"SIMPLE")

    tail = requests.get(url, headers={"Range": "bytes=-100"}, timeout=10)
    assert tail.status_code == 206 and len(tail.content) == 100

    whole = requests.get(url, timeout=30)
    assert whole.content[:2880] == first.content and whole.content[-100:] == tail.content
    assert head.headers["ETag"].strip('"') == hashlib.md5(whole.content).hexdigest()

    beyond = requests.get(url, headers={"Range": f"bytes={size}-"}, timeout=10)
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"

    with fsspec.open(url, "rb", block_size=4096) as fh:
        fh.seek(size - 10)
        assert fh.read() == whole.content[-10:]


def test_tampered_signature_is_refused(calexps):
    url = this_row(DatalinkResults.from_result_url(calexps[0]["access_url"]))["access_url"]
    parts = urlparse(url)
    query = parse_qs(parts.query)
    query["Expires"] = [str(int(query["Expires"][0]) + 86400)]  # try to extend the URL
    forged = urlunparse(parts._replace(query=urlencode({k: v[0] for k, v in query.items()})))
    assert requests.get(forged, timeout=10).status_code == 403
    other_file = url.replace(".fits?", "x.fits?")
    assert requests.get(other_file, timeout=10).status_code == 403
    unsigned = urlunparse(parts._replace(query=""))
    assert requests.get(unsigned, timeout=10).status_code == 403


def test_datalink_many_ids_in_one_post(calexps, archive):
    ids = [parse_qs(urlparse(u).query)["ID"][0] for u in calexps["access_url"][:3]]
    results = DatalinkQuery(archive.datalink_url, id=[*ids, "butler://dp02/not-a-dataset"]).execute(
        post=True
    )
    assert sorted(set(results["ID"])) == sorted([*ids, "butler://dp02/not-a-dataset"])
    for ident in ids:
        links = results.clone_byid(ident)
        assert this_row(links)["content_length"] > 0
        assert [r["service_def"] for r in links if r["semantics"] == "#cutout"] == ["cutout-sync"]
    bad = [r for r in results if r["ID"] == "butler://dp02/not-a-dataset"]
    assert len(bad) == 1 and "NotFoundFault" in bad[0]["error_message"]


def test_expired_signed_url_is_refused():
    lifetime = 8  # long enough for a loaded machine to use the URL before it expires
    with EmbeddedArchive(ArchiveSettings(n_visits=12, url_lifetime=lifetime)) as short:
        service = pyvo.dal.TAPService(short.tap_url)
        row = service.search("SELECT TOP 1 access_url FROM ivoa.ObsCore WHERE calib_level = 2")[0]
        url = this_row(DatalinkResults.from_result_url(row["access_url"]))["access_url"]
        signed_by = time.monotonic()  # the URL was signed before this
        assert requests.head(url, timeout=30).status_code == 200
        time.sleep(max(0.0, signed_by + lifetime + 0.1 - time.monotonic()))
        expired = requests.get(url, timeout=10)
        assert expired.status_code == 403 and b"expired" in expired.content
        fresh = this_row(DatalinkResults.from_result_url(row["access_url"]))["access_url"]
        assert requests.head(fresh, timeout=10).status_code == 200


def test_stats_count_bytes_per_endpoint(archive):
    requests.post(archive.base_url + "/_stats/reset", timeout=10)
    requests.get(archive.tap_url + "/availability", timeout=10)
    stats = requests.get(archive.base_url + "/_stats", timeout=10).json()["endpoints"]
    assert stats["tap_availability"]["requests"] == 1
    assert stats["tap_availability"]["bytes"] > 0


def test_datalink_content_length_is_made_once_per_product_and_stays_exact(
    calexps, archive, monkeypatch
):
    """Datalink gives every link's content_length from the headers alone; the archive
    keeps it per product (building the headers was most of its CPU), and a kept size is
    still the size of the file served."""
    from obsharvest.simarchive.sky import fitsgen

    made = []
    real = fitsgen.fits_size
    monkeypatch.setattr(fitsgen, "fits_size", lambda ctx: made.append(1) or real(ctx))
    product = archive._product_by_id(str(calexps[1]["obs_publisher_did"])).id
    sky = archive.sky
    sky._sizes.pop(product, None)
    first, again = sky.fits_size(product), sky.fits_size(product)
    assert made == [1] and first == again
    row = this_row(DatalinkResults.from_result_url(calexps[1]["access_url"]))
    assert row["content_length"] == first
    assert len(requests.get(row["access_url"], timeout=30).content) == first
