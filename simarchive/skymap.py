"""One tract of a DC2-like "rings" skymap: 7 x 7 patches on a single TAN projection.

Patches have a 4000 x 4000 px inner region and a 100 px border (4200 x 4200 px outer
images) at 0.2"/px; ``patch = y * 7 + x``.  The tract is placed so that the field centre
(62, -37 by default) falls in the middle of the y-overlap between patches 3 and 10 and
far from any x-overlap, reproducing the seed's "2 patches x 6 bands = 12 deepCoadds"
(§3.2, §3.6).  Coadd s_regions are the outer patch boxes, tight, so coadd rows have no
padding false positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from .focalplane import PIXEL_SCALE_ARCSEC
from .projection import TanWcs, sky_to_tangent, tangent_to_sky

PATCHES_PER_SIDE: Final = 7
PATCH_INNER_PX: Final = 4000
PATCH_BORDER_PX: Final = 100
PATCH_OUTER_PX: Final = PATCH_INNER_PX + 2 * PATCH_BORDER_PX
TRACT_INNER_PX: Final = PATCHES_PER_SIDE * PATCH_INNER_PX
N_PATCHES: Final = PATCHES_PER_SIDE * PATCHES_PER_SIDE
FIELD_CENTRE_TRACT_PIXEL: Final = (14150.0, 4010.0)
"""Where the field centre lands (0-based unbinned tract pixel): x in the middle of patch
column 3 (12000..16000, overlaps at 12000 +- 100 and 16000 +- 100 are far), y inside the
3900..4100 overlap of patch rows 0 and 1 -> patches 3 and 10."""


def binned_crpix(unbinned_0based: float, binning: int) -> float:
    """1-based CRPIX on a binned grid whose pixel i averages unbinned pixels [b*i, b*i+b)."""
    return (unbinned_0based - (binning - 1) / 2.0) / binning + 1.0


@dataclass(frozen=True)
class Tract:
    """A tract: id and the tangent point of its TAN projection."""

    tract_id: int
    ra: float
    dec: float

    @property
    def centre_pixel(self) -> float:
        """0-based unbinned tract pixel of the tangent point (same on both axes)."""
        return (TRACT_INNER_PX - 1) / 2.0

    def patch_origin(self, patch: int) -> tuple[int, int]:
        """Unbinned tract pixel of the outer patch image's pixel (0, 0) (LSST's XY0)."""
        if not 0 <= patch < N_PATCHES:
            raise ValueError(f"patch {patch} outside 0..{N_PATCHES - 1}")
        px, py = patch % PATCHES_PER_SIDE, patch // PATCHES_PER_SIDE
        return px * PATCH_INNER_PX - PATCH_BORDER_PX, py * PATCH_INNER_PX - PATCH_BORDER_PX

    def patch_wcs(self, patch: int, binning: int) -> TanWcs:
        """WCS of a (binned) outer patch image: the tract projection, shifted to XY0."""
        x0, y0 = self.patch_origin(patch)
        scale = PIXEL_SCALE_ARCSEC * binning / 3600.0
        n = PATCH_OUTER_PX // binning
        return TanWcs(
            crval=(self.ra, self.dec),
            crpix=(
                binned_crpix(self.centre_pixel - x0, binning),
                binned_crpix(self.centre_pixel - y0, binning),
            ),
            cd=((-scale, 0.0), (0.0, scale)),
            naxis=(n, n),
        )

    def patch_corners(self, patch: int) -> tuple[np.ndarray, np.ndarray]:
        """RA/Dec of the outer patch box corners (pixel edges), counter-clockwise in pixels."""
        x0, y0 = self.patch_origin(patch)
        lo_x, lo_y = x0 - 0.5, y0 - 0.5
        hi_x, hi_y = lo_x + PATCH_OUTER_PX, lo_y + PATCH_OUTER_PX
        px = np.array([lo_x, hi_x, hi_x, lo_x]) - self.centre_pixel
        py = np.array([lo_y, lo_y, hi_y, hi_y]) - self.centre_pixel
        scale = PIXEL_SCALE_ARCSEC / 3600.0
        return tangent_to_sky(self.ra, self.dec, -scale * px, scale * py)

    def patch_centre(self, patch: int) -> tuple[float, float]:
        """RA/Dec of the outer patch box centre."""
        x0, y0 = self.patch_origin(patch)
        c = PATCH_OUTER_PX / 2.0 - 0.5
        scale = PIXEL_SCALE_ARCSEC / 3600.0
        ra, dec = tangent_to_sky(
            self.ra,
            self.dec,
            -scale * (x0 + c - self.centre_pixel),
            scale * (y0 + c - self.centre_pixel),
        )
        return float(ra), float(dec)


def place_tract(tract_id: int, field_ra: float, field_dec: float) -> Tract:
    """Solve for the tangent point that puts the field centre at FIELD_CENTRE_TRACT_PIXEL."""
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    centre = (TRACT_INNER_PX - 1) / 2.0
    want_xi = -scale * (FIELD_CENTRE_TRACT_PIXEL[0] - centre)
    want_eta = scale * (FIELD_CENTRE_TRACT_PIXEL[1] - centre)
    # Start from the inverse offset and refine; converges to ~1e-12 deg in a few steps.
    ra, dec = (float(v) for v in tangent_to_sky(field_ra, field_dec, -want_xi, -want_eta))
    for _ in range(50):
        xi, eta, _valid = sky_to_tangent(ra, dec, field_ra, field_dec)
        d_xi, d_eta = float(xi) - want_xi, float(eta) - want_eta
        if abs(d_xi) < 1e-12 and abs(d_eta) < 1e-12:
            break
        ra += d_xi / np.cos(np.radians(dec))
        dec += d_eta
    return Tract(tract_id=tract_id, ra=ra % 360.0, dec=dec)
