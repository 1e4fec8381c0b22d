"""Data-release tables: collection, dataset types, subtypes, identifiers, survey shape.

Everything that differs between Rubin data previews lives in one :class:`Naming` record
so that adding a release is adding a table entry, not code.  The survey model refers to
products by a release-independent *kind*.  Two releases are known:

* ``dp02`` -- DP0.2 (imSim DC2 over LSSTCam's 189 detectors), as the seed tutorial shows.
* ``dp1`` -- Data Preview 1 (LSSTComCam, 9 detectors), after dax_obscore's
  ``configs/dp1.yaml``: collection ``LSST.DP1``, facility ``Rubin:Simonyi``, subtypes
  ``lsst.raw`` / ``lsst.visit_image`` / ``lsst.difference_image`` / ``lsst.deep_coadd``
  / ``lsst.template_coadd``, ``ivo://`` identifiers, obs_id = exposure/visit name
  (shared by the 9 detectors of a visit) and ``{skymap}-{tract}-{patch}`` for coadds.
"""

from __future__ import annotations

import re
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

VISIT_IDS_RANDOM: Final = "random"
"""DP0.2-style visit ids: sorted random 6-digit numbers."""
VISIT_IDS_DAY_OBS: Final = "day_obs"
"""Rubin-on-sky visit ids: ``day_obs * 100000 + seq_num`` (e.g. ``2024110800253``)."""


@dataclass(frozen=True)
class KindNaming:
    """How one product kind is called in a release."""

    dataset_type: str
    """Butler dataset type, used in file names and the uuid key."""
    subtype: str
    """ObsCore ``dataproduct_subtype``."""
    calib_level: int
    o_ucd: str = "phot.count"
    """ObsCore ``o_ucd`` (DP0.2 uses phot.count throughout; DP1 phot.flux.density)."""


@dataclass(frozen=True)
class SurveyShape:
    """How a release's visits are laid out: camera, dither, dates, visit numbering.

    DP0.2 spreads 120 LSSTCam visits over 1.5 deg; LSSTComCam's 9 detectors cover only
    ~0.7 x 0.7 deg, so DP1 dithers tightly (as its seven small fields were) to keep tens
    of visit images on the field centre.
    """

    camera: str
    """Key of :data:`obsharvest.simarchive.sky.focalplane.CAMERAS`."""
    dither_radius_deg: float
    mjd_range: tuple[float, float]
    visit_ids: str
    """:data:`VISIT_IDS_RANDOM` or :data:`VISIT_IDS_DAY_OBS`."""
    sip_headers: bool
    """Calibrated visit images carry a TAN-SIP approximation of the distorted WCS."""


@dataclass(frozen=True)
class Naming:
    """Release-specific names, identifier formats and survey shape."""

    repo: str
    label: str
    """Human name of the release, e.g. ``DP0.2`` (FITS ORIGIN comment)."""
    obs_collection: str
    facility_name: str
    instrument_name: str
    telescope: str
    skymap: str
    """Key of :data:`obsharvest.simarchive.sky.skymap.SKYMAPS`."""
    tract: int
    physical_filters: MappingProxyType[str, str]
    """Physical filter per band, e.g. ``i_sim_1.4`` (DP0.2) or ``i_06`` (LSSTComCam)."""
    id_fmt: str
    """Datalink ID (what ``access_url`` carries)."""
    id_quote_safe: str
    """Characters left unescaped when the ID goes into ``access_url``'s query string."""
    did_fmt: str
    """``obs_publisher_did``."""
    visit_obs_id_fmt: str
    """obs_id of detector-visit products; fields visit, detector_name, visit_name."""
    coadd_obs_id_fmt: str
    """obs_id of coadds; fields skymap, tract, patch, band."""
    visit_title_fmt: str
    """obs_title of detector-visit products; fields as obs_id plus dataset_type, band,
    obs_id and isot (UTC start time)."""
    coadd_title_fmt: str
    kinds: MappingProxyType[str, KindNaming]
    spectral_ranges_m: MappingProxyType[str, tuple[float, float]]
    """ObsCore em_min/em_max per band (dax_obscore's configuration of the release)."""
    survey: SurveyShape

    def physical_filter(self, band: str) -> str:
        return self.physical_filters[band]

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


CAMERA_OBS_PREFIX: Final = MappingProxyType({"LSSTComCam": "CC", "LSSTCam": "MC"})
"""Two-letter camera code at the start of on-sky observation ids (obs_lsst)."""


def visit_name(visit: int, naming: Naming) -> str:
    """Exposure/visit name as Rubin's registry spells it (``CC_O_20241108_000253``).

    Only meaningful for day_obs visit ids; DP0.2's imSim visits are named by number.
    """
    if naming.survey.visit_ids != VISIT_IDS_DAY_OBS:
        return str(visit)
    day_obs, seq = divmod(visit, 100_000)
    return f"{CAMERA_OBS_PREFIX.get(naming.instrument_name, 'XX')}_O_{day_obs}_{seq:06d}"


