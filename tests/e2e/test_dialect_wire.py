"""TAP replies of every shape real servers give, on the wire, still harvest exactly.

Each case switches on one way a real TAP service answers (``obsharvest.simarchive.dialect``):
VOTable 1.3 TABLEDATA served as ``application/xml`` with ``QUERY_STATUS`` after the
table, errors as HTTP 400 plain text or a Python dict's repr, an async job that is
already final when ``PHASE=RUN`` returns, no ``/async`` at all, a sync endpoint that only
takes POST. A harvest must store exactly the images whose pixels contain a target (the
archive's WCS truth), in ``query.mode`` async and sync; a result cut at MAXREC must still
be seen as cut whatever the status placement; and an error must reach the user as one
line quoting the service's words, without a traceback.
"""

from __future__ import annotations

import io
import logging
import re
import time

import pyarrow.dataset as ds
import pytest
import requests
from astropy.io.votable import parse

from obsharvest.errors import QueryError, ServiceError, ServiceRefusedError
from obsharvest.flows.cli import main
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.net.replies import said_by
from obsharvest.net.retry import RetryPolicy
from obsharvest.query.obscore import QueryOptions, overflowed, run_query
from obsharvest.query.service import TapService
from obsharvest.simarchive.dialect import Dialect
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.crafted_server import CraftedServer, Reply
from tests.shared_files import shared

# the seed's position, a neighbour sharing some of its images, and one further out
TARGETS = (("seed", 62.0, -37.0), ("near", 62.05, -36.97), ("east", 62.4, -37.1))
QUICK = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, deadline=20)
NO_ASYNC = "has no async (UWS) endpoint"
TRACEBACK = re.compile(r"Traceback|File \"|line \d+, in ")
ALL = "SELECT obs_publisher_did FROM ivoa.ObsCore"


def _settings(dialect: list[str], n_visits: int = 12, **more) -> ArchiveSettings:
    return shared(
        ArchiveSettings(
            seed=7, n_visits=n_visits, binning=10, dialect=Dialect.parse(dialect), **more
        )
    )


def _params(
    archive: EmbeddedArchive, output, targets_csv, constraints=None, **query
) -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(targets_csv),
            "constraints": constraints or {},
            "output_url": str(output),
            "query": query,
            # one shard per target: several query tasks, so "once per run" is tested
            "execution": {"shard_targets": 1},
            "retry": {"read_timeout": 20.0, "initial_wait": 0.05},
        }
    )


@pytest.fixture(scope="module")
def targets_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "targets.csv"
    path.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in TARGETS))
    return path


def _assert_exact(archive: EmbeddedArchive, output, calib_level: int | None = None) -> None:
    """Per target: the stored images are exactly those whose pixels contain it (of one
    calibration level, when the harvest asked for one)."""
    truth = {name: archive.truth(ra, dec) for name, ra, dec in TARGETS}
    if calib_level is not None:
        obscore = archive.tables["ivoa.obscore"]
        level = {
            str(d): int(c)
            for d, c in zip(obscore["obs_publisher_did"], obscore["calib_level"], strict=True)
        }
        truth = {n: frozenset(d for d in t if level[d] == calib_level) for n, t in truth.items()}
    rows = ds.dataset(str(output / "metadata"), format="parquet").to_table().to_pylist()
    stored: dict[str, set[str]] = {}
    for row in rows:
        name, did = row["obsh_target_name"], row["obs_publisher_did"]
        assert row["obsh_verdict"] == ("contains" if did in truth[name] else "outside"), row
        assert row["obsh_failure"] is None, row
        if row["obsh_stored"]:
            stored.setdefault(name, set()).add(did)
    for name, dids in truth.items():
        assert stored.get(name, set()) == set(dids), name
    assert any(truth.values()), "the workload must store something to prove anything"


def _methods(stats: dict, endpoint: str) -> dict[str, int]:
    return {k: v for k, v in stats.get(endpoint, {}).get("methods", {}).items() if v}


# -- a harvest per switch -------------------------------------------------------------------

