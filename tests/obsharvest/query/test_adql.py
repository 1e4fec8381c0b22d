"""ADQL building: validated values only, and the queries parse and mean what they say."""

from __future__ import annotations

import pytest
import sqlglot

from obsharvest.errors import AdqlValueError
from obsharvest.models import Target
from obsharvest.query.adql import Constraints, obscore_query, upload_query


def parses(adql: str) -> None:
    sqlglot.parse_one(adql, read="tsql")  # raises on a syntax error


def test_point_query_is_the_seed_tutorials():
    q = obscore_query([Target("seed", 62.0, -37.0)], Constraints(bands=("i",), calib_levels=(2,)))
    assert q == (
        "SELECT * FROM ivoa.ObsCore WHERE CONTAINS(POINT('ICRS', 62.0, -37.0), s_region) = 1 "
        "AND lsst_band IN ('i') AND calib_level IN (2)"
    )
    parses(q)


def test_radius_uses_intersects_or_a_centre_prefilter():
    target = Target("r", 10.0, 5.0, radius=0.1)
    with_intersects = obscore_query([target], Constraints(), intersects=True)
    assert "INTERSECTS(CIRCLE('ICRS', 10.0, 5.0, 0.1), s_region) = 1" in with_intersects
    rsp = obscore_query([target], Constraints(), intersects=False, prefilter_radius=0.25)
    assert "INTERSECTS" not in rsp
    assert "CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', 10.0, 5.0, 0.35)) = 1" in rsp
    parses(rsp)


def test_or_batch_and_time_window():
    q = obscore_query(
        [Target("a", 1.0, 2.0), Target("b", 3.0, 4.0)],
        Constraints(t_min=59000.5, t_max=59001.0, subtypes=("lsst.calexp",)),
    )
    assert (
        "(CONTAINS(POINT('ICRS', 1.0, 2.0), s_region) = 1 OR CONTAINS(POINT('ICRS', 3.0, 4.0), s_region) = 1)"
        in q
    )
    assert "t_max >= 59000.5" in q and "t_min <= 59001.0" in q
    assert "dataproduct_subtype IN ('lsst.calexp')" in q
    parses(q)


def test_upload_join_variants_parse():
    for with_radius in (False, True):
        for intersects in (False, True):
            q = upload_query(
                Constraints(bands=("g", "r")), with_radius=with_radius, intersects=intersects
            )
            assert q.startswith(
                "SELECT t.name AS obsh_target, o.* FROM TAP_UPLOAD.targets AS t JOIN ivoa.ObsCore AS o ON "
            )
            assert "o.lsst_band IN ('g', 'r')" in q
            assert ("INTERSECTS" in q) == (with_radius and intersects)
            parses(q)


@pytest.mark.parametrize(
    "constraints",
    [
        Constraints(bands=("i' OR 1=1 --",)),
        Constraints(bands=("i'); DROP TABLE x; --",)),
        Constraints(subtypes=("lsst.calexp' OR 'a'='a",)),
        Constraints(subtypes=("a b",)),
        Constraints(bands=("",)),
    ],
)
def test_injection_through_values_is_refused(constraints):
    with pytest.raises(AdqlValueError):
        obscore_query([Target("x", 1.0, 2.0)], constraints)


def test_band_column_must_be_an_identifier():
    with pytest.raises(AdqlValueError, match="not an ADQL identifier"):
        Constraints(band_column="lsst_band; DROP")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1); DROP TABLE x; --"])
def test_numbers_must_be_finite_numbers(bad):
    with pytest.raises((AdqlValueError, ValueError)):
        obscore_query([Target("x", bad, 2.0)], Constraints())


def test_extra_where_is_trusted_and_parenthesised():
    q = obscore_query([Target("x", 1.0, 2.0)], Constraints(extra_where="a = 1 OR b = 2"))
    assert q.endswith("AND (a = 1 OR b = 2)")
