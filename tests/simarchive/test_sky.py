"""Survey model and ObsCore table of the embedded archive, checked against the DP0.2 seed.

Expected values come from the seed tutorial (rubin-dp02-image-queries-tap.txt) and from
independent computations here (s_region parsing with great-circle edges, astropy WCS),
never from simarchive's own helpers.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from obsharvest.simarchive.sky.focalplane import detector_name, detector_number, detectors
from obsharvest.simarchive.sky.survey_sky import Sky, SkyConfig

TARGET = (62.0, -37.0)
DATALINK = "http://127.0.0.1:8123/api/datalink/links"
SEED_COLUMNS = [  # seed §2.2, in order
    "access_format",
    "access_url",
    "calib_level",
    "dataproduct_subtype",
    "dataproduct_type",
    "em_max",
    "em_min",
    "em_res_power",
    "em_xel",
    "facility_name",
    "instrument_name",
    "lsst_band",
    "lsst_ccdvisitid",
    "lsst_detector",
    "lsst_filter",
    "lsst_patch",
    "lsst_tract",
    "lsst_visit",
    "o_ucd",
    "obs_collection",
    "obs_id",
    "obs_publisher_did",
    "obs_title",
    "pol_xel",
    "s_dec",
    "s_fov",
    "s_ra",
    "s_region",
    "s_resolution",
    "s_xel1",
    "s_xel2",
    "t_exptime",
    "t_max",
    "t_min",
    "t_resolution",
    "t_xel",
    "target_name",
]
SEED_DATATYPES = {  # seed §2.2
    "calib_level": "int",
    "em_max": "double",
    "em_xel": "long",
    "lsst_ccdvisitid": "long",
    "lsst_detector": "long",
    "lsst_patch": "long",
    "s_region": "char",
    "s_xel1": "long",
    "t_min": "double",
    "obs_id": "char",
}
SEED_UNITS = {
    "em_max": "m",
    "s_ra": "deg",
    "s_fov": "deg",
    "s_resolution": "arcsec",
    "t_exptime": "s",
    "t_min": "d",
    "t_max": "d",
}
VISIT_SUBTYPES = ("lsst.raw", "lsst.calexp", "lsst.goodSeeingDiff_differenceExp")
COADD_SUBTYPES = ("lsst.deepCoadd_calexp", "lsst.goodSeeingCoadd")


def _xyz(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def polygons_contain(regions: list[str], ra: float, dec: float) -> np.ndarray:
    """Point in convex spherical polygons with great-circle edges (either winding)."""
    words = [r.split() for r in regions]
    assert all(w[:2] == ["POLYGON", "ICRS"] for w in words)
    v = np.array([w[2:] for w in words], dtype=float).reshape(len(words), -1, 2)
    corners = _xyz(v[..., 0], v[..., 1])
    edges = np.cross(corners, np.roll(corners, -1, axis=1))
    sides = edges @ _xyz(np.array(ra), np.array(dec))
    return np.all(sides > 0, axis=1) | np.all(sides < 0, axis=1)


def polygon_contains(region: str, ra: float, dec: float) -> bool:
    return bool(polygons_contain([region], ra, dec)[0])


@pytest.fixture(scope="module")
def sky() -> Sky:
    return Sky(SkyConfig())


@pytest.fixture(scope="module")
def table(sky: Sky):
    return sky.obscore_table(DATALINK)


@pytest.fixture(scope="module")
def at_target(table) -> np.ndarray:
    """Row mask: s_region contains (62, -37), decided by this test's own polygon test."""
    return polygons_contain(list(table["s_region"]), *TARGET)


def test_r20_s20_is_detector_78_and_numbering_is_complete() -> None:
    assert detector_number("R20_S20") == 78
    assert detector_name(78) == "R20_S20"
    names = [d.name for d in detectors()]
    assert len(names) == len(set(names)) == 189
    assert [d.number for d in detectors()] == list(range(189))
    assert not {"R00", "R04", "R40", "R44"} & {n[:3] for n in names}


def test_same_config_same_archive_other_seed_other_archive(sky: Sky, table) -> None:
    again = Sky(SkyConfig())
    assert [p.id for p in again.products] == [p.id for p in sky.products]
    assert again.products[100] == sky.products[100]
    t2 = again.obscore_table(DATALINK)
    for name in ("obs_id", "s_region", "access_url", "t_min", "lsst_visit", "s_ra"):
        assert np.array_equal(np.asarray(t2[name]), np.asarray(table[name])), name
    other = Sky(SkyConfig(seed=7)).obscore_table(DATALINK)
    assert not set(np.asarray(other["obs_publisher_did"])) & set(
        np.asarray(table["obs_publisher_did"])
    )
    assert list(other["s_region"][:50]) != list(table["s_region"][:50])
    assert all(uuid.UUID(p.uuid).version == 5 for p in sky.products[:100])


