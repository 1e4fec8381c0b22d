"""ADQL engine: each construct against small in-test astropy tables."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from astropy.table import Column, MaskedColumn, Table

from obsharvest.simarchive.adql import geometry as g
from obsharvest.simarchive.adql.engine import AdqlError, QueryResult, run_adql

REGION_I = (
    "POLYGON ICRS 61.693243 -36.780375 61.702475 -37.034112 "
    "62.015405 -37.026409 62.005102 -36.772698"
)


@pytest.fixture
def tables() -> dict[str, Table]:
    obscore = Table()
    obscore["obs_id"] = ["a", "b", "c", "d", "e"]
    obscore["s_ra"] = Column(
        [61.85, 10.0, 62.0, 200.0, 359.95],
        unit="deg",
        description="Central RA",
        format="{:.5f}",
        meta={"ucd": "pos.eq.ra;meta.main", "datatype": "double"},
    )
    obscore["s_dec"] = Column([-36.9, 5.0, -36.95, 0.0, 0.0], unit="deg")
    obscore["lsst_band"] = ["i", "r", "i", "g", "i"]
    obscore["calib_level"] = [2, 2, 3, 2, 1]
    obscore["t_exptime"] = MaskedColumn(
        [30.0, 15.0, 30.0, 1.0, 2.0], unit="s", mask=[False, True, False, False, False]
    )
    obscore["s_region"] = [
        REGION_I,
        "CIRCLE ICRS 10 5 0.5",
        "POLYGON 61.9 -37.1 62.1 -37.1 62.1 -36.8 61.9 -36.8",
        "POINT ICRS 200 0",
        "POLYGON ICRS 359.9 -0.1 0.1 -0.1 0.1 0.1 359.9 0.1",
    ]
    schemas = Table({"schema_name": ["ivoa", "tap_schema"], "description": ["IVOA", "TAP"]})
    tabs = Table(
        {
            "schema_name": ["ivoa", "tap_schema", "tap_schema"],
            "table_name": ["ivoa.ObsCore", "tap_schema.schemas", "tap_schema.tables"],
        }
    )
    columns = Table(
        {
            "table_name": ["ivoa.ObsCore", "ivoa.ObsCore", "tap_schema.tables"],
            "column_name": ["s_ra", "s_region", "table_name"],
            "datatype": ["double", "char", "char"],
            "description": ["RA", "footprint", "name"],
            "unit": ["deg", "", ""],
        }
    )
    return {
        "ivoa.obscore": obscore,
        "tap_schema.schemas": schemas,
        "tap_schema.tables": tabs,
        "tap_schema.columns": columns,
    }


def ids(result: QueryResult, column: str = "obs_id") -> list:
    return list(result.table[column])


# -- seed tutorial queries ------------------------------------------------------


def test_tutorial_queries(tables) -> None:
    assert len(run_adql("SELECT * FROM tap_schema.schemas", tables, None).table) == 2
    res = run_adql(
        "SELECT * FROM tap_schema.tables WHERE tap_schema.tables.schema_name = 'ivoa'", tables, None
    )
    assert list(res.table["table_name"]) == ["ivoa.ObsCore"]
    res = run_adql(
        "SELECT column_name, datatype, description, unit FROM tap_schema.columns "
        "WHERE table_name = 'ivoa.ObsCore'",
        tables,
        None,
    )
    assert res.table.colnames == ["column_name", "datatype", "description", "unit"]
    assert list(res.table["column_name"]) == ["s_ra", "s_region"]
    res = run_adql(
        "SELECT * FROM ivoa.ObsCore WHERE CONTAINS(POINT('ICRS', 62.0, -37.0), "
        "s_region) = 1 AND lsst_band = 'i' AND calib_level = 2",
        tables,
        None,
    )
    assert ids(res) == ["a"]
    assert res.table.colnames == tables["ivoa.obscore"].colnames


# -- select list, metadata, names -----------------------------------------------------


def test_metadata_and_masks_are_kept(tables) -> None:
    res = run_adql("SELECT s_ra AS ra, t_exptime FROM ivoa.obscore", tables, None).table
    src = tables["ivoa.obscore"]["s_ra"]
    assert res["ra"].unit == src.unit and res["ra"].description == src.description
    assert res["ra"].format == src.format and res["ra"].meta == src.meta
    assert res["t_exptime"].mask.tolist() == [False, True, False, False, False]
    assert res["t_exptime"].unit == "s"


def test_star_qualified_star_and_duplicate_names(tables) -> None:
    res = run_adql("SELECT o.*, s_ra, s_ra * 2, ABS(s_dec) FROM ivoa.obscore AS o", tables, 2)
    names = res.table.colnames
    assert names[:7] == tables["ivoa.obscore"].colnames
    assert names[7:] == ["s_ra_2", "col3", "abs"]
    np.testing.assert_allclose(res.table["col3"], [123.7, 20.0])


def test_three_part_and_quoted_identifiers(tables) -> None:
    res = run_adql(
        'SELECT ivoa.obscore.obs_id, "S_RA" FROM "ivoa"."ObsCore" '
        "WHERE ivoa.ObsCore.calib_level = 3",
        tables,
        None,
    )
    assert ids(res) == ["c"]


# -- WHERE -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, expected",
    [
        ("calib_level = 2 AND NOT lsst_band = 'g'", ["a", "b"]),
        ("calib_level <> 2 OR s_ra > 100", ["c", "d", "e"]),
        ("calib_level != 2", ["c", "e"]),
        ("lsst_band IN ('r', 'g')", ["b", "d"]),
        ("lsst_band NOT IN ('r', 'g')", ["a", "c", "e"]),
        ("s_ra BETWEEN 10 AND 62", ["a", "b", "c"]),
        ("s_ra NOT BETWEEN 10 AND 62", ["d", "e"]),
        ("obs_id LIKE '_'", ["a", "b", "c", "d", "e"]),
        ("s_region LIKE 'POLY%'", ["a", "c", "e"]),
        ("s_region LIKE 'poly%'", []),  # LIKE is case-sensitive in ADQL
        ("s_region NOT LIKE '%ICRS%'", ["c"]),
        ("t_exptime IS NULL", ["b"]),
        ("t_exptime IS NOT NULL AND t_exptime < 10", ["d", "e"]),
        ("t_exptime > 10", ["a", "c"]),  # NULL compares false
        ("NOT t_exptime > 10", ["d", "e"]),  # ... and so does its negation
        ("-s_dec + 1 > 37 AND (s_ra - 1) / 2 < 30.45", ["a"]),
        ("obs_id || lsst_band = 'ci'", ["c"]),
        ("MOD(calib_level, 2) = 1 AND FLOOR(s_ra) = 62", ["c"]),
        ("ROUND(s_ra, 1) = 61.9 OR CEILING(s_ra) = 10", ["a", "b"]),
        ("UPPER(lsst_band) = 'G' OR LOWER('X') = obs_id", ["d"]),
        ("ABS(SIN(RADIANS(s_dec))) < 0.01 AND SQRT(s_ra) > 14", ["d", "e"]),
    ],
)
def test_where_constructs(tables, where: str, expected: list[str]) -> None:
    assert ids(run_adql(f"SELECT obs_id FROM ivoa.obscore WHERE {where}", tables, None)) == expected


# -- geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, expected",
    [
        ("CONTAINS(POINT('ICRS', 62.0, -37.0), s_region) = 1", ["a", "c"]),
        ("1 = CONTAINS(POINT('', 62.0, -37.0), s_region)", ["a", "c"]),
        ("CONTAINS(POINT('ICRS', 62.0, -37.0), s_region) = 0", ["b", "d", "e"]),
        ("CONTAINS(POINT('ICRS', 0.0, 0.0), s_region) = 1", ["e"]),
        ("CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', 62, -37, 0.2)) = 1", ["a", "c"]),
        ("INTERSECTS(CIRCLE('ICRS', 10.6, 5, 0.11), s_region) = 1", ["b"]),
        ("INTERSECTS(s_region, POLYGON('ICRS', 199, -1, 201, -1, 201, 1, 199, 1)) = 1", ["d"]),
        ("INTERSECTS(BOX('ICRS', 0, 0, 1, 1), s_region) = 1", ["e"]),
        ("DISTANCE(POINT('ICRS', s_ra, s_dec), POINT('ICRS', 0, 0)) < 0.1", ["e"]),
        ("DISTANCE(s_ra, s_dec, 200.0, 1.0) BETWEEN 0.99 AND 1.01", ["d"]),
    ],
)
def test_geometry_predicates(tables, where: str, expected: list[str]) -> None:
    assert ids(run_adql(f"SELECT obs_id FROM ivoa.obscore WHERE {where}", tables, None)) == expected


def test_distance_value_and_region_cache(tables) -> None:
    res = run_adql(
        "SELECT DISTANCE(POINT('ICRS', s_ra, s_dec), POINT('ICRS', 10, 4)) AS d "
        "FROM ivoa.obscore WHERE obs_id = 'b'",
        tables,
        None,
    )
    assert res.table["d"][0] == pytest.approx(1.0, abs=1e-9)
    run_adql(
        "SELECT obs_id FROM ivoa.obscore WHERE CONTAINS(POINT('', 1, 1), s_region) = 1",
        tables,
        None,
    )
    cached = tables["ivoa.obscore"].meta["_region_cache"]["s_region"][1]
    assert isinstance(cached, g.RegionArray) and len(cached) == 5


@pytest.mark.parametrize(
    "query, fragment",
    [
        (
            "SELECT obs_id FROM ivoa.obscore WHERE CONTAINS(POINT('GALACTIC', 1, 2), s_region) = 1",
            "coordinate system",
        ),
        ("SELECT obs_id FROM ivoa.obscore WHERE CONTAINS(POINT('ICRS', 1), s_region) = 1", "POINT"),
        (
            "SELECT obs_id FROM ivoa.obscore WHERE CONTAINS(POINT('ICRS', 'x', 1), s_region) = 1",
            "expects number",
        ),
        ("SELECT obs_id FROM ivoa.obscore WHERE DISTANCE(1, 2, 3) > 1", "DISTANCE"),
    ],
)
def test_geometry_errors(tables, query: str, fragment: str) -> None:
    with pytest.raises(AdqlError, match=fragment):
        run_adql(query, tables, None)


def test_disabled_functions(tables) -> None:
    query = "SELECT obs_id FROM ivoa.obscore WHERE INTERSECTS(CIRCLE('', 10, 5, 1), s_region) = 1"
    assert ids(run_adql(query, tables, None)) == ["b"]
    with pytest.raises(AdqlError, match="function INTERSECTS is not supported by this service"):
        run_adql(query, tables, None, disabled_functions=frozenset({"INTERSECTS"}))
    # other queries still work under the same profile
    ok = run_adql(
        "SELECT obs_id FROM ivoa.obscore WHERE CONTAINS(POINT('', 10, 5), s_region)=1",
        tables,
        None,
        disabled_functions=frozenset({"INTERSECTS"}),
    )
    assert ids(ok) == ["b"]


# -- ORDER BY, DISTINCT, aggregates ------------------------------------------------------


def test_order_by_name_alias_position_and_multiple_keys(tables) -> None:
    q = "SELECT obs_id, calib_level AS lvl, s_ra FROM ivoa.obscore ORDER BY {}"
    assert ids(run_adql(q.format("s_ra DESC"), tables, None)) == ["e", "d", "c", "a", "b"]
    assert ids(run_adql(q.format("lvl, 3 DESC"), tables, None)) == ["e", "d", "a", "b", "c"]
    assert ids(run_adql(q.format("2 DESC, obs_id"), tables, None)) == ["c", "a", "b", "d", "e"]
    nulls = run_adql("SELECT obs_id FROM ivoa.obscore ORDER BY t_exptime", tables, None)
    assert ids(nulls) == ["d", "e", "a", "c", "b"]


def test_distinct(tables) -> None:
    res = run_adql("SELECT DISTINCT lsst_band FROM ivoa.obscore ORDER BY lsst_band", tables, None)
    assert list(res.table["lsst_band"]) == ["g", "i", "r"]


def test_aggregates_with_and_without_group_by(tables) -> None:
    res = run_adql(
        "SELECT COUNT(*), COUNT(t_exptime), MIN(s_ra), MAX(obs_id), SUM(calib_level), "
        "AVG(t_exptime) FROM ivoa.obscore",
        tables,
        None,
    ).table
    assert res.colnames == ["count", "count_2", "min", "max", "sum", "avg"]
    assert res[0]["count"] == 5 and res[0]["count_2"] == 4
    assert res[0]["min"] == 10.0 and res["min"].unit == "deg" and res[0]["max"] == "e"
    assert res[0]["sum"] == 10 and res[0]["avg"] == pytest.approx(63.0 / 4)
    grouped = run_adql(
        "SELECT lsst_band, COUNT(*) AS n, MAX(calib_level) AS top "
        "FROM ivoa.obscore GROUP BY lsst_band HAVING COUNT(*) >= 1 "
        "ORDER BY n DESC, lsst_band",
        tables,
        None,
    ).table
    assert list(grouped["lsst_band"]) == ["i", "g", "r"]
    assert list(grouped["n"]) == [3, 1, 1] and list(grouped["top"]) == [3, 2, 2]
    empty = run_adql(
        "SELECT COUNT(*) AS n, MAX(s_ra) AS m FROM ivoa.obscore WHERE s_ra < 0", tables, None
    ).table
    assert empty["n"][0] == 0 and empty["m"].mask[0]


def test_non_grouped_column_is_rejected(tables) -> None:
    with pytest.raises(AdqlError, match="GROUP BY"):
        run_adql("SELECT obs_id, COUNT(*) FROM ivoa.obscore", tables, None)


# -- TOP / MAXREC ------------------------------------------------------------------------


def test_top_and_maxrec_overflow(tables) -> None:
    q = "SELECT obs_id FROM ivoa.obscore"
    res = run_adql("SELECT TOP 2 obs_id FROM ivoa.obscore", tables, None)
    assert len(res.table) == 2 and not res.overflow
    res = run_adql("SELECT TOP 2 obs_id FROM ivoa.obscore", tables, 5)
    assert len(res.table) == 2 and not res.overflow
    res = run_adql(q, tables, 3)
    assert ids(res) == ["a", "b", "c"] and res.overflow
    res = run_adql(q, tables, 5)
    assert len(res.table) == 5 and not res.overflow
    res = run_adql("SELECT TOP 4 obs_id FROM ivoa.obscore", tables, 3)
    assert len(res.table) == 3 and res.overflow
    res = run_adql("SELECT * FROM ivoa.obscore", tables, 0)
    assert len(res.table) == 0 and res.overflow
    assert res.table.colnames == tables["ivoa.obscore"].colnames
    res = run_adql("SELECT * FROM ivoa.obscore WHERE s_ra < 0", tables, 0)
    assert len(res.table) == 0 and not res.overflow


# -- joins -------------------------------------------------------------------------------


def test_upload_join_point_in_region(tables) -> None:
    tables["tap_upload.targets"] = Table(
        {"name": ["t1", "t2", "t3"], "ra": [62.0, 0.0, 150.0], "dec": [-37.0, 0.0, 0.0]}
    )
    query = (
        "SELECT t.*, o.* FROM tap_upload.targets AS t JOIN ivoa.ObsCore AS o "
        "ON CONTAINS(POINT('ICRS', t.ra, t.dec), o.s_region) = 1"
    )
    res = run_adql(query, tables, None).table
    pairs = sorted(zip(res["name"], res["obs_id"], strict=True))
    assert pairs == [("t1", "a"), ("t1", "c"), ("t2", "e")]
    assert res.colnames[:3] == ["name", "ra", "dec"] and "s_ra" in res.colnames
    assert res["s_ra"].unit == "deg"
    comma = run_adql(
        "SELECT t.name, o.obs_id FROM tap_upload.targets t, ivoa.obscore o "
        "WHERE 1 = CONTAINS(POINT('ICRS', t.ra, t.dec), o.s_region) "
        "AND o.calib_level = 3",
        tables,
        None,
    ).table
    assert list(zip(comma["name"], comma["obs_id"], strict=True)) == [("t1", "c")]


def test_join_with_equality_and_ambiguity(tables) -> None:
    tables["tap_upload.bands"] = Table({"lsst_band": ["i", "g"], "lambda": [750.0, 480.0]})
    res = run_adql(
        "SELECT o.obs_id, b.lambda FROM ivoa.obscore AS o JOIN tap_upload.bands AS b "
        "ON o.lsst_band = b.lsst_band ORDER BY o.obs_id",
        tables,
        None,
    ).table
    assert list(res["obs_id"]) == ["a", "c", "d", "e"]
    assert list(res["lambda"]) == [750.0, 750.0, 480.0, 750.0]
    with pytest.raises(AdqlError, match="ambiguous"):
        run_adql("SELECT lsst_band FROM ivoa.obscore o, tap_upload.bands b", tables, None)


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("SELEC x", "line 1, column 1"),
        ("SELECT obs_id FROM", "line 1, column 18"),
        ("SELECT foo FROM ivoa.ObsCore", "column 'foo' not found in ivoa.ObsCore"),
        ("SELECT * FROM ivoa.nothere", "table 'ivoa.nothere' does not exist"),
        ("SELECT x.obs_id FROM ivoa.obscore", "'x' is not in the FROM clause"),
        ("DROP TABLE ivoa.obscore", "SELECT"),
        ("INSERT INTO ivoa.obscore VALUES (1)", "SELECT"),
        ("SELECT obs_id FROM ivoa.obscore WHERE obs_id > 3", "cannot compare"),
        ("SELECT obs_id + 1 FROM ivoa.obscore", "expects number"),
        ("SELECT ABS(s_ra, 2) FROM ivoa.obscore", "arguments"),
        ("SELECT NOSUCHFN(s_ra) FROM ivoa.obscore", "NOSUCHFN"),
        ("SELECT obs_id FROM ivoa.obscore WHERE COUNT(*) > 1", "not allowed"),
        ("SELECT obs_id FROM (SELECT obs_id FROM ivoa.obscore) AS s", "not supported"),
        ("SELECT obs_id FROM ivoa.obscore ORDER BY 9", "out of range"),
        ("", "empty"),
    ],
)
def test_bad_queries_raise_adql_error(tables, query: str, fragment: str) -> None:
    with pytest.raises(AdqlError, match=fragment) as info:
        run_adql(query, tables, None)
    assert "\n" not in str(info.value)


def test_case_insensitive_table_name_and_tables_unchanged(tables) -> None:
    before = {k: t.copy() for k, t in tables.items()}
    run_adql("SELECT TOP 3 * FROM IVOA.OBSCORE ORDER BY s_ra DESC", tables, None)
    for key, table in before.items():
        assert tables[key].colnames == table.colnames
        assert all((tables[key][c] == table[c]).all() for c in table.colnames)


def test_concurrent_queries_agree(tables) -> None:
    queries = [
        "SELECT obs_id FROM ivoa.obscore WHERE CONTAINS(POINT('', 62, -37), s_region) = 1",
        "SELECT obs_id FROM ivoa.obscore WHERE INTERSECTS(CIRCLE('', 0, 0, 1), s_region) = 1",
        "SELECT lsst_band, COUNT(*) AS n FROM ivoa.obscore GROUP BY lsst_band ORDER BY n DESC",
    ]
    expected = [run_adql(q, dict(tables), None).table.pformat() for q in queries]
    fresh = {k: t.copy() for k, t in tables.items()}  # a cold cache for the threads
    for t in fresh.values():
        t.meta.pop("_region_cache", None)
    results: list[tuple[int, list[str]]] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(5):
                results.append((i % 3, run_adql(queries[i % 3], fresh, None).table.pformat()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 60
    assert all(table == expected[i] for i, table in results)


def test_point_in_region_over_100k_rows_is_fast() -> None:
    import time

    rng = np.random.default_rng(5)
    n = 100_000
    ra, dec = rng.uniform(50, 70, n), rng.uniform(-45, -30, n)
    d = 0.15
    regions = [
        f"POLYGON ICRS {a - d:.6f} {b - d:.6f} {a + d:.6f} {b - d:.6f} "
        f"{a + d:.6f} {b + d:.6f} {a - d:.6f} {b + d:.6f}"
        for a, b in zip(ra, dec, strict=True)
    ]
    big = {"ivoa.obscore": Table({"obs_id": np.arange(n), "s_region": regions})}
    query = "SELECT obs_id FROM ivoa.obscore WHERE CONTAINS(POINT('ICRS', 62, -37), s_region) = 1"
    run_adql(query, big, None)  # builds the parsed-region cache
    start = time.perf_counter()
    res = run_adql(query, big, None)
    elapsed = time.perf_counter() - start
    cos_dec = np.cos(np.radians(-37.0))
    rough = (np.abs(ra - 62) < d * 0.9) & (np.abs(dec + 37) < d * 0.9)  # surely inside
    assert set(np.flatnonzero(rough)) <= set(res.table["obs_id"].tolist())
    assert len(res.table) <= np.count_nonzero(
        (np.abs(ra - 62) * cos_dec < 0.2) & (np.abs(dec + 37) < 0.2)
    )
    assert elapsed < 0.1
