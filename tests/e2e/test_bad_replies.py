"""Servers that answer wrongly (issue 7A): every bad reply ends as one clear line.

A crafted server (``tests/crafted_server.py``) answers exactly what a case asks for: HTML
where a VOTable belongs, Datalink documents without the row we need, FITS without WCS or
with garbage for a header, a 404, a body shorter than its Content-Length, a redirect loop.
obsharvest's real components are driven at it over HTTP on 127.0.0.1, then the whole flow
with a crafted TAP whose rows point every image at a different bad reply. Each case checks
the outcome is a single line naming the problem and where (the image ID, or the URL without
its query string, which holds the signature), with no traceback text.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import pytest
import pyvo
import requests
from astropy.io import fits
from astropy.io.votable import from_table
from astropy.io.votable.tree import Info
from astropy.table import Table

from obsharvest.access.datalink import DatalinkResolver
from obsharvest.errors import (
    NotFoundError,
    QueryError,
    ReadError,
    ServiceError,
    ServiceRefusedError,
    TransientReadError,
)
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.models import Target, Verdict
from obsharvest.net.retry import RetryPolicy
from obsharvest.query.obscore import QueryOptions, run_query
from obsharvest.storage.download import download
from obsharvest.storage.store import ObjectStore
from obsharvest.verify import containment
from tests.conftest import TARGET_DEC, TARGET_RA
from tests.crafted_server import CraftedServer, Reply, datalink, html, votable_error

SIGNED = "?Signature=c2VjcmV0LXNpZ25hdHVyZQ&Expires=1999999999"  # must never be quoted back
QUICK = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, deadline=20)
SEED = Target("seed", TARGET_RA, TARGET_DEC)
TRACEBACK = re.compile(r"Traceback|File \"|line \d+, in |\n")


def assert_one_clear_line(message: str | None, *words: str) -> None:
    """One line, the words that name the problem and where, no signature, no traceback."""
    assert message, "expected a message"
    assert not TRACEBACK.search(message), message
    assert "Signature=c2V" not in message and "Expires=1999" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def fits_without_wcs() -> bytes:
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(np.zeros((20, 20), dtype=np.float32))]).writeto(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server():
    with CraftedServer() as running:
        yield running


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ObjectStore(str(tmp_path_factory.mktemp("crafted-store")))


# -- each component alone ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Routes to install, a call that returns the message to judge, and what it must say."""

    name: str
    routes: dict[str, Reply]
    run: Callable[[CraftedServer, ObjectStore], str]
    words: tuple[str, ...]
    hits: dict[str, int] | None = None  # requests each route must have received


def _query(mode: str, path: str, expected: type[Exception]):
    def run(server: CraftedServer, _store) -> str:
        service = pyvo.dal.TAPService(server.url(path))
        with pytest.raises(expected) as err:
            run_query(service, "SELECT * FROM ivoa.ObsCore", QueryOptions(mode=mode, retry=QUICK))
        return str(err.value)

    return run


def _resolve(path: str, ident: str = "ivo://crafted/one?x"):
    def run(server: CraftedServer, _store) -> str:
        link = DatalinkResolver(requests.Session(), retry=QUICK).resolve(
            {ident: server.url(f"{path}?ID={quote(ident)}")}
        )[ident]
        assert link.url is None
        return link.error

    return run


def _verify(path: str, verdict: Verdict):
    def run(server: CraftedServer, _store) -> str:
        result = containment.verify(server.url(path + SIGNED), [SEED])["seed"]
        assert result.verdict == verdict, result
        return result.reason

    return run


def _verify_raises(path: str, expected: type[Exception]):
    def run(server: CraftedServer, _store) -> str:
        with pytest.raises(expected) as err:
            containment.verify(server.url(path + SIGNED), [SEED])
        return str(err.value)

    return run


def _download(path: str, expected: type[Exception]):
    def run(server: CraftedServer, store: ObjectStore) -> str:
        with pytest.raises(expected) as err:
            download(server.url(path + SIGNED), store, f"crafted/{path.strip('/')}.fits")
        return str(err.value)

    return run


