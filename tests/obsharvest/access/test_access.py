"""The access layer, read against the standards: access_format, service descriptors,
ranged reads without HEAD, and Datalink services that answer fewer IDs than asked.

Real HTTP against ``CraftedServer`` on 127.0.0.1: it answers exactly what each case
needs (a service that ignores Range, one that never answers, one that answers only the
first of several IDs), which no honest archive does on demand.
"""

from __future__ import annotations

import io
import threading
from urllib.parse import parse_qsl

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import parse as parse_votable

from obsharvest.access import kinds as access
from obsharvest.access.datalink import DatalinkResolver
from obsharvest.access.kinds import (
    Kind,
    LinkRequest,
    kind_of,
    link_request,
    service_descriptors,
    sniff,
)
from obsharvest.access.ranged import RangedHttpFile
from obsharvest.errors import (
    NotFoundError,
    ReadError,
    TransientReadError,
    UnauthorizedError,
    UrlExpiredError,
)
from obsharvest.net.retry import RetryPolicy
from obsharvest.verify.containment import read_wcs_header
from tests.crafted_server import CraftedServer, Reply, datalink

NO_RETRY = RetryPolicy(attempts=1)


def _image_in_hdu1(nx: int = 64, ny: int = 48) -> bytes:
    """An empty primary HDU and the image with its TAN WCS in HDU 1, as many archives do."""
    header = fits.Header()
    header.update(
        CTYPE1="RA---TAN",
        CTYPE2="DEC--TAN",
        CRVAL1=62.0,
        CRVAL2=-37.0,
        CRPIX1=nx / 2,
        CRPIX2=ny / 2,
        CDELT1=-0.0001,
        CDELT2=0.0001,
    )
    hdus = fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(np.zeros((ny, nx), np.float32), header, name="IMAGE")]
    )
    buffer = io.BytesIO()
    hdus.writeto(buffer)
    return buffer.getvalue()


IMAGE = _image_in_hdu1()
BIG = IMAGE + b"\0" * (4 * 2**20)  # a file far larger than a header read


@pytest.fixture(scope="module")
def server():
    with CraftedServer() as srv:
        yield srv


# -- access_format and first replies ---------------------------------------------------


@pytest.mark.parametrize(
    ("access_format", "kind"),
    [
        ("application/x-votable+xml;content=datalink", Kind.DATALINK),
        ("application/x-votable+xml; content=datalink", Kind.DATALINK),
        ('Application/X-VOTable+XML;Content="DataLink"', Kind.DATALINK),
        ("image/fits", Kind.FILE),
        ("application/fits", Kind.FILE),
        ("image/x-fits", Kind.FILE),
        ("application/x-votable+xml", Kind.UNKNOWN),  # a VOTable, but not a links document
        ("", Kind.UNKNOWN),
        (None, Kind.UNKNOWN),
        ("text/html", Kind.UNKNOWN),
    ],
)
def test_access_format_decides_the_kind(access_format, kind):
    assert kind_of(access_format) == kind


def test_sniff_first_reply():
    assert sniff("application/octet-stream", IMAGE[:2880]) == Kind.FILE
    assert sniff(None, IMAGE[:2880]) == Kind.FILE
    votable = datalink([]).body
    assert sniff("text/xml", votable) == Kind.DATALINK
    assert sniff("application/x-votable+xml;content=datalink", votable) == Kind.DATALINK
    assert sniff("text/html", b"<!DOCTYPE html><html>") == Kind.UNKNOWN
    # a server that labels FITS as FITS but sends something else is not trusted
    assert sniff("image/fits", b"<html>oops</html>") == Kind.UNKNOWN