# Each switch also harvests in tests/e2e/test_conformance.py (the dialect servers, async):
# here the sync side of TABLEDATA, and no UWS over several shards (learnt once per run).
CASES = {
    "tabledata-sync": (["serialization=tabledata", "errors=text"], "sync"),
    "async-off-sync-post": (["async=off", "sync=post"], "async"),
}


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.timeout(240)
def test_each_wire_dialect_harvests_exactly_the_truth(case, targets_csv, tmp_path, caplog):
    dialect, mode = CASES[case]
    caplog.set_level(logging.WARNING)
    with EmbeddedArchive(_settings(dialect)) as archive:
        summary = harvest_params(_params(archive, tmp_path, targets_csv, mode=mode))
        assert summary.ok, summary.failures
        _assert_exact(archive, tmp_path)
        stats = archive.stats()
    said = [r.getMessage() for r in caplog.records if NO_ASYNC in r.getMessage()]
    if "async=off" in dialect:
        # one refused job creation, said once, then every query of every shard went sync
        assert stats["tap_async"]["status"] == {404: 1}, stats["tap_async"]
        assert len(said) == 1, said
        assert _methods(stats, "tap_sync").get("POST", 0) >= len(TARGETS)
    else:
        assert not said
    if mode == "async" and "async=off" not in dialect:
        assert "tap_sync" not in stats, stats  # every query went through UWS
    if "sync=post" in dialect or mode == "sync":
        assert set(_methods(stats, "tap_sync")) <= {"POST"}, stats["tap_sync"]
        assert 405 not in stats.get("tap_sync", {}).get("status", {})
    assert not any(r.exc_info for r in caplog.records)


# -- overflow with QUERY_STATUS after the table ---------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    "maxrec, hard, mode",
    [(16, 1_000_000, "async"), (None, 16, "sync")],
    ids=["client-maxrec-async", "hard-limit-sync"],
)
@pytest.mark.timeout(240)
def test_a_result_cut_at_maxrec_is_split_when_the_status_follows_the_table(
    maxrec, hard, mode, targets_csv, tmp_path
):
    """A small MAXREC (asked by the client, or the service's hard limit below its
    default) with the one QUERY_STATUS after a TABLEDATA table: the cut is noticed, the
    query split until nothing is cut, and the rows are exact. Calibrated visit images
    only: the coadds of one patch share their time, more of them than MAXREC."""
    # 24 visits: more rows per target than MAXREC, so the first answers are cut
    with EmbeddedArchive(
        _settings(["serialization=tabledata"], n_visits=24, maxrec_hard=hard)
    ) as archive:
        level = {"calib_levels": [2]}
        params = _params(archive, tmp_path, targets_csv, level, mode=mode, maxrec=maxrec)
        summary = harvest_params(params)
        assert summary.ok, summary.failures
        _assert_exact(archive, tmp_path, calib_level=2)
        stats = archive.stats()
    endpoint = "tap_sync" if mode == "sync" else "tap_async"
    queries = _methods(stats, endpoint).get("POST", 0)
    if mode == "async":
        queries //= 2  # job creation, then PHASE=RUN
    assert queries > 2 * len(TARGETS), stats[endpoint]  # overflows were split


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_run_query_sees_the_overflow_after_the_table(mode):
    with EmbeddedArchive(_settings(["serialization=tabledata"], maxrec_hard=3)) as archive:
        service = TapService(archive.tap_url)
        rows, cut = run_query(service, ALL, QueryOptions(mode=mode, retry=QUICK, poll_wait=1))
        assert (len(rows), cut) == (3, True)
        rows, cut = run_query(
            service, ALL + " WHERE obs_publisher_did = 'none'", QueryOptions(mode=mode, retry=QUICK)
        )
        assert (len(rows), cut) == (0, False)


def test_an_overflow_anywhere_in_the_document_counts():
    """``OK`` in the RESOURCE, ``OVERFLOW`` inside the TABLE after its DATA (VOTable 1.2+):
    pyvo reads the RESOURCE's status and misses the cut; the client does not."""
    doc = b"""<?xml version="1.0"?>
<VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
 <RESOURCE type="results">
  <INFO name="QUERY_STATUS" value="OK"/>
  <TABLE><FIELD name="a" datatype="int"/>
   <DATA><TABLEDATA><TR><TD>1</TD></TR></TABLEDATA></DATA>
   <INFO name="QUERY_STATUS" value="OVERFLOW"/>
  </TABLE>
 </RESOURCE>
</VOTABLE>"""
    from pyvo.dal import TAPResults

    result = TAPResults(parse(io.BytesIO(doc)))
    assert result.status[0] == "OK"  # what pyvo says
    assert overflowed(result)