NO_WCS = fits_without_wcs()
MULTILINE_FAULT = "NotFoundFault: ivo://crafted/one?x is not known\n  at Resolver.find(line 12)"
COMPONENT_CASES = [
    Case(
        "tap-html-sync",  # an HTML page with 200 (a portal, a web site): permanent
        {"/html-tap/*": html()},
        _query("sync", "/html-tap", ServiceRefusedError),
        ("sync TAP query", "/html-tap/sync", "not a VOTable", "service.tap_url"),
        {"/html-tap/sync": 1},
    ),
    Case(
        "tap-html-502-sync",  # a proxy's HTML error page with 502: transient, retried
        {"/html502-tap/*": html(502)},
        _query("sync", "/html502-tap", ServiceError),
        ("sync TAP query", "/html502-tap", "failed 3 times", "502"),
        {"/html502-tap/sync": 3},
    ),
    Case(
        "tap-html-404-sync",  # the same page with 404: permanent, at once
        {"/html404-tap/*": html(404)},
        _query("sync", "/html404-tap", ServiceRefusedError),
        ("sync TAP query", "/html404-tap/sync", "404", "check the URL"),
        {"/html404-tap/sync": 1},
    ),
    Case(
        "tap-401-sync",  # no token: at once, saying which variable holds it
        {"/auth-tap/sync": Reply(401, b"authentication required", {"Content-Type": "text/plain"})},
        _query("sync", "/auth-tap", ServiceRefusedError),
        ("/auth-tap/sync", "401", "authentication required", "no token was sent"),
        {"/auth-tap/sync": 1},
    ),
    Case(
        "tap-405-async",
        {"/ro-tap/async": Reply(405, b"use GET", {"Content-Type": "text/plain"})},
        _query("async", "/ro-tap", ServiceRefusedError),
        ("/ro-tap/async", "405", "use GET"),
        {"/ro-tap/async": 1},
    ),
    Case(
        "tap-html-async",  # pyvo reads an HTML job page as phase None: must not poll forever
        {"/html-uws/*": html()},
        _query("async", "/html-uws", ServiceRefusedError),
        ("/html-uws", "no UWS phase", "not a UWS job document"),
    ),
    Case(
        "tap-error-document",
        {"/err-tap/sync": votable_error("Syntax error near 'FORM' at line 1, column 10")},
        _query("sync", "/err-tap", QueryError),
        ("Syntax error near 'FORM'",),
        {"/err-tap/sync": 1},  # the query is wrong: never retried
    ),
    Case(
        "datalink-html",  # 200 with HTML: not a VOTable, permanent
        {"/dl-html": html()},
        _resolve("/dl-html"),
        ("Datalink", "/dl-html", "text/html", "not a VOTable"),
        {"/dl-html": 1},
    ),
    Case(
        "datalink-html-502",  # a proxy's error page: transient, retried
        {"/dl-html502": html(502)},
        _resolve("/dl-html502"),
        ("Datalink", "/dl-html502", "502"),
        {"/dl-html502": 3},
    ),
    Case(
        "datalink-404",
        {"/dl-404": Reply(404, b"no such endpoint", {"Content-Type": "text/plain"})},
        _resolve("/dl-404"),
        ("Datalink", "/dl-404", "404", "no such endpoint", "check the URL"),
        {"/dl-404": 1},
    ),
    Case("datalink-empty", {"/dl-empty": datalink([])}, _resolve("/dl-empty"), ("missing",)),
    Case(
        "datalink-no-this",
        {
            "/dl-nothis": datalink(
                [{"ID": "ivo://crafted/one?x", "access_url": "http://x/p", "semantics": "#preview"}]
            )
        },
        _resolve("/dl-nothis"),
        ("no #this link",),
    ),
    Case(
        "datalink-error-message",
        {
            "/dl-fault": datalink(
                [
                    {
                        "ID": "ivo://crafted/one?x",
                        "error_message": MULTILINE_FAULT,
                        "semantics": "#this",
                    }
                ]
            )
        },
        _resolve("/dl-fault"),
        ("Datalink: NotFoundFault", "is not known"),
    ),
    Case(
        "fits-no-wcs",
        {"/f/nowcs": Reply(body=NO_WCS, ranges=True)},
        _verify("/f/nowcs", Verdict.NO_WCS),
        ("celestial WCS", "/f/nowcs"),
    ),
    Case(
        "fits-garbage",
        {"/f/garbage": Reply(body=b"\x00\xff not a FITS file " * 4000, ranges=True)},
        _verify("/f/garbage", Verdict.ERROR),
        ("unreadable FITS header", "/f/garbage"),
    ),
    Case(
        "fits-truncated-header",
        {"/f/truncated": Reply(body=NO_WCS[:1000], ranges=True)},
        _verify("/f/truncated", Verdict.ERROR),
        ("/f/truncated",),
    ),
    Case(
        "header-404",
        {},
        _verify_raises("/f/missing", NotFoundError),
        ("404", "/f/missing", "no such file"),
    ),
    Case(
        "header-redirect-loop",
        {
            "/f/loop-a": Reply(302, headers={"Location": "/f/loop-b" + SIGNED}),
            "/f/loop-b": Reply(302, headers={"Location": "/f/loop-a" + SIGNED}),
        },
        _verify_raises("/f/loop-a", ReadError),
        ("redirect", "/f/loop-a"),
    ),
    Case(
        "download-404", {}, _download("/f/gone", NotFoundError), ("404", "/f/gone", "no such file")
    ),
    Case(
        "download-short-body",
        {"/f/short": Reply(body=NO_WCS[:3000], announce=len(NO_WCS))},
        _download("/f/short", TransientReadError),
        ("/f/short", "cut off after 3000 bytes"),
    ),
    Case(
        "download-redirect-loop",
        {
            "/f/dl-loop-a": Reply(302, headers={"Location": "/f/dl-loop-b" + SIGNED}),
            "/f/dl-loop-b": Reply(302, headers={"Location": "/f/dl-loop-a" + SIGNED}),
        },
        _download("/f/dl-loop-a", ReadError),
        ("/f/dl-loop-a", "redirects"),
    ),
]


