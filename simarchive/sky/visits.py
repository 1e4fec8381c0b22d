"""The synthetic visit list: boresights, bands, rotations, times, observing conditions.

Shaped after DP0.2 around (62, -37): dithered pointings within ~1.5 deg of the field
centre (so nearly every visit covers the centre, as the seed's 443 unique visits show),
bands in the seed's calexp proportions (§3.4: u .07, g .11, r .27, i .25, z .13,
y .17), 30 s exposures, 6-digit visit ids increasing with time.  A release's
:class:`~obsharvest.simarchive.sky.naming.SurveyShape` changes the dither radius, the dates and the
visit numbering (DP1: ``day_obs * 100000 + seq_num``) without reshuffling the random
draws, so DP0.2 stays exactly what it was.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Final

import numpy as np

from obsharvest.simarchive.sky.naming import BANDS, VISIT_IDS_DAY_OBS, SurveyShape, get_naming
from obsharvest.simarchive.sky.projection import tangent_to_sky

BAND_FRACTIONS: Final = {"u": 0.07, "g": 0.11, "r": 0.27, "i": 0.25, "z": 0.13, "y": 0.17}
MIN_VISITS_PER_BAND: Final = 2
"""So that every band shows up among calexps at the field centre even for small surveys."""
EXPTIME_S: Final = 30.0
VISIT_ID_RANGE: Final = (159000, 999999)
SITE_LATITUDE_DEG: Final = -30.2446
MAX_HOUR_ANGLE_H: Final = 3.0
SEEING_MEDIAN_ARCSEC: Final = 0.8

NIGHT_ROLLOVER_DAYS: Final = 0.5
"""Rubin's day_obs changes at 12:00 UTC-12h, i.e. day_obs = date of (MJD - 0.5)."""
MJD_EPOCH: Final = np.datetime64("1858-11-17", "D")
SEQ_SPACING_S: Final = 60.0
"""30 s exposure + readout, slew and filter changes: about one seq_num a minute."""
SEQ_START_DAY_FRACTION: Final = 0.45
"""Counting starts near evening twilight (~19:50 in Chile, day_obs fraction 0.45)."""

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


def day_obs_visit_ids(t_min: np.ndarray) -> np.ndarray:
    """``day_obs * 100000 + seq_num`` for time-sorted start times (MJD).

    seq_num follows the time since evening twilight (about one a minute, as a night of
    30 s exposures numbers them) and is forced to increase within a day_obs, so ids are
    unique and sorted like the times.
    """
    shifted = np.asarray(t_min) - NIGHT_ROLLOVER_DAYS
    day = np.floor(shifted)
    dates = MJD_EPOCH + day.astype(np.int64).astype("timedelta64[D]")
    day_obs = np.array([int(str(d).replace("-", "")) for d in dates], dtype=np.int64)
    since = np.maximum(shifted - day - SEQ_START_DAY_FRACTION, 0.0)
    seq = 1 + np.floor(since * 86400.0 / SEQ_SPACING_S).astype(np.int64)
    for i in range(1, len(seq)):
        if day_obs[i] == day_obs[i - 1] and seq[i] <= seq[i - 1]:
            seq[i] = seq[i - 1] + 1
    return day_obs * 100_000 + seq


def make_visits(
    seed: int,
    n_visits: int,
    field_ra: float,
    field_dec: float,
    shape: SurveyShape | None = None,
    extra_visits: int = 0,
) -> Visits:
    """Deterministic visits from the seed, laid out as the release's survey shape says
    (default: DP0.2's).

    ``extra_visits`` are later visits ("time moves on"): drawn from their own random
    stream and dated after the survey, so the first ``n_visits`` are unchanged by them.
    """
    base = _draw_visits(seed, n_visits, field_ra, field_dec, shape, stream=(STREAM_VISITS,))
    if extra_visits <= 0:
        return base
    later = _draw_visits(
        seed,
        extra_visits,
        field_ra,
        field_dec,
        shape,
        stream=(STREAM_VISITS, 1),
        after=float(base.t_max.max()),
    )
    if (shape or get_naming("dp02").survey).visit_ids != VISIT_IDS_DAY_OBS:
        later = replace(
            later, visit=int(base.visit.max()) + 1 + np.arange(extra_visits, dtype=np.int64)
        )
    return Visits(
        **{
            f.name: np.concatenate([getattr(base, f.name), getattr(later, f.name)])
            for f in fields(Visits)
        }
    )


def _draw_visits(
    seed: int,
    n_visits: int,
    field_ra: float,
    field_dec: float,
    shape: SurveyShape | None,
    *,
    stream: tuple[int, ...],
    after: float | None = None,
) -> Visits:
    if n_visits < 1:
        raise ValueError("n_visits must be positive")
    if shape is None:
        shape = get_naming("dp02").survey
    rng = np.random.default_rng(np.random.SeedSequence([seed, *stream]))
    if after is not None:  # later visits: the nights right after the survey so far
        start = np.floor(after) + 1
        shape = replace(shape, mjd_range=(start, start + max(3.0, n_visits / 10)))
    counts = band_counts(n_visits)
    bands = rng.permutation(np.repeat(np.array(BANDS), [counts[b] for b in BANDS]))

    radius = shape.dither_radius_deg * np.sqrt(rng.uniform(size=n_visits))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n_visits)
    ra, dec = tangent_to_sky(field_ra, field_dec, radius * np.sin(angle), radius * np.cos(angle))
    rotation = rng.uniform(0.0, 360.0, size=n_visits)

    mjd_start, mjd_end = shape.mjd_range
    nights = np.sort(rng.integers(int(mjd_start), int(mjd_end), size=n_visits))
    t_min = nights + rng.uniform(0.0, 0.35, size=n_visits)
    t_min = np.sort(t_min)
    exptime = np.full(n_visits, EXPTIME_S)
    t_max = t_min + exptime / 86400.0

    n_ids = VISIT_ID_RANGE[1] - VISIT_ID_RANGE[0] + 1
    visit = VISIT_ID_RANGE[0] + np.sort(rng.choice(n_ids, size=n_visits, replace=False))
    if shape.visit_ids == VISIT_IDS_DAY_OBS:
        visit = day_obs_visit_ids(t_min)

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
