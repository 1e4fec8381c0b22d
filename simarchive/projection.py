"""Gnomonic (TAN) projections, TAN WCS parameters and s_region polygons for the sky model.

Everything here is vectorised numpy so that a whole survey (tens of thousands of
detector-visits) can be laid out in well under a second.  The formulas are the FITS
``TAN`` projection with the default ``LONPOLE=180``, so pixel coordinates computed here
agree with ``astropy.wcs.WCS`` built from the headers that :mod:`simarchive.fitsgen`
writes (the unit tests check that).  (The ADQL engine's region geometry lives in
:mod:`simarchive.geometry`; this module only *makes* footprints.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def tangent_to_sky(
    ra0: ArrayLike, dec0: ArrayLike, xi: ArrayLike, eta: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Inverse gnomonic projection: standard coordinates (degrees, xi towards east) to RA/Dec.

    All arguments broadcast; the tangent point is (ra0, dec0) in degrees.
    """
    a0 = np.radians(ra0)
    d0 = np.radians(dec0)
    x = np.radians(xi)
    y = np.radians(eta)
    denom = np.cos(d0) - y * np.sin(d0)
    ra = np.degrees(a0 + np.arctan2(x, denom)) % 360.0
    dec = np.degrees(np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, denom)))
    return ra, dec


def sky_to_tangent(
    ra0: ArrayLike, dec0: ArrayLike, ra: ArrayLike, dec: ArrayLike
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
    """Gnomonic projection of RA/Dec onto the plane tangent at (ra0, dec0).

    Returns (xi, eta, valid) in degrees; ``valid`` is False for points on the far
    hemisphere, where the projection is undefined.
    """
    a0 = np.radians(ra0)
    d0 = np.radians(dec0)
    a = np.radians(ra)
    d = np.radians(dec)
    cos_da = np.cos(a - a0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * cos_da
    valid = cos_c > 1e-6
    safe = np.where(valid, cos_c, 1.0)
    xi = np.cos(d) * np.sin(a - a0) / safe
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * cos_da) / safe
    return np.degrees(xi), np.degrees(eta), valid


def angular_separation(
    ra1: ArrayLike, dec1: ArrayLike, ra2: ArrayLike, dec2: ArrayLike
) -> FloatArray:
    """Great-circle distance in degrees (Vincenty formula, stable at all separations)."""
    a1, d1, a2, d2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    da = a2 - a1
    num = np.hypot(
        np.cos(d2) * np.sin(da),
        np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(da),
    )
    den = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(da)
    return np.degrees(np.arctan2(num, den))


def rotation_matrix(angle_deg: ArrayLike) -> FloatArray:
    """2x2 rotation matrices (shape ``(..., 2, 2)``) for angles in degrees."""
    t = np.radians(angle_deg)
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.stack([c, -s], axis=-1), np.stack([s, c], axis=-1)], axis=-2)


