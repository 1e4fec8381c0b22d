"""``SkyConfig(naming="dp1")``: Rubin Data Preview 1 shapes (LSSTComCam, TAN-SIP headers).

Expected values come from dax_obscore's ``configs/dp1.yaml`` (collection, facility,
subtypes, identifier formats, obs_id templates, coadd size), the DP1 documentation and obs_lsst
(LSSTComCam detectors and filters), and are checked with independent code here: the
spherical polygon test of test_sky and astropy.wcs on the written headers.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
from collections import Counter

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from obsharvest.simarchive.sky.survey_sky import Sky, SkyConfig

from .test_sky import polygon_contains, polygons_contain

TARGET = (62.0, -37.0)
DATALINK = "http://127.0.0.1:8123/api/datalink/links"
VISIT_SUBTYPES = {"lsst.raw": 1, "lsst.visit_image": 2, "lsst.difference_image": 3}
COADD_SUBTYPES = {"lsst.deep_coadd": 3, "lsst.template_coadd": 3}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
DP1_ID = re.compile(rf"^ivo://org\.rubinobs/lsst-dp1\?repo=dp1&id={UUID}$")


@pytest.fixture(scope="module")
def sky() -> Sky:
    return Sky(SkyConfig(naming="dp1"))


@pytest.fixture(scope="module")
def table(sky: Sky):
    return sky.obscore_table(DATALINK)


@pytest.fixture(scope="module")
def subtype(table) -> np.ndarray:
    return np.asarray(table["dataproduct_subtype"], dtype=str)


@pytest.fixture(scope="module")
def at_target(table) -> np.ndarray:
    return polygons_contain(list(np.asarray(table["s_region"], dtype=str)), *TARGET)


def _row_ids(table) -> list[str]:
    """Datalink IDs recovered from access_url the way a client would (parse the query)."""
    return [
        urllib.parse.parse_qs(urllib.parse.urlsplit(u).query)["ID"][0]
        for u in np.asarray(table["access_url"], dtype=str)
    ]


def test_collection_subtypes_levels_and_identifiers(sky: Sky, table, subtype) -> None:
    assert set(table["obs_collection"]) == {"LSST.DP1"}
    assert set(table["facility_name"]) == {"Rubin:Simonyi"}
    assert set(table["instrument_name"]) == {"LSSTComCam"}
    levels = dict(zip(subtype.tolist(), np.asarray(table["calib_level"]).tolist(), strict=True))
    assert levels == VISIT_SUBTYPES | COADD_SUBTYPES
    ids = _row_ids(table)
    assert all(DP1_ID.match(i) for i in ids)
    assert ids == [p.id for p in sky.products]
    assert all(DP1_ID.match(d) for d in np.asarray(table["obs_publisher_did"], dtype=str))
    assert len(set(ids)) == len(ids)
    # the whole ID is one query value: '?', '=', '&' and '/' all escaped, as on the RSP
    assert all(
        "?ID=ivo%3A%2F%2Forg.rubinobs%2Flsst-dp1%3Frepo%3Ddp1%26id%3D" in u
        for u in np.asarray(table["access_url"][:50], dtype=str)
    )
    safe = re.compile(r"^[A-Za-z0-9_./-]+\.fits$")
    paths = [p.file_path for p in sky.products]
    assert len(set(paths)) == len(paths) and all(safe.match(x) for x in paths)
    assert not any("calexp" in x or "Coadd" in x for x in paths)


def test_visit_ids_filters_and_obs_ids_look_like_dp1(sky: Sky, table, subtype) -> None:
    visit_rows = np.isin(subtype, list(VISIT_SUBTYPES))
    visits = np.asarray(table["lsst_visit"][visit_rows])
    t_min = np.asarray(table["t_min"][visit_rows])
    day_obs, seq = np.divmod(visits, 100_000)
    for d, s, t in list(zip(day_obs.tolist(), seq.tolist(), t_min.tolist(), strict=True))[::7]:
        date = dt.datetime.strptime(str(d), "%Y%m%d").date()
        assert dt.date(2024, 10, 24) <= date <= dt.date(2024, 12, 11)
        # day_obs rolls over at noon in Chile (UTC-12h)
        assert date == (dt.datetime(1858, 11, 17) + dt.timedelta(days=t - 0.5)).date()
        assert 1 <= s < 100_000
    assert len(str(visits[0])) == 13
    i_band = np.asarray(table["lsst_band"], dtype=str) == "i"
    assert set(np.asarray(table["lsst_filter"][i_band & visit_rows], dtype=str)) == {"i_06"}
    assert np.all(
        table["lsst_ccdvisitid"][visit_rows] == visits * 1000 + table["lsst_detector"][visit_rows]
    )
    # obs_id is the exposure/visit name, shared by the 9 detectors and the 3 visit kinds
    by_visit: dict[int, set[str]] = {}
    for p in sky.products:
        if p.visit is not None:
            by_visit.setdefault(p.visit, set()).add(p.obs_id)
    for visit, obs_ids in by_visit.items():
        assert obs_ids == {f"CC_O_{visit // 100_000}_{visit % 100_000:06d}"}
    p = next(q for q in sky.products if q.subtype == "lsst.visit_image")
    title = table["obs_title"][sky.products.index(p)]
    assert title.startswith(f"visit_image - {p.band} - {p.obs_id}-{p.detector_name} 20")
    assert title.endswith("Z")
    coadds = [q for q in sky.products if q.visit is None]
    assert {q.obs_id for q in coadds if q.patch == 14} == {"lsst_cells_v1-5063-14"}
    assert {q.tract for q in coadds} == {5063} and len(coadds) == 100 * 6 * 2
    assert {(q.naxis1, q.naxis2) for q in coadds} == {(340, 340)}  # 3400 px / binning 10


def test_comcam_has_nine_detectors(sky: Sky) -> None:
    names = {p.detector: p.detector_name for p in sky.products if p.visit is not None}
    assert names == {3 * x + y: f"R22_S{x}{y}" for x in range(3) for y in range(3)}
    per_visit = Counter(p.visit for p in sky.products if p.subtype == "lsst.visit_image")
    assert set(per_visit.values()) == {9} and len(per_visit) == sky.config.n_visits


def test_field_centre_has_tens_of_visit_images_and_padding_false_positives(
    sky: Sky, table, subtype, at_target
) -> None:
    hit = Counter(subtype[at_target])
    assert hit["lsst.deep_coadd"] == hit["lsst.template_coadd"] == 12
    assert hit["lsst.raw"] == hit["lsst.visit_image"] == hit["lsst.difference_image"] >= 30
    deep = at_target & (subtype == "lsst.deep_coadd")
    assert set(np.asarray(table["lsst_patch"][deep])) == {4, 14}

    visit_image = at_target & (subtype == "lsst.visit_image")
    assert len(set(np.asarray(table["lsst_band"][visit_image], dtype=str))) >= 5
    matched_visits = np.asarray(table["lsst_visit"][visit_image])
    pairs = [v for v, n in Counter(matched_visits.tolist()).items() if n >= 2]
    assert pairs  # two detectors of one visit both match near their common edge

    truth = sky.truth(*TARGET)
    in_truth = np.array([i in truth for i in _row_ids(table)])
    assert in_truth.sum() == len(truth)
    assert not np.any(in_truth & ~at_target)
    false_pos = visit_image & ~in_truth
    assert false_pos.sum() >= 3
    true_visits = np.asarray(table["lsst_visit"][visit_image & in_truth])
    assert len(true_visits) == len(set(true_visits.tolist())) >= 30
    coadd = np.isin(subtype, list(COADD_SUBTYPES))
    assert np.array_equal(in_truth[coadd], at_target[coadd])


def test_visit_image_header_is_tan_sip_and_size_exact(sky: Sky, tmp_path) -> None:
    corner = [q for q in sky.products if q.detector == 0]
    for sub in ("lsst.visit_image", "lsst.difference_image"):
        p = next(q for q in corner if q.subtype == sub)
        path = tmp_path / "v.fits"
        sky.write_fits(p.id, str(path))
        assert sky.fits_size(p.id) == os.path.getsize(path)
        with fits.open(path) as hdul:
            hdul.verify("exception")
            assert [h.name for h in hdul] == ["IMAGE", "IMAGE", "MASK", "VARIANCE"]
            head, cel = hdul[0].header, hdul[1].header
            assert head["INSTRUME"] == "LSSTComCam" and head["FILTER"] == p.physical_filter
            assert head["DATAPROD"] == sub
            assert cel["CTYPE1"] == "RA---TAN-SIP" and cel["CTYPE2"] == "DEC--TAN-SIP"
            assert cel["A_ORDER"] == cel["B_ORDER"] == 3
            assert cel["AP_ORDER"] == cel["BP_ORDER"] == 4
            assert "A_2_0" in cel and "B_0_3" in cel and "AP_1_0" in cel
            wcs = WCS(cel)
            assert wcs.sip is not None
            nx, ny = wcs.pixel_shape
            assert (nx, ny) == (p.naxis1, p.naxis2)
            # crpix near the detector centre, as Rubin writes them
            assert abs(cel["CRPIX1"] - (nx + 1) / 2) < 1 and abs(cel["CRPIX2"] - (ny + 1) / 2) < 1
            # distortion: a few (unbinned) pixels at the corners of a corner detector
            xs = np.array([0.0, nx - 1.0, nx - 1.0, 0.0])
            ys = np.array([0.0, 0.0, ny - 1.0, ny - 1.0])
            # astropy's focal-plane coordinates are offsets from CRPIX in a shifted origin:
            # measure them against the reference pixel's own
            c1, c2 = cel["CRPIX1"] - 1.0, cel["CRPIX2"] - 1.0
            fx, fy = wcs.sip_pix2foc(np.append(xs, c1), np.append(ys, c2), 0)
            fx, fy = fx[:-1] - fx[-1], fy[:-1] - fy[-1]
            us, vs = xs - c1, ys - c2
            shift = np.hypot(fx - us, fy - vs) * sky.config.binning
            assert 1.0 < shift.max() < 10.0, shift
            # the written inverse polynomials agree with the forward ones
            bx, by = wcs.sip_foc2pix(fx, fy, 0)
            b0x, b0y = wcs.sip_foc2pix([0.0], [0.0], 0)
            assert np.allclose(bx - b0x, us, atol=0.01) and np.allclose(by - b0y, vs, atol=0.01)


def test_raws_and_coadds_stay_plain_tan(sky: Sky, tmp_path) -> None:
    for sub in ("lsst.raw", "lsst.deep_coadd", "lsst.template_coadd"):
        p = next(q for q in sky.products if q.subtype == sub)
        sky.write_fits(p.id, str(tmp_path / "p.fits"))
        assert sky.fits_size(p.id) == os.path.getsize(tmp_path / "p.fits")
        with fits.open(tmp_path / "p.fits") as hdul:
            cel = hdul[0].header if len(hdul) == 1 else hdul[1].header
            assert cel["CTYPE1"] == "RA---TAN" and "A_ORDER" not in cel
            assert WCS(cel).sip is None


def test_truth_agrees_with_footprint_contains_on_written_files(sky: Sky, tmp_path) -> None:
    ps = sky.products
    centres = SkyCoord([p.s_ra for p in ps], [p.s_dec for p in ps], unit="deg")
    close = np.nonzero(centres.separation(SkyCoord(*TARGET, unit="deg")).deg < 0.3)[0]
    by_sub: dict[str, list] = {}
    for i in close:
        by_sub.setdefault(ps[i].subtype, []).append(ps[i])
    rng = np.random.default_rng(5)
    points = [TARGET] + [
        (62.0 + rng.uniform(-0.35, 0.35), -37.0 + rng.uniform(-0.3, 0.3)) for _ in range(19)
    ]
    truths = [sky.truth(ra, dec) for ra, dec in points]
    coords = SkyCoord([p[0] for p in points], [p[1] for p in points], unit="deg")
    checked = inside = 0
    for sub in ("lsst.visit_image", "lsst.difference_image", "lsst.raw", "lsst.deep_coadd"):
        for p in by_sub[sub][:8]:
            sky.write_fits(p.id, str(tmp_path / "t.fits"))
            with fits.open(tmp_path / "t.fits") as hdul:
                wcs = WCS(hdul[0].header if len(hdul) == 1 else hdul[1].header)
            x, y = wcs.world_to_pixel(coords)
            contains = wcs.footprint_contains(coords)
            nx, ny = wcs.pixel_shape
            for k in range(len(points)):
                if min(abs(x[k]), abs(x[k] - nx + 1), abs(y[k]), abs(y[k] - ny + 1)) < 1.0:
                    continue  # footprint_contains uses 0 < x < N-1; truth [-0.5, N-0.5)
                assert (p.id in truths[k]) == bool(contains[k]), (p.obs_id, sub, points[k])
                checked += 1
                inside += bool(contains[k])
    assert checked > 400 and inside > 40


def test_truth_follows_the_sip_distortion_not_plain_tan() -> None:
    """At full resolution the SIP terms move corner pixels by a few pixels: points in that
    band are inside for the SIP WCS and outside for the same header read as plain TAN."""
    full = Sky(SkyConfig(naming="dp1", binning=1, n_visits=6))
    p = next(q for q in full.products if q.subtype == "lsst.visit_image" and q.detector == 8)
    header = full.celestial_header(p.id)
    sip_wcs = WCS(header)
    plain = header.copy()
    plain["CTYPE1"], plain["CTYPE2"] = "RA---TAN", "DEC--TAN"
    for key in [k for k in plain if re.match(r"^(A|B|AP|BP)_", k)]:
        del plain[key]
    tan_wcs = WCS(plain)
    assert tan_wcs.sip is None
    nx, ny = sip_wcs.pixel_shape
    grid = np.linspace(-8.0, 8.0, 9)
    differ = 0
    for cx, cy in ((0.0, 0.0), (nx - 1.0, 0.0), (nx - 1.0, ny - 1.0), (0.0, ny - 1.0)):
        for dx in grid:
            for dy in grid:
                x, y = cx + dx, cy + dy
                if min(abs(x + 0.5), abs(x - nx + 0.5), abs(y + 0.5), abs(y - ny + 0.5)) < 0.1:
                    continue
                ra, dec = sip_wcs.all_pix2world([[x, y]], 0)[0]
                expect = -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5
                assert (p.id in full.truth(ra, dec)) == expect, (x, y)
                tx, ty = tan_wcs.wcs_world2pix([[ra, dec]], 0)[0]
                differ += (-0.5 <= tx < nx - 0.5 and -0.5 <= ty < ny - 0.5) != expect
    assert differ >= 10


def test_s_region_holds_points_the_sip_wcs_does_not(sky: Sky, tmp_path) -> None:
    """Just inside each padded s_region corner lies sky no visit_image pixel covers."""
    visit_images = [q for q in sky.products if q.subtype == "lsst.visit_image"][::97][:6]
    for p in visit_images:
        sky.write_fits(p.id, str(tmp_path / "s.fits"))
        with fits.open(tmp_path / "s.fits") as hdul:
            wcs = WCS(hdul[1].header)
        v = np.array(p.s_region.split()[2:], dtype=float).reshape(-1, 2)
        centre = SkyCoord(p.s_ra, p.s_dec, unit="deg")
        for ra, dec in v:
            vertex = SkyCoord(ra, dec, unit="deg")
            # 20" in from the vertex towards the centre: inside the ~70" corner padding
            pa = vertex.position_angle(centre)
            probe = vertex.directional_offset_by(pa, 20.0 * u.arcsec)
            assert polygon_contains(p.s_region, probe.ra.deg, probe.dec.deg)
            assert not wcs.footprint_contains(probe)
            assert p.id not in sky.truth(probe.ra.deg, probe.dec.deg)


def test_dp1_is_deterministic_and_independent_of_dp02(sky: Sky, table) -> None:
    again = Sky(SkyConfig(naming="dp1"))
    assert [p.id for p in again.products] == [p.id for p in sky.products]
    assert again.products[500] == sky.products[500]
    assert again.celestial_header(sky.products[1].id) == sky.celestial_header(sky.products[1].id)
    dp02 = Sky(SkyConfig(n_visits=12))
    assert not {p.uuid for p in dp02.products} & {p.uuid for p in sky.products}
    assert {p.subtype for p in dp02.products} == {
        "lsst.raw",
        "lsst.calexp",
        "lsst.goodSeeingDiff_differenceExp",
        "lsst.deepCoadd_calexp",
        "lsst.goodSeeingCoadd",
    }
