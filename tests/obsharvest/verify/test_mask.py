"""Mask-aware containment: NO_DATA pixels (dead amplifiers) on real generated calexps.

The archive paints a dead amplifier as NaN pixels flagged BAD|NO_DATA in the MASK HDU
(seed §1.1: "lost amplifiers ... would not affect the s_region"); which amplifier is dead
comes from the archive's own recipe, where it is located from ``amp_slices``.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from obsharvest.errors import UrlExpiredError
from obsharvest.models import Containment, Target, Verdict
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from obsharvest.simarchive.sky.pixels import MASK_PLANES, amp_slices
from obsharvest.verify.containment import read_wcs_header, verify
from obsharvest.verify.mask import MaskCheck, apply_mask, mask_flags

NO_DATA_BIT = MASK_PLANES["NO_DATA"]


def dead_amp_calexp(archive):
    """The first calexp with a dead amplifier, and that amplifier's (rows, cols) slices."""
    for product in archive.sky.products:
        if product.subtype != "lsst.calexp":
            continue
        amp = archive.sky.image_context(product.id).recipe.dead_amp
        if amp is not None:
            return product, amp_slices((product.naxis2, product.naxis1), amp)
    raise AssertionError("no calexp with a dead amplifier in this archive")


def good_pixel(product, rows: slice, cols: slice) -> tuple[int, int]:
    """(x, y) in the other row of amplifiers, well away from edges."""
    y = product.naxis2 * 3 // 4 if rows.start == 0 else product.naxis2 // 4
    return product.naxis1 // 2, y


def target_at(path: str, x: float, y: float, name: str = "t") -> Target:
    ra, dec = WCS(fits.getheader(path, 1)).all_pix2world([[x, y]], 0)[0]
    return Target(name, float(ra) % 360.0, float(dec))


@pytest.fixture(scope="module")
def small_archive():
    with EmbeddedArchive(ArchiveSettings(n_visits=24)) as running:
        yield running


@pytest.fixture(scope="module")
def dead_calexp(small_archive, tmp_path_factory):
    product, (rows, cols) = dead_amp_calexp(small_archive)
    path = str(tmp_path_factory.mktemp("mask") / "calexp.fits")
    small_archive.sky.write_fits(product.id, path)
    return product, rows, cols, path