@pytest.mark.parametrize("case", COMPONENT_CASES, ids=lambda c: c.name)
def test_component_bad_reply(case: Case, server, store):
    for path, reply in case.routes.items():
        server.route(path, reply)
    message = case.run(server, store)
    assert_one_clear_line(message, *case.words)
    for path, count in (case.hits or {}).items():
        assert server.hits[path] == count, (path, server.hits[path])


# -- the whole flow against a crafted TAP ------------------------------------------------


@dataclass(frozen=True)
class ImageCase:
    """One ObsCore row of the crafted TAP, its Datalink reply and its file."""

    name: str
    datalink: str  # "ok": a #this row to the case's file; else a bad Datalink reply
    file: Reply | Callable[[bytes], Reply] | None = None  # None: the real image bytes
    s_region: str | None = None  # None: the real (padded) polygon
    verdict: str | None = None  # expected verdict for "seed"
    failure: tuple[str, ...] = ()  # words of the expected failure (none when empty)
    reason: tuple[str, ...] = ()  # words of the expected verdict_reason
    kept_for: frozenset[str] = frozenset({"seed", "far"})  # targets whose rows it reaches


def _short_unless_ranged(data: bytes) -> Callable:
    """Header range reads work; a whole-file GET announces more bytes than it sends."""

    def route(request) -> Reply:
        if "range" in request.headers:
            return Reply(body=data, ranges=True)
        return Reply(body=data, announce=len(data) + 5000)

    return route


