"""FITS headers and files for synthetic products, laid out like Rubin's.

* calexp, difference image, coadds: HDU0 carries the observation keywords and no data
  (and, as in real DP0.2 files, ``EXTNAME = 'IMAGE'``: the seed §4.1.3 lists the HDUs
  of a calexp as ``IMAGE IMAGE MASK VARIANCE ...``, so ``hdul['IMAGE']`` is the data-less
  primary and the pixels are in ``hdul[1]``); HDU1 ``IMAGE`` float32, HDU2 ``MASK`` int32
  with ``MP_*`` bit-plane keywords, HDU3 ``VARIANCE`` float32, each with the celestial WCS.
* raw: a single primary HDU of uint16 (BITPIX 16, BZERO 32768) with the nominal
  camera-geometry WCS.
* DP1 calibrated visit images (visit_image, difference_image) carry a TAN-SIP WCS
  (``RA---TAN-SIP`` with ``A_*``/``B_*`` and fitted ``AP_*``/``BP_*``); raws and coadds
  stay plain TAN, as in Rubin's files.

Files are written by hand (header blocks, then big-endian data in row chunks, then
padding) so that the byte size is known exactly from the headers alone
(:func:`fits_size`) and no extra full-size copy of the data is made while writing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import BinaryIO, Final

import numpy as np
from astropy.io import fits
from astropy.time import Time

from obsharvest.simarchive.sky.naming import RAW, Naming
from obsharvest.simarchive.sky.pixels import (
    MASK_PLANES,
    PixelRecipe,
    paint,
    stars_on_image,
    to_raw_counts,
    variance_of,
)
from obsharvest.simarchive.sky.product import Product
from obsharvest.simarchive.sky.projection import TanWcs
from obsharvest.simarchive.sky.starfield import StarField

FITS_BLOCK: Final = 2880
ROWS_PER_CHUNK: Final = 256
ORIGIN: Final = "obsharvest simarchive"
STAR_MARGIN_SIGMA: Final = 6.0


@dataclass(frozen=True)
class Pointing:
    """Visit-level observation metadata for the primary header."""

    ra: float
    dec: float
    rotation_deg: float
    airmass: float
    seeing_arcsec: float


@dataclass(frozen=True)
class ImageContext:
    """Everything needed to build a product's headers and pixels."""

    product: Product
    naming: Naming
    wcs: TanWcs
    binning: int
    pixel_seed: tuple[int, ...]
    """Entropy for the pixel RNG: derived from (seed, product uuid)."""
    recipe: PixelRecipe
    stars: StarField
    bunit: str
    pointing: Pointing | None = None
    n_input_visits: int | None = None
    xy0: tuple[int, int] = (0, 0)
    """LSST pixel origin of the (binned) image, written as LTV1/LTV2 = -XY0."""
    patches_per_side: int = 7
    """Of the coadd's skymap, for the PATCH keyword's comment."""


@dataclass(frozen=True)
class HduSpec:
    """One HDU: its complete header and the shape/type of its data."""

    header: fits.Header
    bitpix: int
    shape: tuple[int, int] | None
    """(NAXIS2, NAXIS1) or None for a data-less HDU."""

    @property
    def data_bytes(self) -> int:
        """Padded size of the data unit."""
        if self.shape is None:
            return 0
        raw = self.shape[0] * self.shape[1] * abs(self.bitpix) // 8
        return math.ceil(raw / FITS_BLOCK) * FITS_BLOCK

    @property
    def header_bytes(self) -> int:
        return len(self.header.tostring())


def _card_list(header: fits.Header, cards: list[tuple[str, object, str]]) -> None:
    for key, value, comment in cards:
        header.append((key, value, comment), end=True)


