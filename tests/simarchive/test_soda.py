"""SODA sync cutouts: parameter parsing and FITS cutouts of generated DP0.2-like files."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from obsharvest.simarchive.sky.survey_sky import Sky, SkyConfig
from obsharvest.simarchive.soda import CutoutShape, SodaError, parse_soda_params, write_cutout
from obsharvest.simarchive.soda_region import pixel_box

DS = "ivo://org.rubinobs/usdac/dp02?repo=dp02&id=abc"


# ---------------------------------------------------------------------------
# parameters


def _usage_error(params: list[tuple[str, str]]) -> str:
    with pytest.raises(SodaError) as info:
        parse_soda_params(params)
    err = info.value
    assert err.status == 400
    assert str(err).startswith("UsageFault: ")
    return str(err)


def test_circle_param() -> None:
    ds, shape = parse_soda_params([("ID", DS), ("CIRCLE", "62.0 -37.0 0.01")])
    assert ds == DS
    assert shape.kind == "CIRCLE"
    assert shape.center == (62.0, -37.0)
    assert shape.radius == 0.01


def test_polygon_param() -> None:
    _, shape = parse_soda_params(
        [("ID", DS), ("POLYGON", "61.9 -37.1  62.1 -37.1 62.1 -36.9 61.9 -36.9")]
    )
    assert shape.kind == "POLYGON"
    assert shape.vertices == ((61.9, -37.1), (62.1, -37.1), (62.1, -36.9), (61.9, -36.9))


@pytest.mark.parametrize(
    ("pos", "kind", "values"),
    [
        ("CIRCLE 62 -37 0.05", "CIRCLE", (62.0, -37.0, 0.05)),
        ("circle 62 -37 0.05", "CIRCLE", (62.0, -37.0, 0.05)),
        ("POLYGON 1 1 2 1 2 2", "POLYGON", (1.0, 1.0, 2.0, 1.0, 2.0, 2.0)),
        ("RANGE 61.9 62.1 -37.1 -36.9", "RANGE", (61.9, 62.1, -37.1, -36.9)),
        ("RANGE -Inf +Inf 89 +Inf", "RANGE", (0.0, 360.0, 89.0, 90.0)),
        ("RANGE -1 1 -2 2", "RANGE", (-1.0, 1.0, -2.0, 2.0)),
    ],
)
def test_pos_forms(pos: str, kind: str, values: tuple[float, ...]) -> None:
    _, shape = parse_soda_params([("ID", DS), ("POS", pos)])
    assert shape.kind == kind
    assert shape.values == pytest.approx(values)
    # str(shape) is a POS value that parses back to the same shape
    assert parse_soda_params([("ID", DS), ("POS", str(shape))])[1] == shape


def test_names_are_case_insensitive_and_extras_ignored() -> None:
    params = [("id", DS), ("pOs", "CIRCLE 62 -37 0.1"), ("runid", "x"), ("foo", "bar")]
    assert parse_soda_params(params) == (DS, CutoutShape.circle(62, -37, 0.1))
    params = [("Id", DS), ("circle", "62 -37 0.1"), ("ResponseFormat", "application/fits")]
    assert parse_soda_params(params)[1].radius == 0.1


def test_ra_is_normalised() -> None:
    assert parse_soda_params([("ID", DS), ("CIRCLE", "-1 0 1")])[1].center == (359.0, 0.0)
    assert parse_soda_params([("ID", DS), ("CIRCLE", "360 0 1")])[1].center == (0.0, 0.0)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ([("CIRCLE", "62 -37 0.1")], ["missing ID"]),
        ([("ID", DS), ("ID", "other"), ("CIRCLE", "62 -37 0.1")], ["2 ID"]),
        ([("ID", " "), ("CIRCLE", "62 -37 0.1")], ["ID is empty"]),
        ([("ID", DS)], ["missing cutout shape"]),
        ([("ID", DS), ("CIRCLE", "62 -37 0.1"), ("POS", "CIRCLE 62 -37 0.1")], ["2 shapes"]),
        ([("ID", DS), ("POS", "CIRCLE 1 1 1"), ("pos", "CIRCLE 2 2 1")], ["2 shapes"]),
        ([("ID", DS), ("CIRCLE", "62 abc 0.1")], ["'abc'", "not a number"]),
        ([("ID", DS), ("CIRCLE", "62 -37 nan")], ["'nan'", "not a number"]),
        ([("ID", DS), ("CIRCLE", "1_0 -37 0.1")], ["'1_0'", "not a number"]),
        ([("ID", DS), ("CIRCLE", "62 -37")], ["CIRCLE needs 3 numbers"]),
        ([("ID", DS), ("CIRCLE", "62 -95 0.1")], ["Dec -95", "[-90, 90]"]),
        ([("ID", DS), ("CIRCLE", "720.5 -37 0.1")], ["RA 720.5"]),
        ([("ID", DS), ("CIRCLE", "62 -37 -0.1")], ["radius", "> 0"]),
        ([("ID", DS), ("CIRCLE", "62 -37 0")], ["radius", "> 0"]),
        ([("ID", DS), ("POLYGON", "1 1 2 1")], ["at least 3 vertices", "got 2"]),
        ([("ID", DS), ("POLYGON", "1 1 2 1 2")], ["pairs"]),
        ([("ID", DS), ("POLYGON", "10 1 10 2 10 3")], ["zero area"]),
        ([("ID", DS), ("POLYGON", "0 0 1 1 1 0 0 1")], ["cross"]),
        ([("ID", DS), ("POLYGON", "0 0 2 0 2 0 2 2")], ["repeated"]),
        ([("ID", DS), ("POLYGON", "1 95 2 1 2 2")], ["Dec 95"]),
        ([("ID", DS), ("POS", "BOX 62 -37 1 1")], ["'BOX'", "unknown"]),
        ([("ID", DS), ("POS", "RANGE 62 61 -37 -36")], ["RA interval"]),
        ([("ID", DS), ("POS", "RANGE 61 62 -36 -37")], ["Dec interval"]),
        ([("ID", DS), ("POS", "RANGE 61 62 -37")], ["4 numbers"]),
        ([("ID", DS), ("POS", "")], ["POS is empty"]),
        ([("ID", DS), ("CIRCLE", "62 -37 1"), ("BAND", "1e-7 2e-7")], ["BAND", "not supported"]),
        ([("ID", DS), ("CIRCLE", "62 -37 1"), ("RESPONSEFORMAT", "text/xml")], ["RESPONSEFORMAT"]),
    ],
)
def test_param_errors_name_the_problem(params, words) -> None:
    message = _usage_error(params)
    for word in words:
        assert word in message, message


def test_shape_constructors_validate() -> None:
    with pytest.raises(SodaError, match="radius"):
        CutoutShape.circle(10, 10, -1)
    with pytest.raises(SodaError, match="at least 3 vertices"):
        CutoutShape.polygon([(1, 1), (2, 2)])
    with pytest.raises(SodaError, match="hemisphere"):
        CutoutShape.polygon([(0, 0), (120, 0), (240, 0)])
    assert CutoutShape.polygon([(-1, 0), (1, 0), (0, 1)]).vertices[0] == (359.0, 0.0)


# ---------------------------------------------------------------------------
# cutouts of generated files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """One generated file per kind, near the seed tutorial's point."""
    sky = Sky(SkyConfig())
    target = SkyCoord(62.0, -37.0, unit="deg")
    wanted = {"lsst.calexp": "calexp", "lsst.deepCoadd_calexp": "coadd", "lsst.raw": "raw"}
    out: dict[str, str] = {}
    directory = tmp_path_factory.mktemp("soda")
    for p in sky.products:
        name = wanted.get(p.subtype)
        if name is None or name in out:
            continue
        if SkyCoord(p.s_ra, p.s_dec, unit="deg").separation(target).deg > 0.5:
            continue
        path = str(directory / f"{name}.fits")
        sky.write_fits(p.id, path)
        out[name] = path
        if len(out) == len(wanted):
            break
    assert len(out) == len(wanted), out
    return out