# -- what the archive sends -----------------------------------------------------------------


def test_tabledata_is_votable_1_3_as_application_xml_with_the_status_last():
    with EmbeddedArchive(_settings(["serialization=tabledata"], maxrec_hard=2)) as archive:
        for fmt in ("votable/b2", "votable", None):
            data = {"QUERY": ALL, "LANG": "ADQL", **({"RESPONSEFORMAT": fmt} if fmt else {})}
            reply = requests.post(f"{archive.tap_url}/sync", data=data, timeout=30)
            assert reply.status_code == 200
            assert reply.headers["Content-Type"] == "application/xml"
            body = reply.content
            assert b'version="1.3"' in body and b"<TABLEDATA>" in body
            assert body.count(b"QUERY_STATUS") == 1
            assert body.index(b"</TABLE>") < body.index(b'"QUERY_STATUS" value="OVERFLOW"')


def test_text_errors_are_plain_or_a_dict_repr_by_kind_sync_and_async():
    with EmbeddedArchive(_settings(["errors=text", "async=inline"])) as archive:
        cases = {
            "SELECT * FROM ivoa.foo": "{'error': \"table 'ivoa.foo' does not exist\", 'code': 400}",
            "SELEC x": "syntax error at line 1",
        }
        for query, words in cases.items():
            reply = requests.post(f"{archive.tap_url}/sync", data={"QUERY": query}, timeout=30)
            assert reply.status_code == 400
            assert reply.headers["Content-Type"].startswith("text/plain")
            assert reply.text.startswith(words)
        bad_maxrec = requests.post(
            f"{archive.tap_url}/sync", data={"QUERY": ALL, "MAXREC": "x"}, timeout=30
        )
        assert (bad_maxrec.status_code, bad_maxrec.text) == (400, "MAXREC='x' is not an integer\n")
        job = requests.post(
            f"{archive.tap_url}/async",
            data={"QUERY": "SELECT * FROM ivoa.foo", "PHASE": "RUN"},
            timeout=30,
        )
        assert "<uws:phase>ERROR" in job.text  # inline: final when the POST returns
        error = requests.get(f"{job.url}/error", timeout=30)
        assert error.headers["Content-Type"].startswith("text/plain")
        assert error.text.startswith("{'error': \"table 'ivoa.foo' does not exist\"")


def test_inline_jobs_are_final_when_run_returns_and_no_async_is_404():
    with EmbeddedArchive(_settings(["async=inline"])) as archive:
        reply = requests.post(
            f"{archive.tap_url}/async", data={"QUERY": ALL, "PHASE": "RUN"}, timeout=30
        )
        assert reply.history[0].status_code == 303 and "<uws:phase>COMPLETED" in reply.text
    with EmbeddedArchive(_settings(["async=off", "sync=post"])) as archive:
        assert requests.post(f"{archive.tap_url}/async", data={"QUERY": ALL}).status_code == 404
        assert requests.get(f"{archive.tap_url}/async").status_code == 404
        assert requests.get(f"{archive.tap_url}/sync", params={"QUERY": ALL}).status_code == 405


@pytest.mark.parametrize("started", ["on", "deferred"])
def test_an_async_job_is_created_running_and_deleted_behind_the_query(started):
    """PHASE=RUN goes with the creating POST; a service that does not hear it there gets
    POST .../phase. Either way the rows are those of a sync query, and the finished job
    is deleted without the query waiting for it (nor for the job list it redirects to)."""
    with EmbeddedArchive(_settings([f"async={started}"])) as archive:
        service = TapService(archive.tap_url)
        rows, _ = run_query(service, ALL, QueryOptions(mode="async", retry=QUICK, poll_wait=1))
        same, _ = run_query(service, ALL, QueryOptions(mode="sync", retry=QUICK))
        assert len(rows) == len(same) > 0
        methods = archive.stats()["tap_async"]["methods"]
        assert methods["POST"] == (1 if started == "on" else 2), methods
        deadline = time.monotonic() + 30
        while archive.jobs.list() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert archive.jobs.list() == []
        assert archive.stats()["tap_async"]["methods"].get("DELETE") == 1