FLOW_CASES = [
    ImageCase("dl-html", "html", failure=("Datalink", "/dl/dl-html", "not a VOTable")),
    ImageCase("dl-empty", "empty", failure=("Datalink", "missing")),
    ImageCase("dl-no-this", "nothis", failure=("Datalink", "no #this link")),
    ImageCase("dl-error-row", "fault", failure=("Datalink: NotFoundFault",)),
    ImageCase(
        "no-wcs",
        "ok",
        Reply(body=NO_WCS, ranges=True),
        verdict="no_wcs",
        reason=("celestial WCS", "/file/no-wcs"),
    ),
    ImageCase(
        "garbage-header",
        "ok",
        Reply(body=b"\x00\xff garbage " * 5000, ranges=True),
        verdict="error",
        reason=("unreadable FITS header", "/file/garbage-header"),
        failure=("header not usable", "/file/garbage-header"),
    ),
    ImageCase(
        "truncated-header",
        "ok",
        Reply(body=NO_WCS[:1500], ranges=True),
        verdict="error",
        reason=("/file/truncated-header",),
        failure=("header not usable", "/file/truncated-header"),
    ),
    ImageCase("missing-file", "ok", Reply(404, b"Not Found"), failure=("not found", "404")),
    ImageCase(
        "redirect-loop",
        "ok",
        Reply(302, headers={"Location": "/file/redirect-loop" + SIGNED}),
        failure=("redirect", "/file/redirect-loop"),
    ),
    ImageCase(
        "short-body",
        "ok",
        _short_unless_ranged,
        verdict="contains",
        failure=("/file/short-body", "cut off"),
    ),
    ImageCase(
        "s-region-malformed", "ok", s_region="POLYGON ICRS 62 -37 oops ((", verdict="contains"
    ),
    ImageCase(  # a valid STC-S shape: the pre-filter understands it and keeps "far" out
        "s-region-circle",
        "ok",
        s_region="CIRCLE ICRS 62.0 -37.0 0.2",
        verdict="contains",
        kept_for=frozenset({"seed"}),
    ),
    ImageCase(
        "s-region-union",
        "ok",
        s_region="Union ICRS ( Polygon 61.9 -37.1 62.1 -37.1 62.1 -36.9 61.9 -36.9 "
        "Polygon 10 10 11 10 11 11 )",
        verdict="contains",
        kept_for=frozenset({"seed"}),  # ALMA's Union is read: its members miss "far"
    ),
    ImageCase(
        "s-region-two-polygons",
        "ok",
        s_region="POLYGON ICRS 61.9 -37.1 62.1 -37.1 62.1 -36.9 POLYGON ICRS 10 10 11 10 11 11",
        verdict="contains",
    ),
]


def _real_images(archive, count: int) -> tuple[Table, list[bytes], bytes]:
    """ObsCore rows and bytes of calexps that truly contain the seed's point, and the
    archive's capabilities document (the crafted TAP advertises the same)."""
    service = pyvo.dal.TAPService(archive.tap_url)
    rows = service.run_sync(
        "SELECT * FROM ivoa.ObsCore WHERE CONTAINS(POINT('ICRS', "
        f"{TARGET_RA}, {TARGET_DEC}), s_region) = 1 AND lsst_band = 'i' AND calib_level = 2"
    ).to_table()
    truth = archive.truth(TARGET_RA, TARGET_DEC)
    rows = rows[[str(d) in truth for d in rows["obs_publisher_did"]]][:count]
    assert len(rows) == count
    links = DatalinkResolver(requests.Session()).resolve(
        {str(r["obs_publisher_did"]): str(r["access_url"]) for r in rows}
    )
    data = [requests.get(links[str(r["obs_publisher_did"])].url).content for r in rows]
    capabilities = requests.get(archive.tap_url + "/capabilities").content
    return rows, data, capabilities


def _obscore_votable(rows: Table) -> bytes:
    votable = from_table(rows)
    votable.resources[0].infos.append(Info(name="QUERY_STATUS", value="OK"))
    out = io.BytesIO()
    votable.to_xml(out)
    return out.getvalue()


def _install_flow_routes(server: CraftedServer, archive) -> None:
    real_rows, real_data, capabilities = _real_images(archive, len(FLOW_CASES))
    table = Table(real_rows, masked=True)
    columns = {c: [str(v) for v in table[c]] for c in ("obs_publisher_did", "obs_id")}
    columns["access_url"], columns["s_region"] = [], []
    for i, case in enumerate(FLOW_CASES):
        did = f"ivo://crafted/{case.name}?repo=x"
        columns["obs_publisher_did"][i] = did
        columns["obs_id"][i] = case.name
        columns["access_url"].append(server.url(f"/dl/{case.name}?ID={quote(did)}"))
        columns["s_region"].append(case.s_region or str(table["s_region"][i]))
        data = real_data[i]
        if callable(case.file):
            route = case.file(data)
        else:
            route = case.file or Reply(body=data, ranges=True)
        server.route(f"/file/{case.name}", route)
        this = {
            "ID": did,
            "access_url": server.url(f"/file/{case.name}{SIGNED}"),
            "semantics": "#this",
            "content_type": "application/fits",
            "content_length": len(data) if case.file is None else None,
        }
        server.route(
            f"/dl/{case.name}",
            {
                "ok": datalink([this]),
                "html": html(),
                "empty": datalink([]),
                "nothis": datalink([{**this, "semantics": "#preview"}]),
                "fault": datalink(
                    [{"ID": did, "semantics": "#this", "error_message": MULTILINE_FAULT}]
                ),
            }[case.datalink],
        )
    for name, values in columns.items():
        table[name] = np.array(values, dtype=str)
    server.route(
        "/tap/capabilities", Reply(body=capabilities, headers={"Content-Type": "text/xml"})
    )
    server.route(
        "/tap/sync", Reply(body=_obscore_votable(table), headers={"Content-Type": "text/xml"})
    )