def _image_hdus(hdul: fits.HDUList) -> list[int]:
    return [i for i, h in enumerate(hdul) if h.header.get("NAXIS") == 2]


def _offset(header: fits.Header) -> tuple[int, int]:
    """(x0, y0) 0-based from the cutout's ``SODA SECTION`` = '[x0+1:x1,y0+1:y1]'."""
    cols, rows = header["SODA SECTION"].strip("[]").split(",")
    return int(cols.split(":")[0]) - 1, int(rows.split(":")[0]) - 1


def _cut(src: str, shape: CutoutShape, dest: str) -> tuple[fits.HDUList, fits.HDUList]:
    write_cutout(src, shape, dest, dataset_id=DS)
    return fits.open(src), fits.open(dest)


def _check_consistent(orig: fits.HDUList, cut: fits.HDUList) -> None:
    """Same HDUs; data = original's slice; WCS maps every cut pixel to the same sky place."""
    assert [h.name for h in cut] == [h.name for h in orig]
    assert _image_hdus(cut) == _image_hdus(orig)
    cut.verify("exception")
    for i in _image_hdus(orig):
        x0, y0 = _offset(cut[i].header)
        ny, nx = cut[i].data.shape
        assert cut[i].data.dtype == orig[i].data.dtype
        np.testing.assert_array_equal(cut[i].data, orig[i].data[y0 : y0 + ny, x0 : x0 + nx])
        w_orig, w_cut = WCS(orig[i].header), WCS(cut[i].header)
        # corners and centre of the cutout: same sky position, pixel coordinates shifted
        px = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
        py = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
        sky = w_cut.pixel_to_world(px, py)
        back_x, back_y = w_orig.world_to_pixel(sky)
        np.testing.assert_allclose(back_x, px + x0, atol=1e-6)
        np.testing.assert_allclose(back_y, py + y0, atol=1e-6)
        # every non-WCS keyword is kept
        for key in orig[i].header:
            if key.startswith(("CRPIX", "LTV", "NAXIS", "CHECKSUM", "DATASUM")) or not key:
                continue
            assert cut[i].header[key] == orig[i].header[key], key
        if "LTV1" in orig[i].header:
            assert cut[i].header["LTV1"] == orig[i].header["LTV1"] - x0
            assert cut[i].header["LTV2"] == orig[i].header["LTV2"] - y0