def observation_cards(ctx: ImageContext) -> list[tuple[str, object, str]]:
    """Primary-header keywords describing the observation (no WCS here, as in Rubin files)."""
    p = ctx.product
    cards: list[tuple[str, object, str]] = [
        ("ORIGIN", ORIGIN, f"Synthetic data shaped like {ctx.naming.label}"),
        ("TELESCOP", ctx.naming.telescope, "Telescope"),
        ("INSTRUME", ctx.naming.instrument_name, "Instrument"),
        ("DATAPROD", p.subtype, "ObsCore dataproduct_subtype"),
        ("DATASET", p.dataset_type, "Butler dataset type"),
        ("CALIBLVL", p.calib_level, "ObsCore calib_level"),
        ("BUTLERID", p.uuid, "Butler dataset id (uuid)"),
        ("OBSID", p.obs_id, "ObsCore obs_id"),
        ("BAND", p.band, "Abstract filter band"),
    ]
    if p.physical_filter is not None:
        cards.append(("FILTER", p.physical_filter, "Physical filter"))
    t0 = Time(p.t_min, format="mjd", scale="tai")
    cards += [
        ("DATE-OBS", t0.isot, "Start of observation (TAI)"),
        ("MJD-OBS", p.t_min, "[d] Start of observation (MJD, TAI)"),
        ("DATE-END", Time(p.t_max, format="mjd", scale="tai").isot, "End of observation (TAI)"),
        ("MJD-END", p.t_max, "[d] End of observation (MJD, TAI)"),
        ("EXPTIME", p.exptime, "[s] Exposure time"),
        ("TIMESYS", "TAI", "Time scale"),
        ("BINNING", ctx.binning, "Pixel binning w.r.t. the real detector"),
    ]
    if p.visit is not None and ctx.pointing is not None:
        pt = ctx.pointing
        cards += [
            ("DARKTIME", p.exptime + 1.0, "[s] Dark time"),
            ("VISIT", p.visit, "Visit id"),
            ("DETECTOR", p.detector, "Detector number"),
            ("DETNAME", p.detector_name, "Detector name (raft_sensor)"),
            ("CCDVISIT", p.ccdvisitid, "visit * 1000 + detector"),
            ("RA", pt.ra, "[deg] Telescope boresight RA"),
            ("DEC", pt.dec, "[deg] Telescope boresight Dec"),
            ("ROTPA", pt.rotation_deg, "[deg] Camera rotation angle"),
            ("AIRMASS", round(pt.airmass, 4), "Airmass at start of exposure"),
            ("SEEING", round(pt.seeing_arcsec, 3), "[arcsec] PSF FWHM"),
        ]
    if p.tract is not None:
        cards += [
            ("SKYMAP", ctx.naming.skymap, "Skymap name"),
            ("TRACT", p.tract, "Tract id"),
            ("PATCH", p.patch, f"Patch index (y * {ctx.patches_per_side} + x)"),
            ("NINPUTS", ctx.n_input_visits or 0, "Number of input visits"),
            ("PSF_FWHM", round(p.s_resolution, 3), "[arcsec] PSF FWHM"),
        ]
    return cards


def _image_cards(
    ctx: ImageContext, extname: str, bunit: str | None
) -> list[tuple[str, object, str]]:
    cards: list[tuple[str, object, str]] = [
        ("EXTNAME", extname, "Extension name"),
        ("EXTTYPE", extname, "Extension type"),
        ("INHERIT", True, "Inherit the primary header"),
    ]
    if bunit is not None:
        cards.append(("BUNIT", bunit, "Pixel unit"))
    cards += ctx.wcs.header_cards()
    cards += [
        ("LTV1", -ctx.xy0[0], "Image origin offset (-XY0), axis 1"),
        ("LTV2", -ctx.xy0[1], "Image origin offset (-XY0), axis 2"),
    ]
    return cards


def layout(ctx: ImageContext) -> list[HduSpec]:
    """Headers and data shapes of every HDU, without touching pixels."""
    nx, ny = ctx.wcs.naxis
    p = ctx.product
    if p.kind == RAW:
        h = fits.Header()
        _card_list(
            h,
            [
                ("SIMPLE", True, "conforms to FITS standard"),
                ("BITPIX", 16, "array data type"),
                ("NAXIS", 2, "number of array dimensions"),
                ("NAXIS1", nx, ""),
                ("NAXIS2", ny, ""),
                ("EXTEND", True, ""),
                ("BZERO", 32768, "offset data range to that of unsigned short"),
                ("BSCALE", 1, "default scaling factor"),
                ("BUNIT", ctx.bunit, "Pixel unit"),
            ],
        )
        _card_list(h, observation_cards(ctx))
        _card_list(h, ctx.wcs.header_cards())
        return [HduSpec(h, 16, (ny, nx))]

    primary = fits.Header()
    _card_list(
        primary,
        [
            ("SIMPLE", True, "conforms to FITS standard"),
            ("BITPIX", 8, "array data type"),
            ("NAXIS", 0, "number of array dimensions"),
            ("EXTEND", True, ""),
            ("EXTNAME", "IMAGE", "Rubin names the primary HDU IMAGE too"),
            ("EXTTYPE", "PRIMARY", "Observation metadata, no pixels"),
        ],
    )
    _card_list(primary, observation_cards(ctx))
    specs = [HduSpec(primary, 8, None)]
    for extname, bitpix, bunit in (
        ("IMAGE", -32, ctx.bunit),
        ("MASK", 32, None),
        ("VARIANCE", -32, f"{ctx.bunit}**2" if ctx.bunit else None),
    ):
        h = fits.Header()
        _card_list(
            h,
            [
                ("XTENSION", "IMAGE", "Image extension"),
                ("BITPIX", bitpix, "array data type"),
                ("NAXIS", 2, "number of array dimensions"),
                ("NAXIS1", nx, ""),
                ("NAXIS2", ny, ""),
                ("PCOUNT", 0, "number of parameters"),
                ("GCOUNT", 1, "number of groups"),
            ],
        )
        _card_list(h, _image_cards(ctx, extname, bunit))
        if extname == "MASK":
            _card_list(h, mask_plane_cards())
        specs.append(HduSpec(h, bitpix, (ny, nx)))
    return specs