def _params(server: CraftedServer, output, targets_csv, **extra) -> HarvestParams:
    data = {
        "service": {"tap_url": server.url("/tap")},
        "targets": str(targets_csv),
        "output_url": str(output),
        "query": {"mode": "sync", "strategy": "batched"},
        "retry": {"attempts": 2, "initial_wait": 0.01, "max_wait": 0.05},
    }
    data.update(extra)
    return HarvestParams.model_validate(data)


@pytest.fixture(scope="module")
def flow_run(server, archive, prefect_harness, tmp_path_factory):
    import pyarrow.dataset as ds

    _install_flow_routes(server, archive)
    work = tmp_path_factory.mktemp("bad-replies-flow")
    targets = work / "targets.csv"
    # "far" is nowhere near any image: only rows whose s_region cannot be parsed reach it
    targets.write_text(f"name,ra,dec\nseed,{TARGET_RA},{TARGET_DEC}\nfar,10.0,10.0\n")
    summary = harvest_params(_params(server, work / "out", targets))
    rows = ds.dataset(str(work / "out" / "metadata"), format="parquet").to_table().to_pylist()
    return summary, rows


@pytest.mark.parametrize("case", FLOW_CASES, ids=lambda c: c.name)
def test_flow_bad_reply_is_a_per_image_outcome(case: ImageCase, flow_run):
    summary, rows = flow_run
    did = f"ivo://crafted/{case.name}?repo=x"
    mine = {r["obsh_target_name"]: r for r in rows if r["obs_publisher_did"] == did}
    assert "seed" in mine, f"no Parquet row for {did}"
    row = mine["seed"]
    failures = dict(summary.failures)
    if case.failure:
        assert_one_clear_line(row["obsh_failure"], *case.failure)
        assert failures.get(did) == row["obsh_failure"]  # Summary.failures names the image
        assert not row["obsh_stored"]
    else:
        assert row["obsh_failure"] is None and did not in failures
    if case.verdict:
        assert row["obsh_verdict"] == case.verdict
    if case.reason:
        assert_one_clear_line(row["obsh_verdict_reason"], *case.reason)
    if case.verdict == "contains" and not case.failure:
        assert row["obsh_stored"] and row["obsh_pixel_x"] is not None
    if case.s_region is not None:  # unparseable regions reach every target of the batch
        assert set(mine) == case.kept_for
        if "far" in mine:
            assert mine["far"]["obsh_verdict"] == "outside"  # the header WCS decides
        assert row["s_region"] == case.s_region  # stored verbatim


def test_flow_report_lists_every_failure_on_one_line(flow_run):
    from obsharvest.report import text

    summary, rows = flow_run
    expected = {f"ivo://crafted/{c.name}?repo=x" for c in FLOW_CASES if c.failure}
    assert {key for key, _ in summary.failures} == expected
    for _, reason in summary.failures:
        assert_one_clear_line(reason)
    rendered = text(summary)  # the CLI's report must cope with every odd row
    assert "Traceback" not in rendered and "Signature=c2V" not in rendered
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                assert "Signature=c2V" not in value and "Expires=1999" not in value


def test_flow_query_error_document_is_fatal_with_the_services_message(
    server, archive, prefect_harness, tmp_path
):
    capabilities = requests.get(archive.tap_url + "/capabilities").content
    server.route("/bad-tap/capabilities", Reply(body=capabilities))
    server.route("/bad-tap/sync", votable_error("Unknown column 'lsst_bnd' in WHERE"))
    targets = tmp_path / "targets.csv"
    targets.write_text(f"name,ra,dec\nseed,{TARGET_RA},{TARGET_DEC}\n")
    params = _params(server, tmp_path / "out", targets, service={"tap_url": server.url("/bad-tap")})
    before = server.hits["/bad-tap/sync"]
    with pytest.raises(QueryError) as err:
        harvest_params(params)
    assert_one_clear_line(str(err.value), "Unknown column 'lsst_bnd'")
    assert server.hits["/bad-tap/sync"] == before + 1  # not retried