# -- errors as the user sees them -----------------------------------------------------------


def _one_line(message: str, *words: str) -> None:
    assert "\n" not in message and not TRACEBACK.search(message), message
    assert "{'error'" not in message, message  # the dict's words, not its repr
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    "query, words",
    [
        ("SELECT * FROM ivoa.foo", "table 'ivoa.foo' does not exist"),  # a dict's repr
        ("SELEC x", "syntax error at line 1, column 1 near 'SELEC'"),  # plain text
    ],
    ids=["dict-repr", "plain"],
)
def test_a_text_error_is_one_line_with_the_services_words_and_not_retried(mode, query, words):
    with EmbeddedArchive(_settings(["errors=text", "async=inline"])) as archive:
        service = TapService(archive.tap_url)
        with pytest.raises((QueryError, ServiceRefusedError)) as err:
            run_query(service, query, QueryOptions(mode=mode, retry=QUICK, poll_wait=1))
        _one_line(str(err.value), words, mode)
        endpoint = "tap_sync" if mode == "sync" else "tap_async"
        posts = archive.stats()[endpoint]["methods"]["POST"]
        assert posts == 1, posts  # 400 is not retried; the creating POST ran the job


def test_a_5xx_in_plain_text_is_retried_and_said_in_the_services_words():
    with CraftedServer() as server:
        body = b"{'error': 'database   overloaded,\n try later', 'code': 503}"
        server.route("/tap/sync", Reply(503, body, {"Content-Type": "text/plain"}))
        with pytest.raises(ServiceError) as err:
            run_query(TapService(server.url("/tap")), ALL, QueryOptions(mode="sync", retry=QUICK))
        _one_line(str(err.value), "HTTP 503: database overloaded, try later", "failed 3 times")
        assert server.hits["/tap/sync"] == 3


def test_a_job_without_an_error_summary_is_said_from_its_error_document():
    uws = b"""<uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0"><uws:jobId>j</uws:jobId>
<uws:phase>ERROR</uws:phase></uws:job>"""
    with CraftedServer() as server:
        server.route("/tap/async", lambda r: Reply(303, b"", {"Location": server.url("/job/j")}))
        server.route("/job/j", Reply(200, uws, {"Content-Type": "text/xml"}))
        server.route("/job/j/phase", Reply(303, b"", {"Location": server.url("/job/j")}))
        server.route("/job/j/error", Reply(200, b"  Table 'ivoa.foo'\n not found ", {}))
        with pytest.raises(QueryError) as err:
            run_query(TapService(server.url("/tap")), ALL, QueryOptions(mode="async", retry=QUICK))
        _one_line(str(err.value), "async TAP query refused: Table 'ivoa.foo' not found")


def test_said_by_unwraps_dicts_and_leaves_other_text():
    assert said_by(b"{'error': 'Table ivoa.foo not found', 'code': 400}") == (
        "Table ivoa.foo not found"
    )
    assert said_by('{"error": {"code": 400, "message": "bad\\n  ADQL"}}') == "bad ADQL"
    assert said_by("{'code': 400}") == "{'code': 400}"  # nothing to unwrap: quoted as it is
    assert said_by("{__import__('os')}") == "{__import__('os')}"  # read, never evaluated
    assert len(said_by("{'error': '" + "x" * 500 + "'}")) == 200


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    "where, words",
    [("nosuchcol = 1", "column 'nosuchcol' not found"), ("dec = = 1", "syntax error")],
    ids=["dict-repr", "plain"],
)
@pytest.mark.timeout(240)
def test_a_wrong_extra_where_under_text_errors_is_one_line_at_the_cli(
    mode, where, words, capfd, tmp_path
):
    code = main(
        [
            "run",
            "--config",
            "config/local.yaml",
            "--ra",
            "62",
            "--dec",
            "-37",
            "--output",
            str(tmp_path),
            "--set",
            "service.embedded.dialect=[errors=text]",
            "--set",
            "service.embedded.n_visits=12",
            "--set",
            f"query.mode={mode}",
            "--set",
            f"constraints.extra_where={where}",
        ]
    )
    err = capfd.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    _one_line(lines[0], words)
