"""A fixed, seed-determined list of stars over the field, rendered into every image.

Using one star list for all products makes images of the same sky consistent (a star
sits at the same RA/Dec in raws, calexps and coadds), which is what lets tests and users
check astrometry by eye.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from obsharvest.simarchive.sky.projection import tangent_to_sky

STAR_FIELD_RADIUS_DEG: Final = 3.8
"""Covers every kept detector (dither 1.5 deg + focal plane ~2.1 deg)."""
STAR_DENSITY_PER_DEG2: Final = 600.0
"""~30 stars per detector: enough to look like a sky, cheap to render."""
MAG_RANGE: Final = (16.0, 24.0)
COUNT_SLOPE: Final = 0.3
"""d log10 N / dm of the magnitude distribution."""
STREAM_STARS: Final = 2


@dataclass(frozen=True)
class StarField:
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray


def make_starfield(seed: int, field_ra: float, field_dec: float) -> StarField:
    """Deterministic stars, uniform on the tangent plane, magnitudes ~ 10**(0.3 m)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_STARS]))
    n = int(STAR_DENSITY_PER_DEG2 * np.pi * STAR_FIELD_RADIUS_DEG**2)
    r = STAR_FIELD_RADIUS_DEG * np.sqrt(rng.uniform(size=n))
    a = rng.uniform(0.0, 2.0 * np.pi, size=n)
    ra, dec = tangent_to_sky(field_ra, field_dec, r * np.sin(a), r * np.cos(a))
    lo, hi = (10.0 ** (COUNT_SLOPE * m) for m in MAG_RANGE)
    mag = np.log10(rng.uniform(lo, hi, size=n)) / COUNT_SLOPE
    return StarField(ra=np.asarray(ra), dec=np.asarray(dec), mag=mag)