def test_service_descriptors_map_ref_to_the_column_name():
    text = """<?xml version="1.0"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE type="results"><TABLE>
<FIELD name="obs_publisher_did" ID="col_did" datatype="char" arraysize="*"/>
<FIELD name="access_url" datatype="char" arraysize="*"/>
<DATA><TABLEDATA><TR><TD>ivo://x/a</TD><TD>http://x/a</TD></TR></TABLEDATA></DATA>
</TABLE></RESOURCE>
<RESOURCE type="meta" utype="adhoc:service" name="links">
<PARAM name="standardID" datatype="char" arraysize="*"
  value="ivo://ivoa.net/std/DataLink#links-1.1"/>
<PARAM name="accessURL" datatype="char" arraysize="*" value="http://x/dl/links"/>
<GROUP name="inputParams">
<PARAM name="ID" datatype="char" arraysize="*" ref="col_did" value=""/>
<PARAM name="RESPONSEFORMAT" datatype="char" arraysize="*" value="votable"/>
</GROUP></RESOURCE>
<RESOURCE type="meta" utype="adhoc:service">
<PARAM name="standardID" datatype="char" arraysize="*" value="ivo://ivoa.net/std/SODA#sync-1.0"/>
<PARAM name="accessURL" datatype="char" arraysize="*" value="http://x/soda"/>
<GROUP name="inputParams"><PARAM name="ID" datatype="char" arraysize="*" value=""/></GROUP>
</RESOURCE>
</VOTABLE>"""
    found = service_descriptors(parse_votable(io.BytesIO(text.encode())))
    links = access.find(found, access.DATALINK_STANDARD)
    soda = access.find(found, access.SODA_SYNC_STANDARD)
    assert links.access_url == "http://x/dl/links"
    assert links.id_column == "obs_publisher_did"  # the ref was the FIELD's ID, not its name
    assert links.endpoint == "http://x/dl/links?RESPONSEFORMAT=votable"
    assert soda.id_column is None  # an ID param without ref names no column
    assert access.ServiceDescriptor.from_meta(links.to_meta()) == links


def test_link_request_prefers_the_descriptor_then_the_id_then_the_url_as_given():
    assert link_request("http://x/links?ID=a", "http://x/dl", "b") == LinkRequest(
        "http://x/dl", "b"
    )
    assert link_request("http://x/links?ID=a%2Fb&X=1") == LinkRequest("http://x/links?X=1", "a/b")
    product = "http://x/getproduct/coll/img.fits"
    assert link_request(product) == LinkRequest(product, None)
    with pytest.raises(ValueError, match="no access_url"):
        link_request("")


# -- ranged reads ----------------------------------------------------------------------


def test_header_read_uses_range_gets_and_never_head(server):
    url = server.route("/r/ranged.fits", Reply(body=BIG, ranges=True))
    before = len(server.requests)
    hdu, header, shape = read_wcs_header(url, block_size=8192)
    assert (hdu, shape) == (1, (64, 48))
    assert header["CTYPE1"] == "RA---TAN"
    sent = server.requests[before:]
    assert [r.method for r in sent] == ["GET"] * len(sent)
    assert all(r.headers.get("range", "").startswith("bytes=") for r in sent)
    assert len(sent) <= 2  # 8 kB holds the primary header and the image header


def test_size_comes_from_content_range(server):
    url = server.route("/r/size.fits", Reply(body=BIG, ranges=True))
    reader = RangedHttpFile(url, block_size=4096)
    assert reader.size == len(BIG) and reader.ranges and reader.requests == 1
    assert reader.read_range(len(BIG) - 10, 100) == BIG[-10:]


def test_server_ignoring_range_is_read_only_as_far_as_needed(server):
    url = server.route("/r/norange.fits", Reply(body=BIG, ranges=False))
    reader = RangedHttpFile(url, block_size=8192, max_skip=2**20)
    assert not reader.ranges and reader.size == len(BIG)
    assert reader.read_range(0, 2880) == BIG[:2880]
    hdu, _, shape = read_wcs_header(url, block_size=8192)
    assert (hdu, shape) == (1, (64, 48))
    with pytest.raises(ReadError, match="ignores HTTP Range"):
        reader.read_range(3 * 2**20, 10)  # past max_skip: never download the file for it


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, UnauthorizedError),
        (403, UrlExpiredError),
        (404, NotFoundError),
        (410, NotFoundError),
        (503, TransientReadError),
        (429, TransientReadError),
        (400, ReadError),
    ],
)
def test_status_becomes_the_right_error(server, status, error):
    url = server.route(f"/r/status-{status}", Reply(status, b"no", {"Retry-After": "3"}))
    with pytest.raises(error) as info:
        RangedHttpFile(url)
    assert info.value.status == status
    if error is TransientReadError:
        assert info.value.retry_after == 3.0


def test_a_stalled_reply_times_out(server):
    release = threading.Event()

    def stall(_request) -> Reply:
        release.wait(30)
        return Reply(body=IMAGE, ranges=True)

    url = server.route("/r/stall.fits", stall)
    try:
        with pytest.raises(TransientReadError, match="Timeout"):
            RangedHttpFile(url, timeout=(2.0, 0.5))
    finally:
        release.set()


