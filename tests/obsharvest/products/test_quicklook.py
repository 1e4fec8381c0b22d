"""Quicklook PNGs, the footprint map and the gallery index, from real generated files.

Markers are checked in the PNG itself: the orange of the target circle must be centred
where the figure transform puts the WCS position of the target.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from matplotlib import image as mpimage

from obsharvest.models import Target, Verdict
from obsharvest.products.quicklook import (
    DPI,
    FIGSIZE_IN,
    GalleryItem,
    footprint_map_figure,
    footprint_map_png,
    gallery_html,
    gallery_markdown,
    quicklook_png,
)
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from obsharvest.simarchive.sky.pixels import amp_slices
from obsharvest.verify.containment import verify

SIZE = (int(FIGSIZE_IN[1] * DPI), int(FIGSIZE_IN[0] * DPI))  # (rows, cols) of a PNG


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A calexp with a dead amplifier and a deepCoadd, written by the archive."""
    folder = tmp_path_factory.mktemp("quicklook")
    with EmbeddedArchive(ArchiveSettings(n_visits=24)) as archive:
        products = archive.sky.products
        calexp = next(
            p
            for p in products
            if p.subtype == "lsst.calexp"
            and archive.sky.image_context(p.id).recipe.dead_amp is not None
        )
        dead = amp_slices(
            (calexp.naxis2, calexp.naxis1), archive.sky.image_context(calexp.id).recipe.dead_amp
        )
        coadd = next(p for p in products if p.subtype == "lsst.deepCoadd_calexp")
        paths = {"calexp": str(folder / "calexp.fits"), "coadd": str(folder / "coadd.fits")}
        archive.sky.write_fits(calexp.id, paths["calexp"])
        archive.sky.write_fits(coadd.id, paths["coadd"])
        yield {"calexp": calexp, "coadd": coadd, "dead": dead, "paths": paths, "dir": folder}


def target_at(path: str, x: float, y: float, name: str = "t", radius=None) -> Target:
    ra, dec = WCS(fits.getheader(path, 1)).all_pix2world([[x, y]], 0)[0]
    return Target(name, float(ra) % 360.0, float(dec), radius)


def read_png(source) -> np.ndarray:
    pixels = mpimage.imread(source, format="png")
    assert pixels.dtype == np.float32 and pixels.ndim == 3
    return pixels


