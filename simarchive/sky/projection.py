"""Gnomonic (TAN) projections, TAN WCS parameters and s_region polygons for the sky model.

Everything here is vectorised numpy so that a whole survey (tens of thousands of
detector-visits) can be laid out in well under a second.  The formulas are the FITS
``TAN`` projection with the default ``LONPOLE=180``, so pixel coordinates computed here
agree with ``astropy.wcs.WCS`` built from the headers that :mod:`obsharvest.simarchive.sky.fitsgen`
writes (the unit tests check that).  (The ADQL engine's region geometry lives in
:mod:`obsharvest.simarchive.adql.geometry`; this module only *makes* footprints.)

TAN-SIP (Shupe et al. 2005) is supported the way astropy applies it: pixel offsets from
CRPIX ``(u, v)`` become ``(u + A(u, v), v + B(u, v))`` before the CD matrix, and the
sky-to-pixel direction solves that equation iteratively (as ``all_world2pix`` does) --
the fitted inverse polynomials ``AP``/``BP`` are written for other readers but never
used to decide containment.
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


def sip_terms(order: int, lowest: int = 2) -> tuple[tuple[int, int], ...]:
    """(p, q) exponent pairs with ``lowest <= p + q <= order``, by degree then p descending.

    Forward SIP polynomials start at degree 2 (the linear part is the CD matrix).
    """
    return tuple((p, d - p) for d in range(lowest, order + 1) for p in range(d, -1, -1))


def sip_poly(
    terms: tuple[tuple[int, int], ...], coeffs: ArrayLike, u: ArrayLike, v: ArrayLike
) -> FloatArray:
    """``sum_k coeffs[..., k] * u**p_k * v**q_k``; coeffs' last axis runs over ``terms``."""
    c = np.asarray(coeffs, dtype=float)
    u = np.asarray(u, dtype=float)
    v = np.asarray(v, dtype=float)
    out = np.zeros(np.broadcast_shapes(c.shape[:-1], u.shape, v.shape))
    for k, (p, q) in enumerate(terms):
        out += c[..., k] * u**p * v**q
    return out


SIP_SOLVE_ITERATIONS = 40
SIP_SOLVE_TOLERANCE_PX = 1e-11


