"""Sky regions for SODA cutouts and the pixel box they cover on an image.

The regions work on 3-D unit vectors (no special cases at RA 0/360 or the poles):

* :class:`CircleRegion` - a small circle (cone);
* :class:`PolygonRegion` - great-circle edges, the smaller of the two regions the
  edges bound (either winding accepted), within a hemisphere;
* :class:`RangeRegion` - an RA/Dec box (SODA ``POS=RANGE``): two meridians and two
  parallels.

:func:`pixel_box` finds the pixel bounding box of (region ∩ image) through the image's
own astropy WCS (so TAN-SIP and any other distortion astropy understands are honoured):
the box of a region is the box of its boundary, and the boundary of an intersection is
made of the parts of each boundary that lie inside the other.  So it samples

* the image's outer pixel edges every half pixel, keeping those inside the region, and
* the region's boundary, finely (a quarter pixel) but only where it comes near the
  image, keeping the samples that project onto the image,

and takes the box of the kept pixel positions.  Cost scales with the image's perimeter
and the length of region boundary near it, never with the image area.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from obsharvest.simarchive.adql.geometry import radec_to_xyz, xyz_to_radec

Curve = tuple[Callable[[np.ndarray], np.ndarray], float]
"""A boundary piece: t in [0, 1] -> unit vectors (n, 3), at constant speed; its length (rad)."""

EDGE_STEP_PX = 0.5
FINE_STEP_PX = 0.25
MAX_BOUNDARY_POINTS = 2_000_000
MAX_COARSE_POINTS = 100_000


def angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in radians between (..., 3) vectors (atan2 form: accurate at 0 and pi)."""
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.arctan2(cross, np.einsum("...i,...i->...", a, b))


