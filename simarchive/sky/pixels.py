"""Synthetic pixel content: sky noise, Gaussian stars in small stamps, mask planes.

Pixel values use *mean* binning semantics: a binned pixel holds the average of the
unbinned pixels it stands for, so sky levels and raw ADU ranges do not depend on
``binning`` (a binned raw still fits in uint16) while noise drops by the binning factor.
Only a handful of full-size arrays are alive at once so that a 4072 x 4000 image writes
in a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from obsharvest.simarchive.sky.focalplane import N_AMP_X, N_AMP_Y
from obsharvest.simarchive.sky.projection import TanWcs
from obsharvest.simarchive.sky.starfield import StarField

MASK_PLANES: Final = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "CROSSTALK": 9,
    "NOT_DEBLENDED": 10,
    "UNMASKEDNAN": 11,
}
"""LSST afw mask plane bits, written as ``MP_<NAME> = bit`` keywords in the MASK HDU."""
DETECTION_SIGMA: Final = 5.0
STAMP_HALF_WIDTH_SIGMA: Final = 5.0
UINT16_MAX: Final = 65535


@dataclass(frozen=True)
class PixelRecipe:
    """How to paint one image (all values per *binned* pixel, image units)."""

    shape: tuple[int, int]
    """(ny, nx) = (NAXIS2, NAXIS1)."""
    sky_level: float
    """Added pedestal: bias + sky for raws, 0 for background-subtracted images."""
    sky_sigma: float
    psf_sigma_px: float
    zero_point: float
    """Magnitude giving a total of 1 image unit x unbinned pixel count."""
    flux_factor: float
    """Multiplier on star fluxes: 1/binning**2 (mean binning), small for differences."""
    poisson_coeff: float
    """Variance per image unit of signal."""
    dead_amp: int | None
    """Amplifier (0..15, 2 rows x 8 columns) that read out nothing, or None."""
    edge_px: int


def amp_slices(shape: tuple[int, int], amp: int) -> tuple[slice, slice]:
    """(rows, cols) of amplifier ``amp``: index = row * 8 + column."""
    ny, nx = shape
    ay, ax = divmod(amp, N_AMP_X)
    if not 0 <= ay < N_AMP_Y:
        raise ValueError(f"amp {amp} outside 0..{N_AMP_X * N_AMP_Y - 1}")
    x0, x1 = round(ax * nx / N_AMP_X), round((ax + 1) * nx / N_AMP_X)
    y0, y1 = round(ay * ny / N_AMP_Y), round((ay + 1) * ny / N_AMP_Y)
    return slice(y0, y1), slice(x0, x1)


def stars_on_image(
    wcs: TanWcs, stars: StarField, margin_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel positions and magnitudes of the stars within ``margin_px`` of the image."""
    px, py = wcs.world_to_pixel(stars.ra, stars.dec)
    nx, ny = wcs.naxis
    with np.errstate(invalid="ignore"):
        keep = (px > -margin_px) & (px < nx + margin_px) & (py > -margin_px) & (py < ny + margin_px)
    return px[keep], py[keep], stars.mag[keep]


def paint(
    rng: np.random.Generator,
    recipe: PixelRecipe,
    star_x: np.ndarray,
    star_y: np.ndarray,
    star_mag: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32) and mask (int32): noise + stars, EDGE/DETECTED/NO_DATA planes.

    Dead-amplifier pixels are NaN in the image and flagged BAD|NO_DATA, like the lost
    amplifiers the seed warns about (§1.1: the s_region does not know about them).
    """
    ny, nx = recipe.shape
    image = rng.standard_normal((ny, nx), dtype=np.float32)
    image *= np.float32(recipe.sky_sigma)
    image += np.float32(recipe.sky_level)
    mask = np.zeros((ny, nx), dtype=np.int32)

    s = float(np.hypot(recipe.psf_sigma_px, np.sqrt(1.0 / 12.0)))
    half = int(np.ceil(STAMP_HALF_WIDTH_SIGMA * s)) + 1
    norm = 1.0 / (2.0 * np.pi * s * s)
    threshold = DETECTION_SIGMA * recipe.sky_sigma
    detected = np.int32(1 << MASK_PLANES["DETECTED"])
    fluxes = recipe.flux_factor * 10.0 ** (-0.4 * (star_mag - recipe.zero_point))
    for x, y, flux in zip(star_x.tolist(), star_y.tolist(), fluxes.tolist(), strict=True):
        cx, cy = int(round(x)), int(round(y))
        x0, x1 = max(cx - half, 0), min(cx + half + 1, nx)
        y0, y1 = max(cy - half, 0), min(cy + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.exp(-0.5 * ((np.arange(x0, x1) - x) / s) ** 2)
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - y) / s) ** 2)
        stamp = (flux * norm) * np.outer(gy, gx)
        image[y0:y1, x0:x1] += stamp.astype(np.float32)
        mask[y0:y1, x0:x1] |= np.where(stamp > threshold, detected, np.int32(0))

    if recipe.edge_px > 0:
        e = recipe.edge_px
        edge = np.int32(1 << MASK_PLANES["EDGE"])
        for view in (mask[:e, :], mask[-e:, :], mask[:, :e], mask[:, -e:]):
            view |= edge
    if recipe.dead_amp is not None:
        rows, cols = amp_slices(recipe.shape, recipe.dead_amp)
        image[rows, cols] = np.nan
        mask[rows, cols] = (1 << MASK_PLANES["BAD"]) | (1 << MASK_PLANES["NO_DATA"])
    return image, mask


def variance_of(image: np.ndarray, recipe: PixelRecipe) -> np.ndarray:
    """Variance plane: sky variance plus Poisson term of the positive signal (NaN stays NaN)."""
    signal = image - np.float32(recipe.sky_level)
    np.maximum(signal, np.float32(0.0), out=signal)
    signal *= np.float32(recipe.poisson_coeff)
    signal += np.float32(recipe.sky_sigma**2)
    return signal


def to_raw_counts(image: np.ndarray, recipe: PixelRecipe) -> np.ndarray:
    """Raw ADU: a dead amplifier reads only the pedestal; clip to the uint16 range."""
    if recipe.dead_amp is not None:
        rows, cols = amp_slices(recipe.shape, recipe.dead_amp)
        image[rows, cols] = np.float32(recipe.sky_level)
    np.nan_to_num(image, copy=False, nan=recipe.sky_level)
    np.clip(image, 0, UINT16_MAX, out=image)
    return np.rint(image).astype(np.uint16)
