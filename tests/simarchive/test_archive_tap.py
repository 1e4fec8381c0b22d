"""pyvo's TAPService, unmodified, against the embedded archive over HTTP.

The seed tutorial's queries (§2, §3, §4.1.1, §4.2) must give DP0.2-like answers for
(62, −37); counts are checked against an independent containment test written here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pyvo
import requests
from pyvo.dal import DALOverflowWarning, DALQueryError

from tests.conftest import TARGET_DEC, TARGET_RA

from .test_sky import SEED_COLUMNS

POINT_QUERY = (
    "SELECT * FROM ivoa.ObsCore "
    f"WHERE CONTAINS(POINT('ICRS', {TARGET_RA}, {TARGET_DEC}), s_region) = 1"
)
SUBTYPES = {
    "lsst.raw",
    "lsst.calexp",
    "lsst.goodSeeingDiff_differenceExp",
    "lsst.deepCoadd_calexp",
    "lsst.goodSeeingCoadd",
}


def _unit(ra: float, dec: float) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def convex_polygon_contains(s_region: str, ra: float, dec: float) -> bool:
    """Independent check: the point is on the same side of every great-circle edge."""
    words = s_region.split()
    assert words[0] == "POLYGON"
    numbers = [float(w) for w in words[2:]]
    vertices = [_unit(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)]
    p = _unit(ra, dec)
    sides = [
        np.dot(np.cross(a, b), p)
        for a, b in zip(vertices, vertices[1:] + vertices[:1], strict=True)
    ]
    return all(s > 0 for s in sides) or all(s < 0 for s in sides)


@pytest.fixture(scope="module")
def service(archive):
    return pyvo.dal.TAPService(archive.tap_url)


def test_capabilities_advertise_limits_and_geometry(service):
    assert service.maxrec == 100_000
    assert service.hardlimit == 1_000_000
    forms = {
        f.form
        for f in service.get_tap_capability()
        .get_adql()
        .get_feature_list("ivo://ivoa.net/std/TAPRegExt#features-adqlgeo")
    }
    assert {"POINT", "CIRCLE", "POLYGON", "CONTAINS", "INTERSECTS"} <= forms
    assert service.available


def test_vosi_tables_describe_obscore(service):
    obscore = service.tables["ivoa.ObsCore"]
    columns = {c.name: c for c in obscore.columns}
    assert {"s_region", "access_url", "lsst_ccdvisitid", "t_min"} <= set(columns)
    assert str(columns["s_ra"].unit) == "deg"


def test_seed_section2_schema_queries(service):
    schemas = service.search("SELECT * FROM tap_schema.schemas").to_table()
    assert {"ivoa", "tap_schema"} <= set(schemas["schema_name"])
    assert set(schemas.colnames) == {"description", "schema_index", "schema_name", "utype"}

    tables = service.search(
        "SELECT * FROM tap_schema.tables WHERE tap_schema.tables.schema_name = 'ivoa'"
    ).to_table()
    assert list(tables["table_name"]) == ["ivoa.ObsCore"]

    columns = service.search(
        "SELECT column_name, datatype, description, unit "
        "FROM tap_schema.columns WHERE table_name = 'ivoa.ObsCore'"
    ).to_table()
    by_name = {row["column_name"]: row for row in columns}
    seed_columns = set(SEED_COLUMNS)
    assert seed_columns <= set(by_name)
    assert by_name["s_ra"]["datatype"] == "double" and by_name["s_ra"]["unit"] == "deg"
    assert by_name["lsst_ccdvisitid"]["datatype"] == "long"
    assert by_name["s_region"]["datatype"] == "char"
    # the columns a query returns are exactly the ones TAP_SCHEMA describes
    one = service.search("SELECT TOP 1 * FROM ivoa.ObsCore").to_table()
    assert set(one.colnames) == set(by_name)


@pytest.fixture(scope="module")
def point_rows(service):
    """Seed §3: the async point query, as the tutorial runs it."""
    job = service.submit_job(POINT_QUERY)
    job.run()
    job.wait(phases=["COMPLETED", "ERROR"], timeout=60)
    assert job.phase == "COMPLETED"
    table = job.fetch_result().to_table()
    job.delete()
    return table


def test_seed_section3_point_query_is_dp02_like(point_rows, archive):
    rows = point_rows
    assert set(rows["dataproduct_type"]) == {"image"}
    assert set(rows["dataproduct_subtype"]) == SUBTYPES
    assert set(rows["calib_level"]) == {1, 2, 3}
    calexp = rows[rows["dataproduct_subtype"] == "lsst.calexp"]
    assert set(calexp["lsst_band"]) == set("ugrizy")
    assert len(calexp) > len(set(calexp["lsst_visit"]))  # seed §3.5: padded s_region
    assert len(calexp) == len(set(calexp["lsst_ccdvisitid"]))
    coadds = rows[rows["dataproduct_subtype"] == "lsst.deepCoadd_calexp"]
    assert len(coadds) == 12
    assert {
        f"{t}_{p}" for t, p in zip(coadds["lsst_tract"], coadds["lsst_patch"], strict=True)
    } == {"3831_3", "3831_10"}
    for subtype in ("lsst.raw", "lsst.goodSeeingDiff_differenceExp"):
        assert (rows["dataproduct_subtype"] == subtype).sum() == len(calexp)
    # access_url points at our Datalink service, in the RSP's shape
    assert all(
        u.startswith(archive.datalink_url + "?ID=butler%3A//dp02/") for u in rows["access_url"]
    )
    assert set(rows["access_format"]) == {"application/x-votable+xml;content=datalink"}
    assert all(s.startswith("POLYGON ICRS ") for s in rows["s_region"])


def test_point_query_matches_independent_geometry(point_rows, service):
    everything = service.search(
        "SELECT obs_publisher_did, s_region FROM ivoa.ObsCore", maxrec=1_000_000
    ).to_table()
    expected = {
        did
        for did, region in zip(everything["obs_publisher_did"], everything["s_region"], strict=True)
        if convex_polygon_contains(region, TARGET_RA, TARGET_DEC)
    }
    assert set(point_rows["obs_publisher_did"]) == expected
    assert len(expected) < len(everything)


def test_padding_makes_false_positives(point_rows, archive):
    truth = archive.truth(TARGET_RA, TARGET_DEC)
    calexp = point_rows[point_rows["dataproduct_subtype"] == "lsst.calexp"]
    inside = [did in truth for did in calexp["obs_publisher_did"]]
    assert any(inside) and not all(inside)
    coadd_dids = point_rows[point_rows["dataproduct_subtype"] == "lsst.deepCoadd_calexp"][
        "obs_publisher_did"
    ]
    assert all(did in truth for did in coadd_dids)  # coadd regions are tight


def test_seed_section411_sync_and_run_async_agree(service, point_rows):
    query = POINT_QUERY + " AND lsst_band = 'i' AND calib_level = 2"
    sync = service.run_sync(query).to_table()
    async_ = service.run_async(query).to_table()
    expected = point_rows[(point_rows["lsst_band"] == "i") & (point_rows["calib_level"] == 2)]
    assert sorted(sync["obs_id"]) == sorted(async_["obs_id"]) == sorted(expected["obs_id"])
    assert len(sync) > 0


def test_seed_section42_coadd_query(service):
    query = POINT_QUERY + (
        " AND lsst_band = 'i' AND calib_level = 3 AND dataproduct_subtype = 'lsst.deepCoadd_calexp'"
    )
    rows = service.search(query).to_table()
    assert len(rows) == 2
    assert set(rows["lsst_tract"]) == {3831}
    assert set(rows["lsst_patch"]) == {3, 10}


def test_maxrec_overflow_is_signalled(service, point_rows):
    limited = service.search(POINT_QUERY, maxrec=5)
    assert len(limited) == 5 and limited.status[0] == "OVERFLOW"
    job = service.submit_job(POINT_QUERY, maxrec=7)
    job.run().wait(timeout=60)
    result = job.fetch_result()
    assert len(result) == 7 and result.status[0] == "OVERFLOW"
    job.delete()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DALOverflowWarning)
        exact = service.search(POINT_QUERY, maxrec=len(point_rows))
        top = service.search(POINT_QUERY.replace("SELECT *", "SELECT TOP 3 *"))
    assert len(exact) == len(point_rows) and exact.status[0] == "OK"
    assert len(top) == 3 and top.status[0] == "OK"


def test_server_default_maxrec_truncation_warns():
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings(n_visits=12, maxrec_default=10, maxrec_hard=20)) as small:
        service = pyvo.dal.TAPService(small.tap_url)
        assert service.maxrec == 10 and service.hardlimit == 20
        with pytest.warns(DALOverflowWarning, match="server limits"):
            rows = service.search("SELECT obs_id FROM ivoa.ObsCore")
        assert len(rows) == 10
        capped = service.search("SELECT obs_id FROM ivoa.ObsCore", maxrec=1000)
        assert len(capped) == 20  # the hard limit wins over a larger MAXREC


def test_adql_syntax_error_is_a_dal_query_error(service):
    with pytest.raises(DALQueryError) as err:
        service.search(
            "SELECT * FROM ivoa.ObsCore WHERE CONTAINS(POINT('ICRS', 62, -37), s_region) = = 1"
        )
    assert "Col" in str(err.value) or "col" in str(err.value)
    with pytest.raises(DALQueryError, match="no_such_column"):
        service.search("SELECT no_such_column FROM ivoa.ObsCore")


def test_async_error_phase_carries_the_message(service):
    job = service.submit_job("SELECT * FROM ivoa.NoSuchTable")
    job.run()
    job.wait(phases=["COMPLETED", "ERROR"], timeout=60)
    assert job.phase == "ERROR"
    with pytest.raises(DALQueryError, match="(?i)nosuchtable"):
        job.raise_if_error()
    error_doc = requests.get(job.url + "/error", timeout=10)
    assert error_doc.status_code == 200 and b'value="ERROR"' in error_doc.content
    job.delete()


def test_uws_job_lifecycle(service, archive):
    job = service.submit_job("SELECT TOP 2 obs_id FROM ivoa.ObsCore")
    assert job.phase == "PENDING"
    assert job.job_id in requests.get(archive.tap_url + "/async", timeout=10).text
    job.abort()
    assert job.phase == "ABORTED"
    url = job.url
    job.delete()
    assert requests.get(url, timeout=10).status_code == 404

    job = service.submit_job("SELECT TOP 2 obs_id FROM ivoa.ObsCore")
    assert job.execution_duration.to_value("s") == 600
    job.run().wait(timeout=60)
    assert job.phase == "COMPLETED"
    assert job.result_uri.endswith("/results/result")
    assert len(job.fetch_result()) == 2
    phase = requests.get(job.url + "/phase", timeout=10)
    assert phase.text.strip() == "COMPLETED"
    job.delete()


def test_bad_maxrec_and_format_are_refused(archive):
    reply = requests.get(
        archive.tap_url + "/sync",
        params={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM ivoa.ObsCore", "MAXREC": "lots"},
        timeout=10,
    )
    assert reply.status_code == 400 and b"MAXREC" in reply.content
    reply = requests.get(
        archive.tap_url + "/sync",
        params={
            "LANG": "ADQL",
            "QUERY": "SELECT TOP 1 obs_id FROM ivoa.ObsCore",
            "RESPONSEFORMAT": "csv",
        },
        timeout=10,
    )
    assert reply.status_code == 400 and b"RESPONSEFORMAT" in reply.content