def _circle_at(wcs: WCS, x: float, y: float, radius_px: float) -> tuple[CutoutShape, SkyCoord]:
    c = wcs.pixel_to_world(x, y)
    scale = np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix)))
    return CutoutShape.circle(c.ra.deg, c.dec.deg, radius_px * scale), c


@pytest.mark.parametrize("name", ["calexp", "coadd", "raw"])
def test_circle_cutout_centred_and_exact(files, name, tmp_path) -> None:
    src = files[name]
    with fits.open(src) as hdul:
        hi = _image_hdus(hdul)[0]
        wcs = WCS(hdul[hi].header)
    shape, centre = _circle_at(wcs, 150.3, 220.7, 20.0)
    orig, cut = _cut(src, shape, str(tmp_path / "cut.fits"))
    with orig, cut:
        _check_consistent(orig, cut)
        w_cut = WCS(cut[hi].header)
        x0, y0 = _offset(cut[hi].header)
        ny, nx = cut[hi].data.shape
        # the requested centre is at the centre of the cutout, within a pixel
        cx, cy = w_cut.world_to_pixel(centre)
        assert abs(cx - (nx - 1) / 2) <= 1.0 and abs(cy - (ny - 1) / 2) <= 1.0
        ox, oy = wcs.world_to_pixel(centre)
        assert cx == pytest.approx(ox - x0, abs=1e-6) and cy == pytest.approx(oy - y0, abs=1e-6)
        # a 20-px radius circle: 41 (+-1) pixels across
        assert 40 <= nx <= 42 and 40 <= ny <= 42
        # provenance and the untouched primary header
        assert cut[0].header["SODA ID"] == DS
        assert parse_soda_params([("ID", DS), ("POS", cut[0].header["SODA SHAPE"])])[1] == shape
        for key in orig[0].header:
            if hi == 0 and key.startswith(("CRPIX", "LTV", "NAXIS")):
                continue
            assert cut[0].header[key] == orig[0].header[key], key
        if name == "raw":
            assert len(cut) == 1 and cut[0].data.dtype.name == "uint16"
            assert cut[0].header["BZERO"] == 32768
        else:
            mp_orig = {k: v for k, v in orig["MASK"].header.items() if k.startswith("MP_")}
            mp_cut = {k: v for k, v in cut["MASK"].header.items() if k.startswith("MP_")}
            assert mp_orig and mp_cut == mp_orig
            assert cut[1].data.dtype.name == "float32" and cut["MASK"].data.dtype.name == "int32"