@cache
def _safe(text: str) -> str:
    """File-name-safe version of a name (``i_sim_1.4`` -> ``i_sim_1_4``, as Rubin does)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _frozen(d: dict) -> MappingProxyType:
    return MappingProxyType(d)


NAMINGS: Final[MappingProxyType[str, Naming]] = MappingProxyType(
    {
        "dp02": Naming(
            repo="dp02",
            label="DP0.2",
            obs_collection="LSST.DP02",
            facility_name="Vera C. Rubin Observatory",
            instrument_name="LSSTCam-imSim",
            telescope="LSST",
            skymap="DC2",
            tract=3831,
            physical_filters=_frozen({b: f"{b}_sim_1.4" for b in BANDS}),
            id_fmt="butler://{repo}/{uuid}",
            id_quote_safe="/",
            did_fmt="ivo://org.rubinobs/usdac/{repo}?repo={repo}&id={uuid}",
            visit_obs_id_fmt="{visit}-{detector_name}",
            coadd_obs_id_fmt="{tract}_{patch}_{band}",
            visit_title_fmt="{dataset_type} {band} {obs_id}",
            coadd_title_fmt="{dataset_type} {band} {obs_id}",
            kinds=_frozen(
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
            spectral_ranges_m=_frozen(
                {
                    "u": (330.0e-9, 400.0e-9),
                    "g": (402.0e-9, 552.0e-9),
                    "r": (552.0e-9, 691.0e-9),
                    "i": (691.0e-9, 818.0e-9),
                    "z": (818.0e-9, 922.0e-9),
                    "y": (970.0e-9, 1060.0e-9),
                }
            ),
            survey=SurveyShape(
                camera="LSSTCam",
                dither_radius_deg=1.5,
                mjd_range=(59580.0, 61000.0),
                visit_ids=VISIT_IDS_RANDOM,
                sip_headers=False,
            ),
        ),
        "dp1": Naming(
            repo="dp1",
            label="DP1",
            obs_collection="LSST.DP1",
            facility_name="Rubin:Simonyi",
            instrument_name="LSSTComCam",
            telescope="Simonyi Survey Telescope",
            skymap="lsst_cells_v1",
            tract=5063,
            # LSSTComCam's filter wheel (obs_lsst): one numbered filter per band
            physical_filters=_frozen(
                {"u": "u_02", "g": "g_01", "r": "r_03", "i": "i_06", "z": "z_03", "y": "y_04"}
            ),
            id_fmt="ivo://org.rubinobs/lsst-{repo}?repo={repo}&id={uuid}",
            id_quote_safe="",
            # dax_obscore's dp1.yaml publishes ivo://org.rubinobs/usdac/lsst-dp1?...; the
            # brief for this archive asks for the same form as the Datalink ID.
            did_fmt="ivo://org.rubinobs/lsst-{repo}?repo={repo}&id={uuid}",
            visit_obs_id_fmt="{visit_name}",
            coadd_obs_id_fmt="{skymap}-{tract}-{patch}",
            visit_title_fmt="{dataset_type} - {band} - {visit_name}-{detector_name} {isot}Z",
            coadd_title_fmt="{dataset_type} - {band} - tract={tract} patch={patch}",
            kinds=_frozen(
                {
                    RAW: KindNaming("raw", "lsst.raw", 1),
                    CALEXP: KindNaming("visit_image", "lsst.visit_image", 2, "phot.flux.density"),
                    DIFF: KindNaming(
                        "difference_image", "lsst.difference_image", 3, "phot.flux.density"
                    ),
                    DEEP_COADD: KindNaming("deep_coadd", "lsst.deep_coadd", 3, "phot.flux.density"),
                    # sic: dp1.yaml spells this one phot.flux_density
                    TEMPLATE_COADD: KindNaming(
                        "template_coadd", "lsst.template_coadd", 3, "phot.flux_density"
                    ),
                }
            ),
            spectral_ranges_m=_frozen(
                {
                    "u": (300.0e-9, 393.2e-9),
                    "g": (402.6e-9, 548.3e-9),
                    "r": (551.0e-9, 689.1e-9),
                    "i": (693.6e-9, 818.8e-9),
                    "z": (819.2e-9, 920.1e-9),
                    "y": (927.8e-9, 1100.0e-9),
                }
            ),
            survey=SurveyShape(
                camera="LSSTComCam",
                dither_radius_deg=0.35,
                # the LSSTComCam campaign: day_obs 2024-10-24 .. 2024-12-11
                mjd_range=(60608.0, 60657.0),
                visit_ids=VISIT_IDS_DAY_OBS,
                sip_headers=True,
            ),
        ),
    }
)


_AUTHORITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{2,}")
"""An IVOA authority ID (Identifiers 2.0 §2.3): alphanumeric first, three or more
characters from the URI's unreserved set."""


def check_authority(authority: str) -> str:
    """``authority`` if it is an IVOA authority ID (``mirror.example``), else ValueError."""
    if not _AUTHORITY.fullmatch(authority):
        raise ValueError(
            f"publisher {authority!r} is not an IVOA authority ID "
            "(e.g. mirror.example: a letter or digit, then letters, digits or ._~-)"
        )
    return authority


def with_authority(ivoid: str, authority: str) -> str:
    """``ivoid`` published by ``authority``: ``ivo://org.rubinobs/usdac/dp02?repo=..``
    becomes ``ivo://mirror.example/usdac/dp02?repo=..``. The path and query stay, so each
    product keeps its own identifier; a non-``ivo://`` ID (DP0.2's ``butler://``) is not
    an IVOA identifier and is returned as it is."""
    scheme = "ivo://"
    if not ivoid.startswith(scheme):
        return ivoid
    rest = ivoid[len(scheme) :]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return scheme + authority + rest[cut:]


def get_naming(name: str) -> Naming:
    """The naming table for a release key; ValueError names the known ones."""
    try:
        return NAMINGS[name]
    except KeyError:
        raise ValueError(f"unknown naming {name!r}; known: {sorted(NAMINGS)}") from None