def mask_plane_cards() -> list[tuple[str, object, str]]:
    """``MP_<PLANE> = bit`` keywords as afw writes them (HIERARCH when longer than 8)."""
    cards: list[tuple[str, object, str]] = []
    for name, bit in MASK_PLANES.items():
        key = f"MP_{name}"
        cards.append((key if len(key) <= 8 else f"HIERARCH {key}", bit, "Mask plane bit"))
    return cards


def fits_size(ctx: ImageContext) -> int:
    """Exact size in bytes of the file :func:`write_fits` produces."""
    return sum(s.header_bytes + s.data_bytes for s in layout(ctx))


def _write_data(fh: BinaryIO, data: np.ndarray, dtype: str, offset: int = 0) -> None:
    """Write ``data - offset`` as big-endian ``dtype`` in row chunks, then FITS padding."""
    written = 0
    for r0 in range(0, data.shape[0], ROWS_PER_CHUNK):
        chunk = data[r0 : r0 + ROWS_PER_CHUNK]
        if offset:
            chunk = chunk.astype(np.int32) - offset
        buf = chunk.astype(dtype).tobytes()
        fh.write(buf)
        written += len(buf)
    pad = -written % FITS_BLOCK
    if pad:
        fh.write(b"\0" * pad)


def render_pixels(ctx: ImageContext) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask for a product (deterministic from ``ctx.pixel_seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence(list(ctx.pixel_seed)))
    margin = STAR_MARGIN_SIGMA * ctx.recipe.psf_sigma_px + 2.0
    sx, sy, mag = stars_on_image(ctx.wcs, ctx.stars, margin)
    return paint(rng, ctx.recipe, sx, sy, mag)


def write_fits(ctx: ImageContext, path: str) -> None:
    """Write the product's FITS file to ``path`` (overwriting)."""
    specs = layout(ctx)
    image, mask = render_pixels(ctx)
    with open(path, "wb") as fh:
        if ctx.product.kind == RAW:
            del mask
            counts = to_raw_counts(image, ctx.recipe)
            del image
            fh.write(specs[0].header.tostring().encode("ascii"))
            _write_data(fh, counts, ">i2", offset=32768)
            return
        fh.write(specs[0].header.tostring().encode("ascii"))
        fh.write(specs[1].header.tostring().encode("ascii"))
        _write_data(fh, image, ">f4")
        fh.write(specs[2].header.tostring().encode("ascii"))
        _write_data(fh, mask, ">i4")
        del mask
        variance = variance_of(image, ctx.recipe)
        del image
        fh.write(specs[3].header.tostring().encode("ascii"))
        _write_data(fh, variance, ">f4")


def tile_compress(source: str, dest: str) -> None:
    """``source`` (a plain FITS file) as fpack writes it: an empty primary HDU (or the
    data-less one the file has), then each image HDU as a tile-compressed ``BINTABLE``
    (``ZIMAGE = T``, ``ZNAXISn``, the WCS and every other keyword in that header).

    RICE_1, astropy's default; floats are quantised as fpack does, with a dither seed
    taken from the pixels' checksum, so the same input always gives the same bytes. The
    WCS keywords are copied unchanged: the archive's truth stays the truth.
    """
    with fits.open(source, memmap=False) as hdul:
        first = hdul[0]
        primary = fits.PrimaryHDU(header=first.header if first.data is None else None)
        out = fits.HDUList([primary])
        for hdu in hdul:
            if hdu.data is None:
                continue
            out.append(
                fits.CompImageHDU(
                    data=hdu.data,
                    header=hdu.header,
                    compression_type="RICE_1",
                    dither_seed=-1,  # DITHER_SEED_CHECKSUM: deterministic
                )
            )
        out.writeto(dest, overwrite=True)


def gzip_compress(source: str, dest: str, level: int = 6) -> None:
    """``source`` gzipped whole, as archives serve ``.fits.gz``: no file name and a zero
    modification time in the gzip header, so the same input always gives the same bytes."""
    import gzip
    import shutil

    with (
        open(source, "rb") as src,
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as z,
    ):
        shutil.copyfileobj(src, z, 1 << 20)