def test_partially_off_edge_is_clipped(files, tmp_path) -> None:
    with fits.open(files["calexp"]) as hdul:
        wcs = WCS(hdul[1].header)
        ny, nx = hdul[1].data.shape
    # centred 5 px beyond the left edge, 20 px radius: columns 0..15; at the edge (x = -0.5)
    # the circle spans y = 100 +- sqrt(20**2 - 4.5**2) = 80.5..119.5, so rows 81..119
    shape, _ = _circle_at(wcs, -5.0, 100.0, 20.0)
    orig, cut = _cut(files["calexp"], shape, str(tmp_path / "edge.fits"))
    with orig, cut:
        _check_consistent(orig, cut)
        x0, y0 = _offset(cut[1].header)
        cny, cnx = cut[1].data.shape
        assert x0 == 0 and 15 <= cnx <= 17
        assert 80 <= y0 <= 82 and 38 <= cny <= 41
    # a corner beyond the top-right corner
    shape, _ = _circle_at(wcs, nx + 3.0, ny + 3.0, 10.0)
    orig, cut = _cut(files["calexp"], shape, str(tmp_path / "corner.fits"))
    with orig, cut:
        _check_consistent(orig, cut)
        x0, y0 = _offset(cut[1].header)
        assert x0 + cut[1].data.shape[1] == nx and y0 + cut[1].data.shape[0] == ny
        assert 1 <= cut[1].data.shape[0] <= 8 and 1 <= cut[1].data.shape[1] <= 8


def test_shape_covering_the_image_gives_the_whole_image(files, tmp_path) -> None:
    with fits.open(files["coadd"]) as hdul:
        wcs = WCS(hdul[1].header)
        ny, nx = hdul[1].data.shape
    shape, _ = _circle_at(wcs, nx / 2, ny / 2, 2.0 * max(nx, ny))
    orig, cut = _cut(files["coadd"], shape, str(tmp_path / "all.fits"))
    with orig, cut:
        _check_consistent(orig, cut)
        assert cut[1].data.shape == (ny, nx) and _offset(cut[1].header) == (0, 0)


@pytest.mark.parametrize("name", ["calexp", "raw"])
def test_fully_outside_is_no_overlap(files, name, tmp_path) -> None:
    with fits.open(files[name]) as hdul:
        wcs = WCS(hdul[_image_hdus(hdul)[0]].header)
    dest = tmp_path / "none.fits"
    for shape in (
        _circle_at(wcs, -50.0, 100.0, 20.0)[0],
        CutoutShape.circle(180.0, 45.0, 1.0),
        CutoutShape.polygon([(180, 0), (181, 0), (181, 1)]),
    ):
        with pytest.raises(SodaError) as info:
            write_cutout(files[name], shape, str(dest))
        assert str(info.value).startswith("NoOverlap: ") and info.value.status == 400
        assert not dest.exists()


def test_polygon_and_range_cutouts(files, tmp_path) -> None:
    with fits.open(files["calexp"]) as hdul:
        wcs = WCS(hdul[1].header)
    # a pixel-aligned quadrilateral: the cutout is its pixel box
    corners = wcs.pixel_to_world(np.array([100, 160, 160, 100]), np.array([50, 50, 90, 90]))
    shape = CutoutShape.polygon(zip(corners.ra.deg, corners.dec.deg, strict=True))
    orig, cut = _cut(files["calexp"], shape, str(tmp_path / "poly.fits"))
    with orig, cut:
        _check_consistent(orig, cut)
        x0, y0 = _offset(cut[1].header)
        assert (x0, y0) == (100, 50) and cut[1].data.shape == (41, 61)
    # an RA/Dec box around the same place: covers at least those pixels
    ra, dec = corners.ra.deg, corners.dec.deg
    box = CutoutShape.range(ra.min(), ra.max(), dec.min(), dec.max())
    orig, cut = _cut(files["calexp"], box, str(tmp_path / "range.fits"))
    with orig, cut:
        _check_consistent(orig, cut)
        x0, y0 = _offset(cut[1].header)
        cny, cnx = cut[1].data.shape
        assert x0 <= 100 and y0 <= 50 and x0 + cnx >= 161 and y0 + cny >= 91


def _brute_box(wcs: WCS, shape: tuple[int, int], cs: CutoutShape, step: float = 0.25):
    """Pixel box from a dense grid of sub-pixel positions tested on the sky."""
    ny, nx = shape
    xs = np.arange(-0.5 + step / 2, nx - 0.5, step)
    ys = np.arange(-0.5 + step / 2, ny - 0.5, step)
    gx, gy = np.meshgrid(xs, ys)
    sky = wcs.pixel_to_world(gx.ravel(), gy.ravel())
    from obsharvest.simarchive.adql.geometry import radec_to_xyz

    inside = cs.region().contains(radec_to_xyz(sky.ra.deg, sky.dec.deg))
    if not inside.any():
        return None
    px = np.floor(gx.ravel()[inside] + 0.5)
    py = np.floor(gy.ravel()[inside] + 0.5)
    return int(py.min()), int(py.max()), int(px.min()), int(px.max())