def tangent_basis(center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the plane tangent to the sphere at ``center`` (3,)."""
    axis = np.array([1.0, 0.0, 0.0]) if abs(center[2]) > 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(axis, center)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(center, e1)


def _gnomonic(v: np.ndarray, center: np.ndarray, e1: np.ndarray, e2: np.ndarray):
    """Gnomonic plane coordinates of (n, 3) vectors; ``w <= 0`` on the far hemisphere."""
    w = v @ center
    with np.errstate(divide="ignore", invalid="ignore"):
        return (v @ e1) / w, (v @ e2) / w, w


@dataclass(frozen=True)
class CircleRegion:
    center: np.ndarray  # (3,)
    radius: float  # radians

    def contains(self, p: np.ndarray) -> np.ndarray:
        return angle(p, self.center) <= self.radius

    def curves(self) -> list[Curve]:
        e1, e2 = tangent_basis(self.center)
        c, r = self.center, self.radius

        def at(t: np.ndarray) -> np.ndarray:
            th = 2.0 * math.pi * t[:, None]
            return math.cos(r) * c + math.sin(r) * (np.cos(th) * e1 + np.sin(th) * e2)

        return [(at, 2.0 * math.pi * math.sin(r))]


@dataclass(frozen=True)
class PolygonRegion:
    vertices: np.ndarray  # (m, 3) unit vectors
    center: np.ndarray  # (3,) normalised mean of the vertices; inside the polygon's hemisphere

    def contains(self, p: np.ndarray) -> np.ndarray:
        """Crossing-number test in the gnomonic plane at the centre (great circles are lines)."""
        e1, e2 = tangent_basis(self.center)
        px, py, pw = _gnomonic(p, self.center, e1, e2)
        vx, vy, _ = _gnomonic(self.vertices, self.center, e1, e2)
        inside = np.zeros(len(p), dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in range(len(vx)):  # loop over edges: memory stays O(points)
                j = (i + 1) % len(vx)
                straddles = (vy[i] > py) != (vy[j] > py)
                x_cross = vx[i] + (py - vy[i]) * (vx[j] - vx[i]) / (vy[j] - vy[i])
                inside ^= straddles & (px < x_cross)
        return inside & (pw > 0)

    def curves(self) -> list[Curve]:
        out: list[Curve] = []
        m = len(self.vertices)
        for i in range(m):
            a, b = self.vertices[i], self.vertices[(i + 1) % m]
            omega = float(angle(a, b))
            out.append((_slerp(a, b, omega), omega))
        return out


def _slerp(a: np.ndarray, b: np.ndarray, omega: float) -> Callable[[np.ndarray], np.ndarray]:
    def at(t: np.ndarray) -> np.ndarray:
        t = t[:, None]
        return (np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / math.sin(omega)

    return at


@dataclass(frozen=True)
class RangeRegion:
    ra1: float  # degrees, ra1 < ra2 <= ra1 + 360 (ra1 may be negative: wraps through 0)
    ra2: float
    dec1: float
    dec2: float

    def contains(self, p: np.ndarray) -> np.ndarray:
        ra, dec = xyz_to_radec(p)
        width = self.ra2 - self.ra1
        in_ra = ((ra - self.ra1) % 360.0 <= width) | (width >= 360.0) | (np.abs(dec) >= 90.0)
        return in_ra & (dec >= self.dec1) & (dec <= self.dec2)

    def curves(self) -> list[Curve]:
        ra1, ra2, d1, d2 = self.ra1, self.ra2, self.dec1, self.dec2

        def parallel(dec: float) -> Curve:
            def at(t: np.ndarray) -> np.ndarray:
                return radec_to_xyz(ra1 + t * (ra2 - ra1), np.full_like(t, dec))

            return at, math.radians(ra2 - ra1) * math.cos(math.radians(dec))

        def meridian(ra: float) -> Curve:
            def at(t: np.ndarray) -> np.ndarray:
                return radec_to_xyz(np.full_like(t, ra), d1 + t * (d2 - d1))

            return at, math.radians(d2 - d1)

        return [parallel(d1), parallel(d2), meridian(ra1), meridian(ra2)]


Region = CircleRegion | PolygonRegion | RangeRegion


def sample_boundary(
    curves: list[Curve], center: np.ndarray, reach: float, step: float
) -> np.ndarray:
    """Points (n, 3) along the curves every ``step`` radians wherever within ``reach`` of ``center``.

    A coarse pass finds the curve segments that can come within ``reach`` (a point of a
    segment is never farther than the segment's length from its endpoints); only those
    are resampled finely.  The fine step grows if the points would exceed
    :data:`MAX_BOUNDARY_POINTS`.
    """
    total = sum(length for _, length in curves)
    if total <= 0.0:
        return np.empty((0, 3))
    coarse = max(reach / 4.0, total / MAX_COARSE_POINTS)
    near: list[tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, float, float]] = []
    for fn, length in curves:
        n = max(1, math.ceil(length / coarse))
        t = np.linspace(0.0, 1.0, n + 1)
        d = angle(fn(t), center)
        seg = length / n
        close = np.minimum(d[:-1], d[1:]) - seg <= reach
        if close.any():
            near.append((fn, t[:-1][close], 1.0 / n, seg))
    needed = sum(len(t0) * (seg / step + 2.0) for _, t0, _, seg in near)
    if needed > MAX_BOUNDARY_POINTS:
        step *= needed / MAX_BOUNDARY_POINTS
    parts = [np.empty((0, 3))]
    for fn, t0, dt, seg in near:
        k = max(2, math.ceil(seg / step) + 1)
        t = (t0[:, None] + dt * np.linspace(0.0, 1.0, k)[None, :]).ravel()
        parts.append(fn(t))
    return np.concatenate(parts)


def _edge_pixels(nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel coordinates along the outer edges of the pixel grid, every half pixel."""
    xs = np.linspace(-0.5, nx - 0.5, math.ceil(nx / EDGE_STEP_PX) + 1)
    ys = np.linspace(-0.5, ny - 0.5, math.ceil(ny / EDGE_STEP_PX) + 1)
    ex = np.concatenate([xs, xs, np.full_like(ys, -0.5), np.full_like(ys, nx - 0.5)])
    ey = np.concatenate([np.full_like(xs, -0.5), np.full_like(xs, ny - 0.5), ys, ys])
    return ex, ey


def _to_xyz(wcs: WCS, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    sky = wcs.pixel_to_world(x, y)
    icrs = sky.icrs if isinstance(sky, SkyCoord) else sky
    return radec_to_xyz(icrs.ra.deg, icrs.dec.deg)


def pixel_box(wcs: WCS, shape: tuple[int, int], region: Region) -> tuple[slice, slice] | None:
    """(rows, columns) slices of the pixels of an image (``shape`` = (ny, nx)) that the region
    touches, or None when they do not overlap.  ``wcs`` must be a 2-D celestial WCS."""
    ny, nx = shape
    ex, ey = _edge_pixels(nx, ny)
    edge = _to_xyz(wcs, ex, ey)
    ok = np.isfinite(edge).all(axis=1)
    ex, ey, edge = ex[ok], ey[ok], edge[ok]
    if len(edge) < 2:
        return None
    center = _to_xyz(wcs, np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0]))[0]
    if not np.isfinite(center).all():
        return None
    scale = angle(edge[:-1], edge[1:]) / EDGE_STEP_PX
    scale = scale[scale > 0]
    pixel = float(scale.min()) if len(scale) else 1e-9
    reach = float(angle(edge, center).max()) + 4.0 * pixel

    inside = region.contains(edge)
    xs, ys = [ex[inside]], [ey[inside]]
    boundary = sample_boundary(region.curves(), center, reach, FINE_STEP_PX * pixel)
    boundary = boundary[angle(boundary, center) <= reach]
    if len(boundary):
        ra, dec = xyz_to_radec(boundary)
        bx, by = wcs.world_to_pixel(SkyCoord(ra, dec, unit="deg", frame="icrs"))
        bx, by = np.asarray(bx, dtype=float), np.asarray(by, dtype=float)
        on = (
            np.isfinite(bx)
            & np.isfinite(by)
            & (bx >= -0.5)
            & (bx <= nx - 0.5)
            & (by >= -0.5)
            & (by <= ny - 0.5)
        )
        xs.append(bx[on])
        ys.append(by[on])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if not len(x):
        return None
    x0, x1 = (int(np.clip(np.floor(v + 0.5), 0, nx - 1)) for v in (x.min(), x.max()))
    y0, y1 = (int(np.clip(np.floor(v + 0.5), 0, ny - 1)) for v in (y.min(), y.max()))
    return slice(y0, y1 + 1), slice(x0, x1 + 1)
