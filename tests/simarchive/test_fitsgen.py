"""FITS files of the embedded archive: exact sizes, Rubin-like layout, WCS and truth."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from obsharvest.simarchive.sky.survey_sky import Sky, SkyConfig

TARGET = SkyCoord(62.0, -37.0, unit="deg")
KINDS = (
    "lsst.raw",
    "lsst.calexp",
    "lsst.goodSeeingDiff_differenceExp",
    "lsst.deepCoadd_calexp",
    "lsst.goodSeeingCoadd",
)


@pytest.fixture(scope="module")
def sky() -> Sky:
    return Sky(SkyConfig())


@pytest.fixture(scope="module")
def near_target(sky: Sky) -> dict[str, list]:
    """Products per subtype whose s_region centre is within 0.25 deg of the target."""
    ps = sky.products
    centres = SkyCoord(np.array([p.s_ra for p in ps]), np.array([p.s_dec for p in ps]), unit="deg")
    close = np.nonzero(centres.separation(TARGET).deg < 0.25)[0]
    out: dict[str, list] = {k: [] for k in KINDS}
    for i in close:
        out[ps[i].subtype].append(ps[i])
    return out


def _celestial(hdul: fits.HDUList) -> fits.Header:
    return hdul[0].header if len(hdul) == 1 else hdul[1].header


def test_every_kind_has_exact_size_and_rubin_layout(sky: Sky, near_target, tmp_path) -> None:
    for subtype in KINDS:
        p = near_target[subtype][0]
        path = tmp_path / f"{p.dataset_type}.fits"
        sky.write_fits(p.id, str(path))
        assert sky.fits_size(p.id) == os.path.getsize(path), subtype
        with fits.open(path) as hdul:
            hdul.verify("exception")
            if subtype == "lsst.raw":
                assert len(hdul) == 1
                assert hdul[0].data.dtype == np.uint16
                assert hdul[0].header["BZERO"] == 32768
                assert hdul[0].data.shape == (p.naxis2, p.naxis1)
            else:
                # Rubin names the data-less primary IMAGE too (seed §4.1.3)
                assert [h.name for h in hdul] == ["IMAGE", "IMAGE", "MASK", "VARIANCE"]
                assert hdul[0].data is None and "CTYPE1" not in hdul[0].header
                assert hdul[1].data.dtype.kind == "f" and hdul[1].data.dtype.itemsize == 4
                assert hdul[2].data.dtype.kind == "i" and hdul[2].data.dtype.itemsize == 4
                assert hdul[3].data.dtype.kind == "f"
                assert hdul[2].header["MP_BAD"] == 0 and hdul[2].header["MP_NO_DATA"] == 8
                assert hdul[2].header["MP_DETECTED"] == 5
                w1, w2, w3 = (WCS(hdul[i].header) for i in (1, 2, 3))
                assert w1.wcs.compare(w2.wcs) and w1.wcs.compare(w3.wcs)
                assert np.all(np.isfinite(hdul[3].data[np.isfinite(hdul[1].data)]))
                assert np.all(hdul[3].data[np.isfinite(hdul[3].data)] > 0)
            head = hdul[0].header
            assert head["TELESCOP"] and head["INSTRUME"] == "LSSTCam-imSim"
            assert head["BAND"] == p.band and head["EXPTIME"] == pytest.approx(p.exptime)
            assert head["MJD-OBS"] == pytest.approx(p.t_min)
            if p.visit is not None:
                assert (head["VISIT"], head["DETECTOR"]) == (p.visit, p.detector)
                assert head["CCDVISIT"] == p.visit * 1000 + p.detector
                assert head["FILTER"] == f"{p.band}_sim_1.4"
                for key in ("RA", "DEC", "ROTPA", "AIRMASS", "DATE-OBS"):
                    assert key in head
            else:
                assert (head["TRACT"], head["PATCH"]) == (3831, p.patch)
            cel = _celestial(hdul)
            wcs = WCS(cel)
            assert cel["CTYPE1"] == "RA---TAN" and cel["CTYPE2"] == "DEC--TAN"
            assert cel["RADESYS"] == "ICRS" and cel["EQUINOX"] == 2000.0
            assert wcs.pixel_shape == (p.naxis1, p.naxis2)
            assert np.linalg.det(wcs.pixel_scale_matrix) < 0  # RA increases to the left
            scale = proj_plane_pixel_scales(wcs) * 3600.0
            assert np.allclose(scale, 0.2 * sky.config.binning, rtol=1e-3)


def test_truth_agrees_with_footprint_contains_on_written_files(
    sky: Sky, near_target, tmp_path
) -> None:
    rng = np.random.default_rng(0)
    points = [(62.0, -37.0)] + [
        (62.0 + rng.uniform(-0.3, 0.3), -37.0 + rng.uniform(-0.25, 0.25)) for _ in range(14)
    ]
    truths = [sky.truth(ra, dec) for ra, dec in points]
    coords = SkyCoord([p[0] for p in points], [p[1] for p in points], unit="deg")
    checked = agreed_inside = 0
    for subtype in KINDS:
        for p in near_target[subtype][:12]:
            path = tmp_path / "t.fits"
            sky.write_fits(p.id, str(path))
            with fits.open(path) as hdul:
                wcs = WCS(_celestial(hdul))
            x, y = wcs.world_to_pixel(coords)
            contains = wcs.footprint_contains(coords)
            for k in range(len(points)):
                # footprint_contains uses 0 < x < N; truth uses [-0.5, N-0.5): skip the sliver
                nx, ny = wcs.pixel_shape
                if min(abs(x[k]), abs(x[k] - nx + 1), abs(y[k]), abs(y[k] - ny + 1)) < 1.0:
                    continue
                assert (p.id in truths[k]) == bool(contains[k]), (p.obs_id, points[k])
                checked += 1
                agreed_inside += bool(contains[k])
    assert checked > 500 and agreed_inside > 50


def test_target_truth_per_subtype_matches_written_headers(sky: Sky, tmp_path) -> None:
    truth = sky.truth(62.0, -37.0)
    kinds = {sky.product(i).subtype for i in truth}
    assert kinds == set(KINDS)
    coadds = [sky.product(i) for i in truth if sky.product(i).visit is None]
    assert {p.patch for p in coadds} == {3, 10} and len(coadds) == 24
    for p in coadds[:4]:
        sky.write_fits(p.id, str(tmp_path / "c.fits"))
        with fits.open(tmp_path / "c.fits") as hdul:
            assert WCS(hdul[1].header).footprint_contains(TARGET)
            assert hdul[1].header["BUNIT"] == "nJy"


def test_raw_has_nominal_wcs_and_calexp_an_offset_one(sky: Sky, tmp_path) -> None:
    seps = []
    for p in [q for q in sky.products if q.subtype == "lsst.raw"][::2001][:10]:
        calexp = next(q for q in sky.products[:] if q.obs_id == p.obs_id and q.calib_level == 2)
        sky.write_fits(p.id, str(tmp_path / "r.fits"))
        sky.write_fits(calexp.id, str(tmp_path / "c.fits"))
        with fits.open(tmp_path / "r.fits") as r, fits.open(tmp_path / "c.fits") as c:
            wr, wc = WCS(r[0].header), WCS(c[1].header)
        centre = (p.naxis1 / 2.0, p.naxis2 / 2.0)
        seps.append(wr.pixel_to_world(*centre).separation(wc.pixel_to_world(*centre)).arcsec)
    assert 0.3 < np.median(seps) < 3.0 and max(seps) < 6.0


def test_dead_amplifiers_are_flagged_no_data(sky: Sky, tmp_path) -> None:
    calexps = [q for q in sky.products if q.subtype == "lsst.calexp"][:48]
    dead = 0
    for p in calexps:
        sky.write_fits(p.id, str(tmp_path / "d.fits"))
        with fits.open(tmp_path / "d.fits") as hdul:
            no_data = (hdul[2].data & (1 << hdul[2].header["MP_NO_DATA"])) != 0
            if not no_data.any():
                assert np.isfinite(hdul[1].data).all()
                continue
            dead += 1
            rows, cols = np.nonzero(no_data)
            box = no_data[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()  # one rectangular amplifier
            assert abs(box.shape[0] - p.naxis2 / 2) <= 1 and abs(box.shape[1] - p.naxis1 / 8) <= 1
            assert np.isnan(hdul[1].data[no_data]).all()
            assert np.isfinite(hdul[1].data[~no_data]).all()
    assert 1 <= dead <= 20


def test_pixels_are_deterministic_and_differ_between_products(sky: Sky, tmp_path) -> None:
    a, b = [q for q in sky.products if q.subtype == "lsst.calexp"][:2]
    sky.write_fits(a.id, str(tmp_path / "a1.fits"))
    Sky(SkyConfig()).write_fits(a.id, str(tmp_path / "a2.fits"))
    sky.write_fits(b.id, str(tmp_path / "b.fits"))
    one = (tmp_path / "a1.fits").read_bytes()
    assert one == (tmp_path / "a2.fits").read_bytes()
    assert one != (tmp_path / "b.fits").read_bytes()


def test_full_size_calexp_has_exact_size_and_same_footprint(sky: Sky, tmp_path) -> None:
    big, small = Sky(SkyConfig(binning=1)), sky
    p = next(q for q in big.products if q.subtype == "lsst.calexp")
    path = tmp_path / "big.fits"
    try:
        big.write_fits(p.id, str(path))
        assert big.fits_size(p.id) == os.path.getsize(path) > 190_000_000
        with fits.open(path, memmap=True) as hdul:
            w_big = WCS(hdul[1].header)
            assert (hdul[1].header["NAXIS1"], hdul[1].header["NAXIS2"]) == (4072, 4000)
    finally:
        path.unlink(missing_ok=True)
    assert p.s_region == small.product(p.id).s_region
    small.write_fits(p.id, str(tmp_path / "small.fits"))
    with fits.open(tmp_path / "small.fits") as hdul:
        w_small = WCS(hdul[1].header)
    big_corners = SkyCoord(w_big.calc_footprint(center=False), unit="deg")
    small_corners = SkyCoord(w_small.calc_footprint(center=False), unit="deg")
    assert np.all(big_corners.separation(small_corners).arcsec < 1.0)
