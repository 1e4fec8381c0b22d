"""The :class:`Product` record: one image dataset as the archive publishes it.

Kept in its own module so that both the survey model (:mod:`obsharvest.simarchive.sky.survey_sky`) and the
FITS writer (:mod:`obsharvest.simarchive.sky.fitsgen`) can use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Product:
    """One row of ivoa.ObsCore and one downloadable FITS file.

    Fields that do not apply to a product (visit/detector for coadds, tract/patch for
    visit images, physical filter for coadds) are ``None``, mirroring DP0.2's nulls.
    """

    id: str
    """Datalink ID: ``butler://dp02/<uuid>`` (DP0.2) or
    ``ivo://org.rubinobs/lsst-dp1?repo=dp1&id=<uuid>`` (DP1)."""
    uuid: str
    obs_id: str
    """DP0.2: shared by raw/calexp/difference of one detector-visit (``214437-R20_S20``)
    and by the two coadds of one patch and band (``3831_3_i``).  DP1: the exposure name,
    shared by all 9 detectors of a visit (``CC_O_20241108_000253``), and
    ``lsst_cells_v1-5063-14`` for every coadd of a patch."""
    obs_publisher_did: str
    """As this archive serves it: a mirror's (``ArchiveSettings.publisher``) differs."""
    obs_creator_did: str
    """The release's own DID, whoever publishes the image: one image across mirrors."""
    kind: str
    """Release-independent kind, see :mod:`obsharvest.simarchive.sky.naming`."""
    dataset_type: str
    subtype: str
    calib_level: int
    band: str
    physical_filter: str | None
    visit: int | None
    detector: int | None
    detector_name: str | None
    ccdvisitid: int | None
    tract: int | None
    patch: int | None
    t_min: float
    t_max: float
    exptime: float
    naxis1: int
    naxis2: int
    s_region: str
    s_ra: float
    s_dec: float
    s_fov: float
    s_resolution: float
    em_min: float
    em_max: float
    file_path: str