@dataclass(frozen=True)
class TanWcs:
    """A celestial FITS TAN WCS with a CD matrix, as written into our headers.

    ``crpix`` is 1-based (FITS convention); ``naxis`` is (NAXIS1, NAXIS2).  Pixel
    coordinates returned by :meth:`world_to_pixel` are 0-based like astropy's.
    """

    crval: tuple[float, float]
    crpix: tuple[float, float]
    cd: tuple[tuple[float, float], tuple[float, float]]
    naxis: tuple[int, int]

    def world_to_pixel(self, ra: ArrayLike, dec: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """0-based pixel coordinates of sky positions (NaN where not projectable)."""
        xi, eta, valid = sky_to_tangent(self.crval[0], self.crval[1], ra, dec)
        inv = np.linalg.inv(np.asarray(self.cd, dtype=float))
        px = inv[0, 0] * xi + inv[0, 1] * eta + self.crpix[0] - 1.0
        py = inv[1, 0] * xi + inv[1, 1] * eta + self.crpix[1] - 1.0
        return np.where(valid, px, np.nan), np.where(valid, py, np.nan)

    def pixel_to_world(self, px: ArrayLike, py: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Sky position of 0-based pixel coordinates."""
        dx = np.asarray(px, dtype=float) - (self.crpix[0] - 1.0)
        dy = np.asarray(py, dtype=float) - (self.crpix[1] - 1.0)
        (c11, c12), (c21, c22) = self.cd
        return tangent_to_sky(
            self.crval[0], self.crval[1], c11 * dx + c12 * dy, c21 * dx + c22 * dy
        )

    def contains(self, ra: ArrayLike, dec: ArrayLike) -> NDArray[np.bool_]:
        """True where the position falls on the pixel grid: 0-based pixel in [-0.5, N-0.5)."""
        px, py = self.world_to_pixel(ra, dec)
        nx, ny = self.naxis
        with np.errstate(invalid="ignore"):
            return (px >= -0.5) & (px < nx - 0.5) & (py >= -0.5) & (py < ny - 0.5)

    def header_cards(self) -> list[tuple[str, object, str]]:
        """FITS cards that ``astropy.wcs.WCS`` reads back as exactly this WCS."""
        (c11, c12), (c21, c22) = self.cd
        return [
            ("WCSAXES", 2, "Number of WCS axes"),
            ("CTYPE1", "RA---TAN", "Gnomonic projection, right ascension"),
            ("CTYPE2", "DEC--TAN", "Gnomonic projection, declination"),
            ("CUNIT1", "deg", "Unit of CRVAL1 and CD1_*"),
            ("CUNIT2", "deg", "Unit of CRVAL2 and CD2_*"),
            ("CRPIX1", float(self.crpix[0]), "Reference pixel, axis 1 (1-based)"),
            ("CRPIX2", float(self.crpix[1]), "Reference pixel, axis 2 (1-based)"),
            ("CRVAL1", float(self.crval[0]), "[deg] RA at the reference pixel"),
            ("CRVAL2", float(self.crval[1]), "[deg] Dec at the reference pixel"),
            ("CD1_1", float(c11), "Linear transformation matrix"),
            ("CD1_2", float(c12), "Linear transformation matrix"),
            ("CD2_1", float(c21), "Linear transformation matrix"),
            ("CD2_2", float(c22), "Linear transformation matrix"),
            ("RADESYS", "ICRS", "Reference frame"),
            ("EQUINOX", 2000.0, "Equinox of the coordinates"),
        ]


def polygon_ccw(ra: FloatArray, dec: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Order each polygon's vertices counter-clockwise in (RA, Dec) as Rubin prints them.

    ``ra``/``dec`` have shape ``(n, k)``.  DP0.2's s_region polygons go counter-clockwise
    when drawn with RA increasing to the right (seed §3.7: 61.69,-36.78 -> 61.70,-37.03
    -> 62.02,-37.03 -> 62.01,-36.77); we reverse any polygon that comes out the other way.
    """
    ra0 = ra[:, :1]
    x = ((ra - ra0 + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec))
    y = dec
    area2 = np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1)
    flip = area2 < 0
    ra = np.where(flip[:, None], ra[:, ::-1], ra)
    dec = np.where(flip[:, None], dec[:, ::-1], dec)
    return ra, dec


def format_polygons(ra: FloatArray, dec: FloatArray) -> list[str]:
    """``POLYGON ICRS ra1 dec1 ...`` strings with 6 decimals, the DP0.2 s_region format."""
    out: list[str] = []
    for row_ra, row_dec in zip(ra.tolist(), dec.tolist(), strict=True):
        coords = " ".join(f"{a:.6f} {d:.6f}" for a, d in zip(row_ra, row_dec, strict=True))
        out.append(f"POLYGON ICRS {coords}")
    return out


def enclosing_diameter(
    ra_c: FloatArray, dec_c: FloatArray, ra: FloatArray, dec: FloatArray
) -> FloatArray:
    """s_fov: diameter of the circle around (ra_c, dec_c) that contains every vertex."""
    return 2.0 * np.max(angular_separation(ra_c[:, None], dec_c[:, None], ra, dec), axis=1)
