"""One tract of a skymap: square patches with overlapping borders on a single TAN projection.

Two geometries, keyed by skymap name (:data:`SKYMAPS`):

* ``DC2`` (DP0.2's "rings" skymap): 7 x 7 patches of 4000 x 4000 px inner region and
  100 px border (4200 x 4200 px outer images) at 0.2"/px; ``patch = y * 7 + x``.
* ``lsst_cells_v1`` (DP1): 10 x 10 patches of 3200 px inner, 100 px border (3400 x 3400
  px outer, dax_obscore's dp1 ``s_xel``); ``patch = y * 10 + x``.

The tract is placed so that the field centre (62, -37 by default) falls in the middle of
the y-overlap between two patches of one column and far from any x-overlap,
reproducing the seed's "2 patches x 6 bands = 12 deepCoadds" (§3.2, §3.6).  Coadd
s_regions are the outer patch boxes, tight, so coadd rows have no padding false
positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

from obsharvest.simarchive.sky.focalplane import PIXEL_SCALE_ARCSEC
from obsharvest.simarchive.sky.projection import TanWcs, sky_to_tangent, tangent_to_sky


@dataclass(frozen=True)
class SkymapGeometry:
    """Patch grid of a tract, in unbinned 0.2" pixels."""

    patches_per_side: int
    patch_inner_px: int
    patch_border_px: int
    field_centre_tract_pixel: tuple[float, float]
    """Where the field centre lands (0-based unbinned tract pixel): x in the middle of a
    patch column, y inside the overlap of patch rows 0 and 1."""

    @property
    def patch_outer_px(self) -> int:
        return self.patch_inner_px + 2 * self.patch_border_px

    @property
    def tract_inner_px(self) -> int:
        return self.patches_per_side * self.patch_inner_px

    @property
    def n_patches(self) -> int:
        return self.patches_per_side * self.patches_per_side


SKYMAPS: Final[MappingProxyType[str, SkymapGeometry]] = MappingProxyType(
    {
        # x 14150 in column 3 (12000..16000); y 4010 in the 3900..4100 overlap -> 3 and 10
        "DC2": SkymapGeometry(7, 4000, 100, (14150.0, 4010.0)),
        # x 14400 in column 4 (12800..16000); y 3210 in the 3100..3300 overlap -> 4 and 14
        "lsst_cells_v1": SkymapGeometry(10, 3200, 100, (14400.0, 3210.0)),
    }
)
DC2: Final = SKYMAPS["DC2"]

# DC2 values under their historical names.
PATCHES_PER_SIDE: Final = DC2.patches_per_side
PATCH_INNER_PX: Final = DC2.patch_inner_px
PATCH_BORDER_PX: Final = DC2.patch_border_px
PATCH_OUTER_PX: Final = DC2.patch_outer_px
TRACT_INNER_PX: Final = DC2.tract_inner_px
N_PATCHES: Final = DC2.n_patches
FIELD_CENTRE_TRACT_PIXEL: Final = DC2.field_centre_tract_pixel


def binned_crpix(unbinned_0based: float, binning: int) -> float:
    """1-based CRPIX on a binned grid whose pixel i averages unbinned pixels [b*i, b*i+b)."""
    return (unbinned_0based - (binning - 1) / 2.0) / binning + 1.0


@dataclass(frozen=True)
class Tract:
    """A tract: id, the tangent point of its TAN projection and its patch grid."""

    tract_id: int
    ra: float
    dec: float
    geometry: SkymapGeometry = DC2

    @property
    def centre_pixel(self) -> float:
        """0-based unbinned tract pixel of the tangent point (same on both axes)."""
        return (self.geometry.tract_inner_px - 1) / 2.0

    @property
    def n_patches(self) -> int:
        return self.geometry.n_patches

    def patch_origin(self, patch: int) -> tuple[int, int]:
        """Unbinned tract pixel of the outer patch image's pixel (0, 0) (LSST's XY0)."""
        g = self.geometry
        if not 0 <= patch < g.n_patches:
            raise ValueError(f"patch {patch} outside 0..{g.n_patches - 1}")
        px, py = patch % g.patches_per_side, patch // g.patches_per_side
        return (
            px * g.patch_inner_px - g.patch_border_px,
            py * g.patch_inner_px - g.patch_border_px,
        )

    def patch_wcs(self, patch: int, binning: int) -> TanWcs:
        """WCS of a (binned) outer patch image: the tract projection, shifted to XY0."""
        x0, y0 = self.patch_origin(patch)
        scale = PIXEL_SCALE_ARCSEC * binning / 3600.0
        n = self.geometry.patch_outer_px // binning
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
        outer = self.geometry.patch_outer_px
        hi_x, hi_y = lo_x + outer, lo_y + outer
        px = np.array([lo_x, hi_x, hi_x, lo_x]) - self.centre_pixel
        py = np.array([lo_y, lo_y, hi_y, hi_y]) - self.centre_pixel
        scale = PIXEL_SCALE_ARCSEC / 3600.0
        return tangent_to_sky(self.ra, self.dec, -scale * px, scale * py)

    def patch_centre(self, patch: int) -> tuple[float, float]:
        """RA/Dec of the outer patch box centre."""
        x0, y0 = self.patch_origin(patch)
        c = self.geometry.patch_outer_px / 2.0 - 0.5
        scale = PIXEL_SCALE_ARCSEC / 3600.0
        ra, dec = tangent_to_sky(
            self.ra,
            self.dec,
            -scale * (x0 + c - self.centre_pixel),
            scale * (y0 + c - self.centre_pixel),
        )
        return float(ra), float(dec)


def place_tract(
    tract_id: int, field_ra: float, field_dec: float, geometry: SkymapGeometry = DC2
) -> Tract:
    """Solve for the tangent point that puts the field centre at its chosen tract pixel."""
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    centre = (geometry.tract_inner_px - 1) / 2.0
    fx, fy = geometry.field_centre_tract_pixel
    want_xi = -scale * (fx - centre)
    want_eta = scale * (fy - centre)
    # Start from the inverse offset and refine; converges to ~1e-12 deg in a few steps.
    ra, dec = (float(v) for v in tangent_to_sky(field_ra, field_dec, -want_xi, -want_eta))
    for _ in range(50):
        xi, eta, _valid = sky_to_tangent(ra, dec, field_ra, field_dec)
        d_xi, d_eta = float(xi) - want_xi, float(eta) - want_eta
        if abs(d_xi) < 1e-12 and abs(d_eta) < 1e-12:
            break
        ra += d_xi / np.cos(np.radians(dec))
        dec += d_eta
    return Tract(tract_id=tract_id, ra=ra % 360.0, dec=dec, geometry=geometry)
