"""The synthetic visit list: boresights, bands, rotations, times, observing conditions.

Shaped after DP0.2 around (62, -37): dithered pointings within ~1.5 deg of the field
centre (so nearly every visit covers the centre, as the seed's 443 unique visits show),
bands in the seed's calexp proportions (§3.4: u .07, g .11, r .27, i .25, z .13,
y .17), 30 s exposures, 6-digit visit ids increasing with time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from .naming import BANDS
from .projection import tangent_to_sky

BAND_FRACTIONS: Final = {"u": 0.07, "g": 0.11, "r": 0.27, "i": 0.25, "z": 0.13, "y": 0.17}
MIN_VISITS_PER_BAND: Final = 2
"""So that every band shows up among calexps at the field centre even for small surveys."""
DITHER_RADIUS_DEG: Final = 1.5
MJD_START: Final = 59580.0
MJD_END: Final = 61000.0
EXPTIME_S: Final = 30.0
VISIT_ID_RANGE: Final = (159000, 999999)
SITE_LATITUDE_DEG: Final = -30.2446
MAX_HOUR_ANGLE_H: Final = 3.0
SEEING_MEDIAN_ARCSEC: Final = 0.8

# Independent random streams, so that changing one aspect never reshuffles another.
STREAM_VISITS: Final = 1


@dataclass(frozen=True)
class Visits:
    """Columnar visit table (one entry per visit, sorted by time)."""

    visit: np.ndarray
    band: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    rotation_deg: np.ndarray
    """Camera rotation: focal-plane +x axis angle from west through north."""
    t_min: np.ndarray
    t_max: np.ndarray
    exptime: np.ndarray
    seeing_arcsec: np.ndarray
    airmass: np.ndarray

    def __len__(self) -> int:
        return len(self.visit)


def band_counts(n: int) -> dict[str, int]:
    """Visits per band: the seed's proportions, at least 2 per band when n allows it."""
    floor = min(MIN_VISITS_PER_BAND, n // len(BANDS))
    target = {b: BAND_FRACTIONS[b] * n for b in BANDS}
    counts = {b: max(floor, int(target[b])) for b in BANDS}
    while sum(counts.values()) < n:
        b = max(BANDS, key=lambda b: target[b] - counts[b])
        counts[b] += 1
    while sum(counts.values()) > n:
        b = max((b for b in BANDS if counts[b] > floor), key=lambda b: counts[b] - target[b])
        counts[b] -= 1
    return counts


def make_visits(seed: int, n_visits: int, field_ra: float, field_dec: float) -> Visits:
    """Deterministic visits from the seed."""
    if n_visits < 1:
        raise ValueError("n_visits must be positive")
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_VISITS]))
    counts = band_counts(n_visits)
    bands = rng.permutation(np.repeat(np.array(BANDS), [counts[b] for b in BANDS]))

    radius = DITHER_RADIUS_DEG * np.sqrt(rng.uniform(size=n_visits))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n_visits)
    ra, dec = tangent_to_sky(field_ra, field_dec, radius * np.sin(angle), radius * np.cos(angle))
    rotation = rng.uniform(0.0, 360.0, size=n_visits)

    nights = np.sort(rng.integers(int(MJD_START), int(MJD_END), size=n_visits))
    t_min = nights + rng.uniform(0.0, 0.35, size=n_visits)
    t_min = np.sort(t_min)
    exptime = np.full(n_visits, EXPTIME_S)
    t_max = t_min + exptime / 86400.0

    n_ids = VISIT_ID_RANGE[1] - VISIT_ID_RANGE[0] + 1
    visit = VISIT_ID_RANGE[0] + np.sort(rng.choice(n_ids, size=n_visits, replace=False))

    seeing = np.clip(SEEING_MEDIAN_ARCSEC * rng.lognormal(0.0, 0.2, size=n_visits), 0.5, 1.6)
    hour_angle = np.radians(15.0 * rng.uniform(-MAX_HOUR_ANGLE_H, MAX_HOUR_ANGLE_H, n_visits))
    lat, d = np.radians(SITE_LATITUDE_DEG), np.radians(dec)
    cos_z = np.sin(lat) * np.sin(d) + np.cos(lat) * np.cos(d) * np.cos(hour_angle)
    airmass = 1.0 / np.clip(cos_z, 0.2, 1.0)

    return Visits(
        visit=visit.astype(np.int64),
        band=bands,
        ra=np.asarray(ra),
        dec=np.asarray(dec),
        rotation_deg=rotation,
        t_min=t_min,
        t_max=t_max,
        exptime=exptime,
        seeing_arcsec=seeing,
        airmass=airmass,
    )