# -- Datalink services -----------------------------------------------------------------


def _ids(request) -> list[str]:
    pairs = parse_qsl(request.body.decode()) if request.method == "POST" else []
    pairs += parse_qsl(request.query)
    return [v for k, v in pairs if k.upper() == "ID"]


def _links_service(server: CraftedServer, path: str, *, answer: int | None, shuffle=False):
    """A links endpoint answering at most ``answer`` IDs per request (None: all)."""

    def route(request) -> Reply:
        ids = _ids(request)[: answer or None]
        rows = []
        for i in ids:
            rows.append({"ID": i, "semantics": "#progenitor", "access_url": f"http://p/{i}"})
            rows.append(
                {
                    "ID": i,
                    "semantics": "#this",
                    "access_url": server.url(f"/files/{i}.fits"),
                    "content_type": "image/fits",
                    "content_length": 1234,
                }
            )
        if shuffle:  # rows of different IDs interleaved, out of order
            rows = rows[::-1][::2] + rows[::-1][1::2]
        return datalink(rows)

    return server.route(path, route)


@pytest.mark.parametrize(("answer", "requests_made"), [(None, 1), (1, 5), (2, 3)])
def test_multi_id_replies_are_checked_and_the_limit_learned(server, answer, requests_made):
    endpoint = _links_service(server, f"/dl/limit-{answer}", answer=answer)
    resolver = DatalinkResolver(server_session(), batch_size=5, workers=1, retry=NO_RETRY)
    before = server.hits[f"/dl/limit-{answer}"]
    wanted = {f"k{i}": LinkRequest(endpoint, f"id{i}") for i in range(5)}
    links = resolver.resolve(wanted)
    assert {k: link.url for k, link in links.items()} == {
        f"k{i}": server.url(f"/files/id{i}.fits") for i in range(5)
    }
    assert all(link.content_length == 1234 and not link.error for link in links.values())
    assert server.hits[f"/dl/limit-{answer}"] - before == requests_made
    assert resolver.ids_per_request(endpoint) == (answer or 5)


def test_rows_out_of_order_are_grouped_by_id(server):
    endpoint = _links_service(server, "/dl/shuffled", answer=None, shuffle=True)
    resolver = DatalinkResolver(server_session(), batch_size=10, workers=1, retry=NO_RETRY)
    links = resolver.resolve({f"k{i}": LinkRequest(endpoint, f"id{i}") for i in range(4)})
    assert {k: link.url for k, link in links.items()} == {
        f"k{i}": server.url(f"/files/id{i}.fits") for i in range(4)
    }


def test_access_url_without_id_is_used_as_given_and_redirects_followed(server):
    doc = datalink(
        [
            {
                "ID": "ivo://x/normalised?img",  # not a string we could have guessed
                "semantics": "#this",
                "access_url": server.url("/files/img.fits"),
                "content_type": "image/fits",
                "content_length": 99,
            }
        ]
    )
    server.route("/dl/doc-for-img", doc)
    product = server.route(
        "/getproduct/coll/img.fits", Reply(303, headers={"Location": "/dl/doc-for-img"})
    )
    resolver = DatalinkResolver(server_session(), workers=1, retry=NO_RETRY)
    links = resolver.resolve({"k": product})
    assert links["k"].url == server.url("/files/img.fits")
    assert links["k"].content_length == 99
    assert server.requests[-1].method == "GET" and server.requests[-1].path == "/dl/doc-for-img"


def server_session():
    import requests

    return requests.Session()


def test_a_parse_that_meets_the_interpreters_ast_race_is_parsed_again(server, monkeypatch):
    """CPython 3.11 (gh-106905): numpy's dtype parsing on two threads at once can raise
    SystemError in either; the Datalink reply is fine, so it is retried, not refused."""
    from obsharvest.access import datalink as datalink_module

    endpoint = _links_service(server, "/dl/race", answer=None)
    calls = []

    def racing(source):
        calls.append(1)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=93, after=86)")
        return parse_votable(source)

    monkeypatch.setattr(datalink_module, "parse_votable", racing)
    quick = RetryPolicy(attempts=3, initial_wait=0.0, max_wait=0.01)
    resolver = DatalinkResolver(server_session(), workers=1, retry=quick)
    links = resolver.resolve({"k": LinkRequest(endpoint, "id0")})
    assert links["k"].url == server.url("/files/id0.fits") and not links["k"].error
    assert len(calls) == 2