def test_target_on_dead_amplifier_is_no_data(dead_calexp):
    product, rows, cols, path = dead_calexp
    x, y = (cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2
    target = target_at(path, x, y)
    containment = verify(path, [target])[target.name]
    assert containment.verdict is Verdict.CONTAINS  # the WCS alone cannot tell

    check = mask_flags(path, containment.hdu, containment.x, containment.y)
    assert check.no_data and check.bit == NO_DATA_BIT
    assert check.value & (1 << NO_DATA_BIT) and check.value & (1 << MASK_PLANES["BAD"])
    with fits.open(path) as hdul:  # the same word as the full MASK array holds
        row, col = round(containment.y), round(containment.x)
        assert check.value == int(hdul["MASK"].data[row, col])
        assert np.isnan(hdul[1].data[row, col])

    masked = apply_mask(containment, check)
    assert masked.verdict is Verdict.NO_DATA and masked.verdict == "no_data"
    assert (masked.x, masked.y, masked.hdu) == (containment.x, containment.y, containment.hdu)
    assert "NO_DATA" in masked.reason


def test_target_on_good_pixels_keeps_contains(dead_calexp):
    product, rows, cols, path = dead_calexp
    x, y = good_pixel(product, rows, cols)
    target = target_at(path, x, y)
    containment = verify(path, [target])[target.name]
    check = mask_flags(path, containment.hdu, containment.x, containment.y)
    assert not check.no_data and check.bit == NO_DATA_BIT and check.reason is None
    assert apply_mask(containment, check) is containment


def test_pixel_edges_follow_the_half_open_convention(dead_calexp):
    """Pixel i covers [i - 0.5, i + 0.5): the first dead column starts at x = start - 0.5."""
    _, rows, cols, path = dead_calexp
    y = (rows.start + rows.stop) / 2
    assert mask_flags(path, 1, cols.start - 0.5, y).no_data
    assert not mask_flags(path, 1, cols.start - 0.51, y).no_data or cols.start == 0
    assert mask_flags(path, 1, cols.stop - 0.51, y).no_data
    assert not mask_flags(path, 1, cols.stop - 0.5, y).no_data


def test_off_grid_and_non_finite_positions_are_not_no_data(dead_calexp):
    product, _, _, path = dead_calexp
    off = mask_flags(path, 1, product.naxis1 + 3.0, 10.0)
    assert not off.no_data and "off the" in off.reason
    nan = mask_flags(path, 1, float("nan"), 10.0)
    assert not nan.no_data and "not finite" in nan.reason


def test_only_contains_is_ever_changed():
    flagged = MaskCheck(True, 256, 8, "pixel (1, 2) is flagged NO_DATA")
    for verdict in (Verdict.OUTSIDE, Verdict.NO_WCS, Verdict.ERROR):
        containment = Containment(verdict, 1.0, 2.0, 1, "why")
        assert apply_mask(containment, flagged) is containment


def test_raw_without_mask_hdu(small_archive, tmp_path):
    raw = next(p for p in small_archive.sky.products if p.subtype == "lsst.raw")
    path = str(tmp_path / "raw.fits")
    small_archive.sky.write_fits(raw.id, path)
    check = mask_flags(path, 0, 10.0, 10.0)
    assert check == MaskCheck(False, reason="no MASK HDU")


def _image_hdu(name: str, data: np.ndarray) -> fits.ImageHDU:
    hdu = fits.ImageHDU(data, name=name)
    hdu.header["CTYPE1"], hdu.header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    return hdu


def test_mask_found_by_name_with_bzero_and_another_bit(tmp_path):
    """MASK before IMAGE, unsigned 32-bit (BZERO 2**31) and NO_DATA on bit 30: all from
    the header, nothing assumed."""
    ny, nx = 20, 30
    mask = np.zeros((ny, nx), dtype=np.uint32)
    mask[5, 7] = (1 << 30) | (1 << 31) | 1
    mask[6, 7] = 1 << 31
    mask_hdu = fits.ImageHDU(mask, name="MASK")  # astropy writes BITPIX 32 + BZERO 2**31
    mask_hdu.header["HIERARCH MP_NO_DATA"] = 30
    mask_hdu.header["HIERARCH MP_DETECTED_NEGATIVE"] = 6
    image = _image_hdu("IMAGE", np.zeros((ny, nx), dtype=np.float32))
    path = str(tmp_path / "odd.fits")
    fits.HDUList([fits.PrimaryHDU(), mask_hdu, image]).writeto(path)
    assert fits.getheader(path, 1)["BZERO"] == 2**31

    hit = mask_flags(path, 2, 7.2, 4.6)
    assert hit.no_data and hit.bit == 30 and hit.value == (1 << 30) | (1 << 31) | 1
    miss = mask_flags(path, 2, 7.0, 6.0)
    assert not miss.no_data and miss.value == 1 << 31


def test_mask_without_no_data_plane_or_with_another_grid(tmp_path):
    mask = fits.ImageHDU(np.full((4, 5), 256, dtype=np.int32), name="MASK")
    mask.header["MP_BAD"] = 0
    image = _image_hdu("IMAGE", np.zeros((4, 5), dtype=np.float32))
    path = str(tmp_path / "planeless.fits")
    fits.HDUList([fits.PrimaryHDU(), image, mask]).writeto(path)
    check = mask_flags(path, 1, 1.0, 1.0)
    assert not check.no_data and check.value == 256 and check.bit is None
    assert "no NO_DATA plane" in check.reason

    other = _image_hdu("IMAGE", np.zeros((8, 10), dtype=np.float32))
    path = str(tmp_path / "mismatch.fits")
    fits.HDUList([fits.PrimaryHDU(), other, mask]).writeto(path)
    assert "differs" in mask_flags(path, 1, 1.0, 1.0).reason


def _this_url(archive, product) -> str:
    import pyvo
    from pyvo.dal.adhoc import DatalinkResults

    service = pyvo.dal.TAPService(archive.tap_url)
    row = service.search(
        "SELECT access_url FROM ivoa.ObsCore "
        f"WHERE obs_publisher_did = '{product.obs_publisher_did}'"
    )[0]
    links = DatalinkResults.from_result_url(row["access_url"])
    return next(r["access_url"] for r in links if r["semantics"] == "#this")


def test_http_reads_only_a_few_kilobytes_of_a_full_size_calexp():
    """binning=1: a 195 MB calexp; the MASK pixel costs one header block plus its bytes."""
    with EmbeddedArchive(ArchiveSettings(n_visits=24, binning=1)) as archive:
        product, (rows, cols) = dead_amp_calexp(archive)
        url = _this_url(archive, product)

        archive.reset_stats()
        index, _, shape = read_wcs_header(url)
        header_bytes = archive.stats()["files"]["bytes"]
        assert shape == (product.naxis1, product.naxis2) == (4072, 4000)

        archive.reset_stats()
        x, y = (cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2
        check = mask_flags(url, index, x, y)
        files = archive.stats()["files"]
        assert check.no_data and check.bit == NO_DATA_BIT
        assert files["bytes"] - header_bytes < 64 * 1024, files
        size = archive.sky.fits_size(product.id)
        assert size > 190e6

        archive.reset_stats()
        assert not mask_flags(url, index, *good_pixel(product, rows, cols)).no_data
        assert archive.stats()["files"]["bytes"] - header_bytes < 64 * 1024


def test_http_errors_use_the_containment_types(small_archive):
    product, _ = dead_amp_calexp(small_archive)
    url = _this_url(small_archive, product)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["Signature"] = "0" * len(query["Signature"])
    forged = urlunsplit(parts._replace(query=urlencode(query)))
    with pytest.raises(UrlExpiredError) as info:
        mask_flags(forged, 1, 10.0, 10.0)
    assert "Signature" not in str(info.value) and info.value.status == 403


def test_tile_compressed_mask_is_read_through_astropy_sections(tmp_path):
    mask = np.zeros((64, 48), dtype=np.int32)
    mask[40:, 10:20] = 1 << 8
    compressed = fits.CompImageHDU(mask, name="MASK", compression_type="RICE_1")
    compressed.header["HIERARCH MP_NO_DATA"] = 8
    image = _image_hdu("IMAGE", np.zeros((64, 48), dtype=np.float32))
    path = str(tmp_path / "compressed.fits")
    fits.HDUList([fits.PrimaryHDU(), image, compressed]).writeto(path)
    assert mask_flags(path, 1, 15.0, 50.0) == MaskCheck(
        True, 256, 8, "pixel (15, 50) is flagged NO_DATA"
    )
    assert not mask_flags(path, 1, 25.0, 50.0).no_data