def test_columns_match_the_seed_schema(table) -> None:
    assert table.colnames == SEED_COLUMNS
    for name in table.colnames:
        col = table[name]
        assert col.description, name
        assert col.meta["datatype"] in {"char", "int", "long", "double"}, name
        assert (col.meta["arraysize"] == "*") == (col.meta["datatype"] == "char"), name
        assert "principal" in col.meta and "indexed" in col.meta and "std" in col.meta
    for name, datatype in SEED_DATATYPES.items():
        assert table[name].meta["datatype"] == datatype, name
    for name, unit in SEED_UNITS.items():
        assert str(table[name].unit) == unit, name
    assert table["s_region"].meta["utype"] == "obscore:Char.SpatialAxis.Coverage.Support.Area"
    assert table["lsst_visit"].meta["std"] == 0 and table["obs_id"].meta["std"] == 1


def test_row_values_look_like_dp02(sky: Sky, table) -> None:
    assert len(table) == len(sky.products) > 50_000
    url = re.compile(re.escape(DATALINK) + r"\?ID=butler%3A//dp02/[0-9a-f-]{36}$")
    did = re.compile(r"^ivo://org\.rubinobs/usdac/dp02\?repo=dp02&id=[0-9a-f-]{36}$")
    assert all(url.match(u) for u in table["access_url"][:2000])
    assert all(did.match(d) for d in table["obs_publisher_did"][:2000])
    assert set(table["access_format"]) == {"application/x-votable+xml;content=datalink"}
    assert set(table["dataproduct_type"]) == {"image"}
    assert set(table["obs_collection"]) == {"LSST.DP02"}
    assert set(table["instrument_name"]) == {"LSSTCam-imSim"}
    coadd = np.isin(np.asarray(table["dataproduct_subtype"], dtype=str), COADD_SUBTYPES)
    for name in ("lsst_visit", "lsst_detector", "lsst_ccdvisitid", "lsst_filter"):
        assert np.array_equal(np.ma.getmaskarray(table[name]), coadd), name
    for name in ("lsst_tract", "lsst_patch"):
        assert np.array_equal(np.ma.getmaskarray(table[name]), ~coadd), name
    assert set(np.asarray(table["lsst_tract"][coadd])) == {3831}
    visits = table["lsst_visit"][~coadd]
    assert visits.min() >= 100_000 and visits.max() <= 999_999
    assert np.all(
        table["lsst_ccdvisitid"][~coadd] == visits * 1000 + table["lsst_detector"][~coadd]
    )
    assert np.all(table["em_min"] < table["em_max"])
    assert np.all(table["em_max"] < 1.1e-6) and np.all(table["em_min"] > 3e-7)
    i_band = np.asarray(table["lsst_band"], dtype=str) == "i"
    assert set(np.asarray(table["lsst_filter"][i_band & ~coadd], dtype=str)) == {"i_sim_1.4"}
    vis = ~coadd
    assert np.allclose((table["t_max"][vis] - table["t_min"][vis]) * 86400.0, 30.0)
    assert np.all((table["t_min"] > 59_000) & (table["t_min"] < 61_001))
    assert set(table["s_xel1"][vis]) == {407} and set(table["s_xel2"][vis]) == {400}
    assert set(table["s_xel1"][coadd]) == {420}


def test_products_share_obs_id_per_detector_visit(sky: Sky) -> None:
    groups: dict[tuple[int, int], list] = {}
    for p in sky.products:
        if p.visit is not None:
            groups.setdefault((p.visit, p.detector), []).append(p)
    assert groups
    for (visit, det), ps in list(groups.items())[:3000]:
        assert sorted(p.subtype for p in ps) == sorted(VISIT_SUBTYPES)
        assert {p.calib_level for p in ps} == {1, 2, 3}
        assert len({p.obs_id for p in ps}) == 1
        assert ps[0].obs_id == f"{visit}-{detector_name(det)}"
        assert len({p.id for p in ps}) == len({p.obs_publisher_did for p in ps}) == 3
        assert len({p.s_region for p in ps}) == 1
        assert all(p.ccdvisitid == visit * 1000 + det for p in ps)
        assert all(p.tract is None and p.patch is None for p in ps)
    coadds = [p for p in sky.products if p.visit is None]
    assert len(coadds) == 49 * 6 * 2
    assert {p.obs_id for p in coadds if p.patch == 3 and p.band == "i"} == {"3831_3_i"}