def sip_solve(
    terms: tuple[tuple[int, int], ...],
    a: ArrayLike,
    b: ArrayLike,
    big_u: ArrayLike,
    big_v: ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """Solve ``u + A(u, v) = U``, ``v + B(u, v) = V`` for (u, v) by fixed-point iteration.

    The distortion's derivatives are ~1e-3 over an image, so each step gains three
    digits; points far enough out that the iteration diverges come back NaN (they are
    nowhere near the pixel grid, and astropy's ``all_world2pix`` fails there too).
    """
    big_u = np.asarray(big_u, dtype=float)
    big_v = np.asarray(big_v, dtype=float)
    u, v = big_u.copy(), big_v.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(SIP_SOLVE_ITERATIONS):
            nu = big_u - sip_poly(terms, a, u, v)
            nv = big_v - sip_poly(terms, b, u, v)
            step = np.nanmax(
                np.abs(np.concatenate([np.ravel(nu - u), np.ravel(nv - v)])), initial=0.0
            )
            u, v = nu, nv
            if step < SIP_SOLVE_TOLERANCE_PX:
                break
        bad = ~(
            (np.abs(u + sip_poly(terms, a, u, v) - big_u) < 1e-6)
            & (np.abs(v + sip_poly(terms, b, u, v) - big_v) < 1e-6)
        )
    return np.where(bad, np.nan, u), np.where(bad, np.nan, v)


@dataclass(frozen=True)
class Sip:
    """SIP distortion polynomials of a TAN-SIP header (coefficients in ``sip_terms`` order)."""

    order: int
    a: tuple[float, ...]
    b: tuple[float, ...]
    inv_order: int = 0
    ap: tuple[float, ...] = ()
    """Fitted inverse (pixel offset minus intermediate), terms ``sip_terms(inv_order, 1)``."""
    bp: tuple[float, ...] = ()

    @property
    def terms(self) -> tuple[tuple[int, int], ...]:
        return sip_terms(self.order)

    def distort(self, u: ArrayLike, v: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(u + A, v + B) for pixel offsets from CRPIX."""
        return (
            np.asarray(u, dtype=float) + sip_poly(self.terms, self.a, u, v),
            np.asarray(v, dtype=float) + sip_poly(self.terms, self.b, u, v),
        )

    def undistort(self, big_u: ArrayLike, big_v: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Pixel offsets whose distorted position is (U, V) (exact solve, not AP/BP)."""
        return sip_solve(self.terms, self.a, self.b, big_u, big_v)

    def header_cards(self) -> list[tuple[str, object, str]]:
        """``A_ORDER``, ``A_p_q``, ``B_*`` and, if fitted, ``AP_*``/``BP_*`` cards."""
        cards: list[tuple[str, object, str]] = []
        blocks = [("A", self.order, self.a, 2), ("B", self.order, self.b, 2)]
        if self.inv_order:
            blocks += [("AP", self.inv_order, self.ap, 1), ("BP", self.inv_order, self.bp, 1)]
        for name, order, coeffs, lowest in blocks:
            cards.append((f"{name}_ORDER", order, f"SIP polynomial order, {name}"))
            for (p, q), c in zip(sip_terms(order, lowest), coeffs, strict=True):
                cards.append((f"{name}_{p}_{q}", float(c), "SIP coefficient"))
        return cards


def fit_sip_inverse(
    sip: Sip, naxis: tuple[int, int], crpix: tuple[float, float], inv_order: int
) -> Sip:
    """The same SIP with ``AP``/``BP`` fitted (least squares) over the image plus a margin."""
    lo = [-0.5 - c + 1.0 for c in crpix]
    hi = [n - 0.5 - c + 1.0 for n, c in zip(naxis, crpix, strict=True)]
    pad = [0.05 * (h - lo_) for lo_, h in zip(lo, hi, strict=True)]
    gu, gv = np.meshgrid(
        np.linspace(lo[0] - pad[0], hi[0] + pad[0], 25),
        np.linspace(lo[1] - pad[1], hi[1] + pad[1], 25),
    )
    u, v = gu.ravel(), gv.ravel()
    big_u, big_v = sip.distort(u, v)
    terms = sip_terms(inv_order, 1)
    scale = max(abs(x) for x in (*lo, *hi)) + max(pad)
    design = np.stack([(big_u / scale) ** p * (big_v / scale) ** q for p, q in terms], axis=1)
    norm = np.array([scale ** -(p + q) for p, q in terms])
    sol, *_ = np.linalg.lstsq(design, np.stack([u - big_u, v - big_v], axis=1), rcond=None)
    ap, bp = sol[:, 0] * norm, sol[:, 1] * norm
    return Sip(
        order=sip.order,
        a=sip.a,
        b=sip.b,
        inv_order=inv_order,
        ap=tuple(float(x) for x in ap),
        bp=tuple(float(x) for x in bp),
    )


def fit_tan_sip_batch(
    du: FloatArray, dv: FloatArray, xi: FloatArray, eta: FloatArray, order: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Least-squares CD matrices and SIP ``A``/``B`` for many images sharing one grid.

    ``du``/``dv`` (G,) are grid pixel offsets from CRPIX; ``xi``/``eta`` (n, G) are the
    grid's standard coordinates (deg) on the plane tangent at each image's CRVAL.  The
    polynomial has no constant term: CRPIX maps to CRVAL exactly, as the caller chose it.
    Returns (cd (n, 2, 2), a (n, T), b (n, T)) with T = ``len(sip_terms(order))``.
    """
    terms = sip_terms(order, 1)
    scale = float(max(np.max(np.abs(du)), np.max(np.abs(dv))))
    design = np.stack([(du / scale) ** p * (dv / scale) ** q for p, q in terms], axis=1)
    pinv = np.linalg.pinv(design)  # (M, G), shared by every image
    norm = np.array([scale ** -(p + q) for p, q in terms])
    c_xi = np.einsum("mg,ng->nm", pinv, xi) * norm
    c_eta = np.einsum("mg,ng->nm", pinv, eta) * norm
    cd = np.stack([c_xi[:, :2], c_eta[:, :2]], axis=1)  # terms (1,0), (0,1) first
    higher = np.stack([c_xi[:, 2:], c_eta[:, 2:]], axis=1)  # (n, 2, T)
    ab = np.einsum("nij,njt->nit", np.linalg.inv(cd), higher)
    return cd, ab[:, 0], ab[:, 1]


@dataclass(frozen=True)
class TanWcs:
    """A celestial FITS TAN (or TAN-SIP) WCS with a CD matrix, as written into our headers.

    ``crpix`` is 1-based (FITS convention); ``naxis`` is (NAXIS1, NAXIS2).  Pixel
    coordinates returned by :meth:`world_to_pixel` are 0-based like astropy's.
    """

    crval: tuple[float, float]
    crpix: tuple[float, float]
    cd: tuple[tuple[float, float], tuple[float, float]]
    naxis: tuple[int, int]
    sip: Sip | None = None

    def world_to_pixel(self, ra: ArrayLike, dec: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """0-based pixel coordinates of sky positions (NaN where not projectable)."""
        xi, eta, valid = sky_to_tangent(self.crval[0], self.crval[1], ra, dec)
        inv = np.linalg.inv(np.asarray(self.cd, dtype=float))
        if self.sip is not None:
            big_u = inv[0, 0] * xi + inv[0, 1] * eta
            big_v = inv[1, 0] * xi + inv[1, 1] * eta
            u, v = self.sip.undistort(big_u, big_v)
            px, py = u + self.crpix[0] - 1.0, v + self.crpix[1] - 1.0
            return np.where(valid, px, np.nan), np.where(valid, py, np.nan)
        px = inv[0, 0] * xi + inv[0, 1] * eta + self.crpix[0] - 1.0
        py = inv[1, 0] * xi + inv[1, 1] * eta + self.crpix[1] - 1.0
        return np.where(valid, px, np.nan), np.where(valid, py, np.nan)

    def pixel_to_world(self, px: ArrayLike, py: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Sky position of 0-based pixel coordinates."""
        dx = np.asarray(px, dtype=float) - (self.crpix[0] - 1.0)
        dy = np.asarray(py, dtype=float) - (self.crpix[1] - 1.0)
        if self.sip is not None:
            dx, dy = self.sip.distort(dx, dy)
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
        if self.sip is not None:
            ctypes = [
                ("CTYPE1", "RA---TAN-SIP", "TAN + SIP distortion, right ascension"),
                ("CTYPE2", "DEC--TAN-SIP", "TAN + SIP distortion, declination"),
            ]
        else:
            ctypes = [
                ("CTYPE1", "RA---TAN", "Gnomonic projection, right ascension"),
                ("CTYPE2", "DEC--TAN", "Gnomonic projection, declination"),
            ]
        cards: list[tuple[str, object, str]] = [
            ("WCSAXES", 2, "Number of WCS axes"),
            *ctypes,
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
        if self.sip is not None:
            cards += self.sip.header_cards()
        return cards


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