def orange_mask(rgb: np.ndarray) -> np.ndarray:
    """darkorange (255, 140, 0), antialiased."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > 0.85) & (g > 0.4) & (g < 0.7) & (b < 0.25)


def test_calexp_quicklook_marks_the_target_where_the_wcs_says(files, tmp_path):
    path = files["paths"]["calexp"]
    target = target_at(path, 300.0, 150.0, "T<script>")
    containment = verify(path, [target])[target.name]
    out = tmp_path / "calexp.png"
    info = quicklook_png(path, target, files["calexp"].s_region, out, containment=containment)

    pixels = read_png(out)
    assert pixels.shape[:2] == SIZE == (info.height, info.width)
    assert pixels[..., :3].std() > 0.05
    assert info.hdu == 1 and info.binning == 1
    assert info.shape == (files["calexp"].naxis1, files["calexp"].naxis2)
    assert info.target_pixel == pytest.approx((300.0, 150.0), abs=1e-6)

    orange = orange_mask(pixels[..., :3])
    rows, cols = np.nonzero(orange)
    assert 20 < rows.size < 2000  # one small circle, not a flood
    col, row = info.target_png
    assert abs(cols.mean() - col) < 2.0 and abs(rows.mean() - row) < 2.0
    assert np.hypot(cols - col, rows - row).max() < 12  # every orange pixel on that circle
    # the circle is inside the image part of the PNG, where the grey scale is
    assert 0.1 * info.width < col < 0.95 * info.width


def test_quicklook_shows_the_dead_amplifier_and_the_padding(files):
    path = files["paths"]["calexp"]
    rows, cols = files["dead"]
    target = target_at(path, (cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2)
    buffer = io.BytesIO()
    quicklook_png(path, target, files["calexp"].s_region, buffer)
    pixels = read_png(io.BytesIO(buffer.getvalue()))[..., :3]
    nan_colour = np.array([0x3A, 0x2A, 0x4A]) / 255.0
    assert (np.abs(pixels - nan_colour).max(axis=-1) < 0.02).sum() > 1000
    purple = (pixels[..., 0] > 0.45) & (pixels[..., 1] < 0.15) & (pixels[..., 2] > 0.7)
    assert purple.sum() > 500  # the s_region outline, drawn around the image (padding)
    yellow = (pixels[..., 0] > 0.9) & (pixels[..., 1] > 0.9) & (pixels[..., 2] < 0.2)
    cyan = (pixels[..., 0] < 0.2) & (pixels[..., 1] > 0.9) & (pixels[..., 2] > 0.9)
    assert yellow.sum() > 20 and cyan.sum() > 20  # N and E arrows


def test_coadd_is_block_averaged_and_still_aligned(files, tmp_path):
    coadd = files["coadd"]
    path = files["paths"]["coadd"]
    target = target_at(path, 100.0, 300.0, "c", radius=0.01)
    out = tmp_path / "coadd.png"
    info = quicklook_png(path, target, coadd.s_region, str(out), title="3831_3", max_pixels=128)
    assert info.binning == -(-max(coadd.naxis1, coadd.naxis2) // 128) > 1
    assert info.target_pixel == pytest.approx((100.0, 300.0), abs=1e-6)
    pixels = read_png(out)[..., :3]
    assert pixels.shape[:2] == SIZE and pixels.std() > 0.05
    rows, cols = np.nonzero(orange_mask(pixels))
    col, row = info.target_png
    near = np.hypot(cols - col, rows - row) < 12
    assert near.sum() > 20  # the marker, plus the dashed radius circle further out


def test_quicklook_over_http(files):
    with EmbeddedArchive(ArchiveSettings(n_visits=24)) as archive:
        import pyvo
        from pyvo.dal.adhoc import DatalinkResults

        did = files["calexp"].obs_publisher_did
        row = pyvo.dal.TAPService(archive.tap_url).search(
            f"SELECT access_url, s_region FROM ivoa.ObsCore WHERE obs_publisher_did = '{did}'"
        )[0]
        links = DatalinkResults.from_result_url(row["access_url"])
        url = next(r["access_url"] for r in links if r["semantics"] == "#this")
        target = target_at(files["paths"]["calexp"], 50.0, 60.0)
        buffer = io.BytesIO()
        info = quicklook_png(url, target, row["s_region"], buffer)
        assert info.target_pixel == pytest.approx((50.0, 60.0), abs=1e-6)
        assert read_png(io.BytesIO(buffer.getvalue())).shape[:2] == SIZE


def test_quicklooks_in_threads_are_identical(files):
    path = files["paths"]["coadd"]
    target = target_at(path, 200.0, 200.0)

    def render(_):
        buffer = io.BytesIO()
        quicklook_png(path, target, files["coadd"].s_region, buffer, max_pixels=256)
        return read_png(io.BytesIO(buffer.getvalue()))

    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(render, range(6)))
    for other in images[1:]:
        np.testing.assert_array_equal(images[0], other)


def test_no_celestial_image_is_a_value_error(tmp_path):
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.zeros((10, 10), dtype=np.float32)).writeto(path)
    with pytest.raises(ValueError, match="celestial"):
        quicklook_png(str(path), Target("t", 1.0, 2.0), None, io.BytesIO())


# -- footprint map --------------------------------------------------------------------

POLYGON = "POLYGON ICRS 62.2 -37.1 61.8 -37.1 61.8 -36.9 62.2 -36.9"
SHIFTED = "POLYGON ICRS 62.4 -37.2 62.1 -37.2 62.1 -36.95 62.4 -36.95"
COADD = "POLYGON ICRS 62.3 -37.2 61.7 -37.2 61.7 -36.8 62.3 -36.8"


def test_footprint_map_has_ra_increasing_to_the_left(tmp_path):
    target = Target("seed point", 62.0, -37.0)
    regions = [
        (POLYGON, "", Verdict.CONTAINS.value, "lsst.calexp"),
        (SHIFTED, "", Verdict.OUTSIDE.value, "lsst.calexp"),
        (COADD, "3831_3", Verdict.CONTAINS.value, "lsst.deepCoadd_calexp"),
        ("CIRCLE ICRS 62 -37 0.1", "", Verdict.ERROR.value, "lsst.calexp"),  # drawn
        ("POLYGON GALACTIC 1 2 3 4 5 6", "", Verdict.ERROR.value, "lsst.calexp"),  # not
    ]
    fig = footprint_map_figure(target, regions)
    (ax,) = fig.axes
    assert ax.xaxis_inverted() and not ax.yaxis_inverted()
    lo, hi = ax.get_xlim()
    assert lo > hi  # left edge has the larger RA
    assert any(t.get_text() == "3831_3" for t in ax.texts)
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"true match (pixels contain target)", "padding false positive"} <= labels
    assert any("1 unreadable" in t.get_text() for t in fig.texts)

    out = tmp_path / "map.png"
    footprint_map_png(target, regions, out)
    pixels = read_png(out)
    assert pixels.shape[0] > 500 and pixels[..., :3].std() > 0


def test_footprint_map_keeps_polygons_across_ra_zero_together():
    target = Target("zero", 0.05, 10.0)
    crossing = "POLYGON ICRS 359.9 9.9 0.2 9.9 0.2 10.1 359.9 10.1"
    fig = footprint_map_figure(target, [(crossing, "", None, "lsst.calexp")])
    (ax,) = fig.axes
    xs = np.concatenate([line.get_xdata() for line in ax.get_lines()])
    assert np.ptp(xs) < 1.0  # not stretched across 360 degrees


# -- gallery --------------------------------------------------------------------------


def test_gallery_html_escapes_text_and_neutralises_links():
    items = [
        GalleryItem(
            target="<script>alert(1)</script>",
            png="quicklooks/a b.png",
            fits="images/x.fits",
            title='calexp "q" & <b>',
            verdict="contains",
        ),
        GalleryItem(target="M31", png="javascript:alert(1)", fits=None),
    ]
    page = gallery_html(items)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page and "&quot;q&quot; &amp; &lt;b&gt;" in page
    assert 'href="quicklooks/a%20b.png"' in page and 'href="images/x.fits"' in page
    assert 'src="javascript:' not in page and "javascript%3Aalert%281%29" in page
    assert page.count("<figure>") == 2 and page.startswith("<!DOCTYPE html>")


def test_gallery_markdown_escapes_text():
    items = [GalleryItem("<script>x</script>", "p/q.png", "f/q.fits", "a|b [c](d)", "outside")]
    text = gallery_markdown(items)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert r"a\|b \[c\]\(d\)" in text
    assert "](p/q.png)" in text and "[FITS](f/q.fits)" in text


def test_missing_file_is_a_not_found_error(tmp_path):
    from obsharvest.errors import NotFoundError

    with pytest.raises(NotFoundError):
        quicklook_png(str(tmp_path / "nope.fits"), Target("t", 1.0, 2.0), None, io.BytesIO())