def test_pixel_box_agrees_with_brute_force(files) -> None:
    with fits.open(files["raw"]) as hdul:
        wcs = WCS(hdul[0].header)
        shape = hdul[0].data.shape
    small = WCS(naxis=2)  # a 60x50 sub-image keeps the brute force cheap
    small.wcs.ctype, small.wcs.cunit = wcs.wcs.ctype, wcs.wcs.cunit
    small.wcs.crval, small.wcs.crpix = wcs.wcs.crval, wcs.wcs.crpix - [170, 180]
    small.wcs.cd = wcs.wcs.cd
    shape = (50, 60)
    rng = np.random.default_rng(5)
    for _ in range(12):
        x, y = rng.uniform(-20, 80), rng.uniform(-20, 70)
        r = rng.uniform(0.3, 30)
        cs, _ = _circle_at(small, x, y, r)
        box = pixel_box(small, shape, cs.region())
        brute = _brute_box(small, shape, cs)
        if brute is None:
            assert box is None or max(box[0].stop - box[0].start, box[1].stop - box[1].start) <= 1
            continue
        assert box is not None
        got = (box[0].start, box[0].stop - 1, box[1].start, box[1].stop - 1)
        # the exact box can only be larger than the sampled one, and by less than a pixel
        assert got[0] <= brute[0] <= got[0] + 1 and got[2] <= brute[2] <= got[2] + 1
        assert got[1] - 1 <= brute[1] <= got[1] and got[3] - 1 <= brute[3] <= got[3]


def test_sip_wcs_cutout(files, tmp_path) -> None:
    """A TAN-SIP file (as DP1 may carry): the cutout's WCS, SIP included, stays exact."""
    sip_path = str(tmp_path / "sip.fits")
    with fits.open(files["calexp"]) as hdul:
        for h in hdul[1:]:
            h.header["CTYPE1"], h.header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
            h.header.update({"A_ORDER": 2, "B_ORDER": 2, "A_2_0": 4e-5, "A_1_1": -2e-5})
            h.header.update({"A_0_2": 1e-5, "B_2_0": -1e-5, "B_0_2": 3e-5, "B_1_1": 2e-5})
        hdul.writeto(sip_path)
    with fits.open(sip_path) as hdul:
        wcs = WCS(hdul[1].header)
    plain = wcs.deepcopy()
    plain.sip = None
    assert wcs.sip is not None
    shape, centre = _circle_at(wcs, 350.0, 320.0, 25.0)
    # the distortion is several pixels here, so ignoring it would shift the cutout
    sx, sy = plain.world_to_pixel(centre)
    assert math.hypot(sx - 350.0, sy - 320.0) > 3.0
    orig, cut = _cut(sip_path, shape, str(tmp_path / "sipcut.fits"))
    with orig, cut:
        _check_consistent(orig, cut)
        w_cut = WCS(cut[1].header)
        assert w_cut.sip is not None
        ny, nx = cut[1].data.shape
        cx, cy = w_cut.world_to_pixel(centre)
        assert abs(cx - (nx - 1) / 2) <= 1.0 and abs(cy - (ny - 1) / 2) <= 1.0
        # same WCS as astropy's Cutout2D would give for that box
        x0, y0 = _offset(cut[1].header)
        ref = Cutout2D(
            orig[1].data, ((x0 + x0 + nx - 1) / 2, (y0 + y0 + ny - 1) / 2), (ny, nx), wcs
        )
        assert ref.origin_original == (x0, y0)
        grid = np.array([[0, 0], [nx - 1, ny - 1], [3, 17]], dtype=float)
        np.testing.assert_allclose(
            w_cut.all_pix2world(grid, 0), ref.wcs.all_pix2world(grid, 0), rtol=0, atol=1e-10
        )


def test_source_errors(tmp_path) -> None:
    shape = CutoutShape.circle(62, -37, 0.01)
    with pytest.raises(SodaError) as info:
        write_cutout(str(tmp_path / "missing.fits"), shape, str(tmp_path / "out.fits"))
    assert str(info.value).startswith("NotFoundFault: ") and info.value.status == 404
    table = str(tmp_path / "table.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([])]).writeto(table)
    with pytest.raises(SodaError, match="^UsageFault: .*no 2-D image"):
        write_cutout(table, shape, str(tmp_path / "out.fits"))
    assert not os.path.exists(tmp_path / "out.fits")