def test_product_lookup_and_paths(sky: Sky) -> None:
    p = sky.products[1234]
    assert sky.product(p.id) == p
    with pytest.raises(KeyError):
        sky.product("butler://dp02/00000000-0000-0000-0000-000000000000")
    safe = re.compile(r"^[A-Za-z0-9_./-]+$")
    paths = [q.file_path for q in sky.products]
    assert len(set(paths)) == len(paths)
    assert all(safe.match(x) and x.endswith(".fits") for x in paths)
    calexp = next(q for q in sky.products if q.subtype == "lsst.calexp")
    expected = (
        f"dp02/calexp/{calexp.band}/{calexp.visit}/calexp_LSSTCam-imSim_{calexp.band}_"
        f"{calexp.band}_sim_1_4_{calexp.visit}_{calexp.detector_name}.fits"
    )
    assert calexp.file_path == expected


def test_band_mix_follows_the_seed_and_small_surveys_keep_every_band(sky: Sky) -> None:
    per_visit = {p.visit: p.band for p in sky.products if p.visit is not None}
    counts = Counter(per_visit.values())
    n = len(per_visit)
    assert n == 120
    seed_fractions = {"u": 0.07, "g": 0.11, "r": 0.27, "i": 0.25, "z": 0.13, "y": 0.17}
    for band, frac in seed_fractions.items():
        assert abs(counts[band] / n - frac) < 0.03, band
    small = Sky(SkyConfig(n_visits=12))
    small_counts = Counter({p.visit: p.band for p in small.products if p.visit}.values())
    assert all(small_counts[b] >= 2 for b in seed_fractions)


def test_point_query_at_62_m37_resembles_the_seed(sky: Sky, table, at_target) -> None:
    sub = np.asarray(table["dataproduct_subtype"], dtype=str)
    hit = Counter(sub[at_target])
    assert set(hit) == set(VISIT_SUBTYPES) | set(COADD_SUBTYPES)
    assert hit["lsst.raw"] == hit["lsst.calexp"] == hit["lsst.goodSeeingDiff_differenceExp"]
    assert hit["lsst.deepCoadd_calexp"] == hit["lsst.goodSeeingCoadd"] == 12
    assert set(np.asarray(table["calib_level"][at_target])) == {1, 2, 3}

    calexp = at_target & (sub == "lsst.calexp")
    assert set(np.asarray(table["lsst_band"][calexp], dtype=str)) == set("ugrizy")
    n_visits = len(set(np.asarray(table["lsst_visit"][calexp])))
    assert calexp.sum() > n_visits >= 100  # neighbouring padded detectors both match (§3.5)

    deep = at_target & (sub == "lsst.deepCoadd_calexp")
    assert set(np.asarray(table["lsst_patch"][deep])) == {3, 10}
    assert Counter(np.asarray(table["lsst_band"][deep], dtype=str)) == dict.fromkeys("ugrizy", 2)


def test_padding_gives_false_positives_but_never_misses(sky: Sky, table, at_target) -> None:
    truth = sky.truth(*TARGET)
    ids = np.asarray(table["access_url"], dtype=str)
    in_truth = np.array([u.split("?ID=")[1].replace("%3A", ":") in truth for u in ids])
    assert in_truth.sum() == len(truth)
    assert not np.any(in_truth & ~at_target)  # a padded s_region contains the true footprint
    sub = np.asarray(table["dataproduct_subtype"], dtype=str)
    calexp = sub == "lsst.calexp"
    false_pos = at_target & calexp & ~in_truth
    assert false_pos.sum() >= 5
    true_visits = np.asarray(table["lsst_visit"][calexp & in_truth])
    assert len(true_visits) == len(set(true_visits))  # one detector per visit can hold a point
    coadd = np.isin(sub, COADD_SUBTYPES)
    assert np.array_equal(in_truth[coadd], at_target[coadd])  # coadd regions are tight


def test_visit_s_region_is_the_footprint_padded_by_about_50_arcsec(sky: Sky, tmp_path) -> None:
    calexps = [p for p in sky.products if p.subtype == "lsst.calexp"][::997][:8]
    for p in calexps:
        path = tmp_path / "c.fits"
        sky.write_fits(p.id, str(path))
        with fits.open(path) as hdul:
            wcs = WCS(hdul[1].header)
        foot = wcs.calc_footprint(undistort=False)  # pixel-centre corners
        for ra, dec in foot:
            assert polygon_contains(p.s_region, ra, dec)
        v = np.array(p.s_region.split()[2:], dtype=float).reshape(-1, 2)
        a, b = _xyz(v[:, 0], v[:, 1]), _xyz(foot[:, 0], foot[:, 1])
        sep = np.degrees(np.arccos(np.clip(a @ b.T, -1, 1))).min(axis=1) * 3600.0
        assert np.all((sep > 50 * np.sqrt(2) - 15) & (sep < 50 * np.sqrt(2) + 20)), sep


def test_build_is_quick(sky: Sky) -> None:
    import time

    t0 = time.perf_counter()
    Sky(SkyConfig(seed=3)).obscore_table(DATALINK)
    assert time.perf_counter() - t0 < 10.0
