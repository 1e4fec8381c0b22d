"""Data-release naming tables: collection, dataset types, subtypes, identifier formats.

Everything that differs between Rubin data previews (DP0.2 now, DP1 later: collection
``LSST.DP1``, subtypes ``lsst.visit_image`` / ``lsst.deep_coadd`` / ...) lives in one
:class:`Naming` record so that adding a release is adding a table entry, not code.
The survey model refers to products by a release-independent *kind*.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Final

RAW: Final = "raw"
CALEXP: Final = "calexp"
DIFF: Final = "diff"
DEEP_COADD: Final = "deep_coadd"
TEMPLATE_COADD: Final = "template_coadd"

VISIT_KINDS: Final = (RAW, CALEXP, DIFF)
"""Per detector-visit products, in table order."""
COADD_KINDS: Final = (DEEP_COADD, TEMPLATE_COADD)
"""Per patch-and-band products, in table order."""

BANDS: Final = ("u", "g", "r", "i", "z", "y")


@dataclass(frozen=True)
class KindNaming:
    """How one product kind is called in a release."""

    dataset_type: str
    """Butler dataset type, used in file names and the uuid key."""
    subtype: str
    """ObsCore ``dataproduct_subtype``."""
    calib_level: int


@dataclass(frozen=True)
class Naming:
    """Release-specific names and identifier formats."""

    repo: str
    obs_collection: str
    facility_name: str
    instrument_name: str
    telescope: str
    skymap: str
    tract: int
    filter_fmt: str
    """Physical filter from band, e.g. ``i_sim_1.4``."""
    id_fmt: str
    """Datalink ID (what ``access_url`` carries)."""
    did_fmt: str
    """``obs_publisher_did``."""
    kinds: MappingProxyType[str, KindNaming]
    spectral_ranges_m: MappingProxyType[str, tuple[float, float]]
    """ObsCore em_min/em_max per band (dax_obscore's DP0.2 configuration)."""

    def physical_filter(self, band: str) -> str:
        return self.filter_fmt.format(band=band)

    def product_id(self, uuid: str) -> str:
        return self.id_fmt.format(repo=self.repo, uuid=uuid)

    def publisher_did(self, uuid: str) -> str:
        return self.did_fmt.format(repo=self.repo, uuid=uuid)

    def visit_file_path(self, kind: str, band: str, visit: int, detector_name: str) -> str:
        """Relative path of a detector-visit file, only ``[A-Za-z0-9_./-]``."""
        dst = self.kinds[kind].dataset_type
        flt = _safe(self.physical_filter(band))
        inst = _safe(self.instrument_name)
        return (
            f"{self.repo}/{dst}/{band}/{visit}/"
            f"{dst}_{inst}_{band}_{flt}_{visit}_{detector_name}.fits"
        )

    def coadd_file_path(self, kind: str, band: str, patch: int) -> str:
        """Relative path of a coadd patch file."""
        dst = self.kinds[kind].dataset_type
        return (
            f"{self.repo}/{dst}/{self.tract}/{patch}/{band}/"
            f"{dst}_{self.tract}_{patch}_{band}_{_safe(self.skymap)}.fits"
        )


@cache
def _safe(text: str) -> str:
    """File-name-safe version of a name (``i_sim_1.4`` -> ``i_sim_1_4``, as Rubin does)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


NAMINGS: Final[MappingProxyType[str, Naming]] = MappingProxyType(
    {
        "dp02": Naming(
            repo="dp02",
            obs_collection="LSST.DP02",
            facility_name="Vera C. Rubin Observatory",
            instrument_name="LSSTCam-imSim",
            telescope="LSST",
            skymap="DC2",
            tract=3831,
            filter_fmt="{band}_sim_1.4",
            id_fmt="butler://{repo}/{uuid}",
            did_fmt="ivo://org.rubinobs/usdac/{repo}?repo={repo}&id={uuid}",
            kinds=MappingProxyType(
                {
                    RAW: KindNaming("raw", "lsst.raw", 1),
                    CALEXP: KindNaming("calexp", "lsst.calexp", 2),
                    DIFF: KindNaming(
                        "goodSeeingDiff_differenceExp", "lsst.goodSeeingDiff_differenceExp", 3
                    ),
                    DEEP_COADD: KindNaming("deepCoadd_calexp", "lsst.deepCoadd_calexp", 3),
                    TEMPLATE_COADD: KindNaming("goodSeeingCoadd", "lsst.goodSeeingCoadd", 3),
                }
            ),
            spectral_ranges_m=MappingProxyType(
                {
                    "u": (330.0e-9, 400.0e-9),
                    "g": (402.0e-9, 552.0e-9),
                    "r": (552.0e-9, 691.0e-9),
                    "i": (691.0e-9, 818.0e-9),
                    "z": (818.0e-9, 922.0e-9),
                    "y": (970.0e-9, 1060.0e-9),
                }
            ),
        ),
    }
)


def get_naming(name: str) -> Naming:
    """The naming table for a release key; ValueError names the known ones."""
    try:
        return NAMINGS[name]
    except KeyError:
        raise ValueError(f"unknown naming {name!r}; known: {sorted(NAMINGS)}") from None
