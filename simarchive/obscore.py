"""ivoa.ObsCore: Rubin DP0.2's 37 columns, their VOTable/TAP_SCHEMA metadata, the table.

Column order, names, datatypes, units and descriptions follow the seed's
``tap_schema.columns`` listing (§2.2); UCDs and utypes are those of the ObsCore 1.1
standard as Rubin's sdm_schemas publish them.  The server turns ``Column.meta``
(``datatype``, ``arraysize``, ``ucd``, ``utype``, ``principal``, ``indexed``, ``std``)
into VOTable FIELDs and tap_schema.columns rows.

What ``access_url``/``access_format`` hold depends on the archive's access style, because
real archives disagree and a client must cope with each: a Datalink URL with
``?ID=`` (the RSP, ``datalink``), a product URL without an ID that redirects to Datalink
(DaCHS's getproduct, ``product``), the file itself (MAST, IRSA: ``direct``; with no
``access_format`` at all: ``unlabelled``), or no URL, Datalink being reachable only through
the result's service descriptor (``descriptor``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from astropy.table import Column, MaskedColumn, Table
from astropy.time import Time

from obsharvest.simarchive.sky.naming import visit_name

# The survey (simarchive.sky.survey_sky.Sky), which calls in here: typed loosely, no cycle.
Sky = Any

ACCESS_FORMAT: Final = "application/x-votable+xml;content=datalink"
FITS_ACCESS_FORMAT: Final = "image/fits"
ACCESS_STYLES: Final = ("datalink", "product", "direct", "unlabelled", "descriptor")
PRODUCT_PATH: Final = "/product/"  # access_style product: redirects to Datalink
DATA_PATH: Final = "/data/"  # access_style direct/unlabelled: permanent unsigned file URLs
DATAPRODUCT_TYPE: Final = "image"
UTYPE_PREFIX: Final = "obscore:"
NUMPY_DTYPES: Final = {"char": "S", "int": np.int32, "long": np.int64, "double": np.float64}
"""numpy dtype kind used for each TAP datatype (char columns are ASCII bytes)."""


@dataclass(frozen=True)
class ColumnDef:
    """One ObsCore column as TAP_SCHEMA describes it."""

    name: str
    datatype: str
    description: str
    unit: str | None = None
    ucd: str | None = None
    utype: str | None = None
    """Without the ``obscore:`` prefix; None for Rubin's lsst_* extensions."""
    principal: int = 1
    indexed: int = 0
    nullable: bool = True

    @property
    def std(self) -> int:
        """1 for ObsCore-standard columns, 0 for Rubin's additions."""
        return 0 if self.utype is None else 1

    @property
    def arraysize(self) -> str | None:
        return "*" if self.datatype == "char" else None

    def meta(self) -> dict[str, object]:
        return {
            "datatype": self.datatype,
            "arraysize": self.arraysize,
            "ucd": self.ucd,
            "utype": None if self.utype is None else UTYPE_PREFIX + self.utype,
            "principal": self.principal,
            "indexed": self.indexed,
            "std": self.std,
            "nullable": self.nullable,
        }


_C = ColumnDef
OBSCORE_COLUMNS: Final[tuple[ColumnDef, ...]] = (
    _C(
        "access_format",
        "char",
        "Content format of the dataset",
        None,
        "meta.code.mime",
        "Access.Format",
    ),
    _C(
        "access_url", "char", "URL used to access dataset", None, "meta.ref.url", "Access.Reference"
    ),
    _C(
        "calib_level",
        "int",
        "Calibration level of the observation: in {0, 1, 2, 3, 4}",
        None,
        "meta.code;obs.calib",
        "ObsDataset.calibLevel",
        indexed=1,
        nullable=False,
    ),
    _C(
        "dataproduct_subtype",
        "char",
        "Data product specific type",
        None,
        "meta.code.class",
        "ObsDataset.dataProductSubtype",
        indexed=1,
    ),
    _C(
        "dataproduct_type",
        "char",
        "Data product (file content) primary type",
        None,
        "meta.code.class",
        "ObsDataset.dataProductType",
        indexed=1,
    ),
    _C(
        "em_max",
        "double",
        "stop in spectral coordinates",
        "m",
        "em.wl;stat.max",
        "Char.SpectralAxis.Coverage.Bounds.Limits.HiLimit",
    ),
    _C(
        "em_min",
        "double",
        "start in spectral coordinates",
        "m",
        "em.wl;stat.min",
        "Char.SpectralAxis.Coverage.Bounds.Limits.LoLimit",
    ),
    _C(
        "em_res_power",
        "double",
        "Value of the resolving power along the spectral axis (R)",
        None,
        "spect.resolution",
        "Char.SpectralAxis.Resolution.ResolPower.refVal",
    ),
    _C(
        "em_xel",
        "long",
        "Number of elements along the spectral axis",
        None,
        "meta.number",
        "Char.SpectralAxis.numBins",
    ),
    _C(
        "facility_name",
        "char",
        "The name of the facility, telescope, or space craft used for the observation",
        None,
        "meta.id;instr.tel",
        "Provenance.ObsConfig.Facility.name",
    ),
    _C(
        "instrument_name",
        "char",
        "The name of the instrument used for the observation",
        None,
        "meta.id;instr",
        "Provenance.ObsConfig.Instrument.name",
    ),
    _C("lsst_band", "char", "Abstract filter band designation", None, "instr.bandpass", indexed=1),
    _C(
        "lsst_ccdvisitid",
        "long",
        "Identifier for visit+CCD; useful in JOINs",
        None,
        "meta.id;obs.image",
        indexed=1,
    ),
    _C(
        "lsst_detector",
        "long",
        "Identifier for CCD within the LSSTCam focal plane",
        None,
        "meta.id;instr.det",
    ),
    _C(
        "lsst_filter",
        "char",
        "Physical filter designation from the LSSTCam filter wheel",
        None,
        "instr.filter",
    ),
    _C(
        "lsst_patch",
        "long",
        "Lower level of LSST coadd skymap hierarchy",
        None,
        "meta.id.part",
        indexed=1,
    ),
    _C(
        "lsst_tract",
        "long",
        "Upper level of LSST coadd skymap hierarchy",
        None,
        "meta.id.part",
        indexed=1,
    ),
    _C(
        "lsst_visit",
        "long",
        "Identifier for a specific LSSTCam pointing",
        None,
        "meta.id;obs",
        indexed=1,
    ),
    _C(
        "o_ucd",
        "char",
        "Nature of the observable axis",
        None,
        "meta.ucd",
        "Char.ObservableAxis.ucd",
    ),
    _C(
        "obs_collection",
        "char",
        "Name of the data collection",
        None,
        "meta.id",
        "DataID.Collection",
        nullable=False,
    ),
    _C(
        "obs_id",
        "char",
        "Internal ID given by the ObsTAP service",
        None,
        "meta.id",
        "DataID.observationID",
        indexed=1,
        nullable=False,
    ),
    _C(
        "obs_publisher_did",
        "char",
        "ID for the Dataset given by the publisher",
        None,
        "meta.ref.ivoid",
        "Curation.PublisherDID",
        indexed=1,
        nullable=False,
    ),
    _C(
        "obs_title",
        "char",
        "Brief description of dataset in free format",
        None,
        "meta.title;obs",
        "DataID.Title",
    ),
    _C(
        "pol_xel",
        "long",
        "Number of elements along the polarization axis",
        None,
        "meta.number",
        "Char.PolarizationAxis.numBins",
    ),
    _C(
        "s_dec",
        "double",
        "Central Spatial Position in ICRS; Declination",
        "deg",
        "pos.eq.dec",
        "Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C2",
        indexed=1,
    ),
    _C(
        "s_fov",
        "double",
        "Estimated size of the covered region as the diameter of a containing circle",
        "deg",
        "phys.angSize;instr.fov",
        "Char.SpatialAxis.Coverage.Bounds.Extent.diameter",
    ),
    _C(
        "s_ra",
        "double",
        "Central Spatial Position in ICRS; Right ascension",
        "deg",
        "pos.eq.ra",
        "Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C1",
        indexed=1,
    ),
    _C(
        "s_region",
        "char",
        "Sky region covered by the data product (expressed in ICRS frame)",
        None,
        "pos.outline;obs.field",
        "Char.SpatialAxis.Coverage.Support.Area",
        indexed=1,
    ),
    _C(
        "s_resolution",
        "double",
        "Spatial resolution of data as FWHM of PSF",
        "arcsec",
        "pos.angResolution",
        "Char.SpatialAxis.Resolution.Refval.value",
    ),
    _C(
        "s_xel1",
        "long",
        "Number of elements along the first coordinate of the spatial axis",
        None,
        "meta.number",
        "Char.SpatialAxis.numBins1",
    ),
    _C(
        "s_xel2",
        "long",
        "Number of elements along the second coordinate of the spatial axis",
        None,
        "meta.number",
        "Char.SpatialAxis.numBins2",
    ),
    _C(
        "t_exptime",
        "double",
        "Total exposure time",
        "s",
        "time.duration;obs.exposure",
        "Char.TimeAxis.Coverage.Support.Extent",
    ),
    _C(
        "t_max",
        "double",
        "Stop time in MJD",
        "d",
        "time.end;obs.exposure",
        "Char.TimeAxis.Coverage.Bounds.Limits.StopTime",
        indexed=1,
    ),
    _C(
        "t_min",
        "double",
        "Start time in MJD",
        "d",
        "time.start;obs.exposure",
        "Char.TimeAxis.Coverage.Bounds.Limits.StartTime",
        indexed=1,
    ),
    _C(
        "t_resolution",
        "double",
        "Temporal resolution FWHM",
        "s",
        "time.resolution",
        "Char.TimeAxis.Resolution.Refval.value",
    ),
    _C(
        "t_xel",
        "long",
        "Number of elements along the time axis",
        None,
        "meta.number",
        "Char.TimeAxis.numBins",
    ),
    _C("target_name", "char", "Object of interest", None, "meta.id;src", "Target.Name"),
)
COLUMN_NAMES: Final = tuple(c.name for c in OBSCORE_COLUMNS)
CREATOR_DID: Final = _C(
    "obs_creator_did",
    "char",
    "IVOA dataset identifier given by the creator",
    None,
    "meta.id",
    "DataID.CreatorDID",
)
"""ObsCore 1.1's optional creator DID, which the RSP does not serve: only an archive
asked to (``ArchiveSettings.creator_did``, a mirror by default) adds it, after
``obs_collection`` as the seed's alphabetical order puts it."""


def obscore_columns(creator_did: bool = False) -> tuple[ColumnDef, ...]:
    """The columns served, in order: DP0.2's, with ``obs_creator_did`` if asked."""
    if not creator_did:
        return OBSCORE_COLUMNS
    at = COLUMN_NAMES.index("obs_id")
    return (*OBSCORE_COLUMNS[:at], CREATOR_DID, *OBSCORE_COLUMNS[at:])


TABLE_NAME: Final = "ivoa.ObsCore"
TABLE_DESCRIPTION: Final = (
    "Observation metadata in the ObsTAP relational realization of the IVOA ObsCore data model"
)


def access_url(datalink_url: str, product_id: str, safe: str = "/") -> str:
    """``<datalink>?ID=<quoted id>``, quoted as the release does.

    DP0.2 leaves '/' alone (``ID=butler%3A//dp02/<uuid>``, seed §4.1.2); DP1 escapes it
    too (``ID=ivo%3A%2F%2Forg.rubinobs%2Flsst-dp1%3Frepo%3Ddp1%26id%3D<uuid>``, as in
    dax_obscore's dp1.yaml).
    """
    return f"{datalink_url}?ID=" + urllib.parse.quote(product_id, safe=safe)


def access_columns(
    sky: Sky, datalink_url: str, style: str, base_url: str, file_suffix: str = ""
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``access_format`` and ``access_url`` (values, mask or None) for an access style;
    ``file_suffix`` (``.fz``, ``.gz``) ends file URLs of compressed files."""
    c = sky.columns
    n = len(c["id"])
    if style == "datalink":
        urls = [access_url(datalink_url, i, sky.naming.id_quote_safe) for i in c["id"]]
        return {
            "access_format": (_constant(ACCESS_FORMAT, n), None),
            "access_url": (_strings(urls), None),
        }
    if style == "descriptor":
        return {
            "access_format": (_constant(ACCESS_FORMAT, n), None),
            "access_url": (np.full(n, b"", dtype="S1"), np.ones(n, dtype=bool)),
        }
    prefix = base_url + (PRODUCT_PATH if style == "product" else DATA_PATH)
    urls = _strings([prefix + path + file_suffix for path in c["file_path"]])  # URL-safe
    if style == "product":
        return {"access_format": (_constant(ACCESS_FORMAT, n), None), "access_url": (urls, None)}
    if style == "direct":
        return {
            "access_format": (_constant(FITS_ACCESS_FORMAT, n), None),
            "access_url": (urls, None),
        }
    if style == "unlabelled":
        return {
            "access_format": (np.full(n, b"", dtype="S1"), np.ones(n, dtype=bool)),
            "access_url": (urls, None),
        }
    raise ValueError(f"access_style {style!r} is not one of {', '.join(ACCESS_STYLES)}")


def _titles(sky: Sky, kinds: list[str], bands: list[str], obs_ids: list[str]) -> list[str]:
    """obs_title per row from the release's templates (DP1 names visit, detector, time)."""
    nm, c = sky.naming, sky.columns
    dst_of = {k: kn.dataset_type for k, kn in nm.kinds.items()}
    if nm.visit_title_fmt == nm.coadd_title_fmt == "{dataset_type} {band} {obs_id}":
        return [f"{dst_of[k]} {b} {o}" for k, b, o in zip(kinds, bands, obs_ids, strict=True)]
    names = [d.name for d in sky.camera.detectors()]
    is_visit = np.asarray(c["is_visit"]).tolist()
    visits = np.asarray(c["visit"], dtype=np.int64).tolist()
    dets = np.asarray(c["detector"], dtype=np.int64).tolist()
    patches = np.asarray(c["patch"]).tolist()
    # coadds of a band nobody observed (small skies) have no time: only visits need one
    t_min = np.asarray(c["t_min"], dtype=np.float64)
    isot = [""] * len(t_min)
    timed = np.nonzero(np.isfinite(t_min))[0]
    if len(timed):
        for i, value in zip(
            timed.tolist(),
            Time(t_min[timed], format="mjd", scale="tai").utc.isot.tolist(),
            strict=True,
        ):
            isot[i] = value
    out = []
    for i, (k, b, o) in enumerate(zip(kinds, bands, obs_ids, strict=True)):
        fields: dict[str, object] = dict(dataset_type=dst_of[k], band=b, obs_id=o)
        if is_visit[i]:
            fields.update(
                visit=visits[i],
                visit_name=visit_name(visits[i], nm),
                detector_name=names[dets[i]],
                isot=isot[i],
            )
            out.append(nm.visit_title_fmt.format(**fields))
        else:
            fields.update(tract=nm.tract, patch=patches[i], skymap=nm.skymap)
            out.append(nm.coadd_title_fmt.format(**fields))
    return out


def _strings(values: list[str] | np.ndarray) -> np.ndarray:
    """Fixed-width ASCII byte strings: a quarter of numpy unicode's 4 bytes per character.

    With ~65k rows of ~500 characters each the table would otherwise take ~130 MB; the
    ADQL engine and VOTable writer decode ``S`` columns, so ``char`` semantics are kept.
    """
    return np.asarray(values, dtype="S")


def _constant(value: str, n: int) -> np.ndarray:
    return np.full(n, value.encode("ascii"), dtype=f"S{max(len(value), 1)}")


def _masked_int(values: np.ndarray, mask: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    return np.where(mask, 0, values).astype(dtype), mask


def build_obscore_table(
    sky: Sky,
    datalink_url: str,
    *,
    access_style: str = "datalink",
    base_url: str = "",
    file_suffix: str = "",
    creator_did: bool = False,
) -> Table:
    """One row per product, columns in the seed's order with TAP metadata in ``.meta``.

    ``access_style`` (see :data:`ACCESS_STYLES`) decides access_url/access_format;
    ``base_url`` is the archive's, under which product and data URLs live;
    ``creator_did`` adds :data:`CREATOR_DID`, the release's own DID of each image.

    Strings are ASCII ``bytes`` columns (dtype ``S``) to keep the table small; nullable
    columns (lsst_visit/detector/ccdvisitid/filter for coadds, lsst_tract/patch for visit
    images, em_res_power, *_xel, t_resolution, target_name) are ``MaskedColumn``s.
    """
    c = sky.columns
    nm = sky.naming
    n = len(c["id"])
    is_visit = np.asarray(c["is_visit"])
    coadd = ~is_visit
    visit = np.asarray(c["visit"], dtype=np.int64)
    det = np.asarray(c["detector"], dtype=np.int64)
    kinds = np.asarray(c["kind"])
    subtype_of = {k: kn.subtype for k, kn in nm.kinds.items()}
    level_of = {k: kn.calib_level for k, kn in nm.kinds.items()}
    ucd_of = {k: kn.o_ucd for k, kn in nm.kinds.items()}
    kind_list = kinds.tolist()
    band = np.asarray(c["band"])
    obs_id = c["obs_id"]
    none = np.ones(n, dtype=bool)
    filt = {b: nm.physical_filter(b) for b in set(band.tolist())}

    values: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        **access_columns(sky, datalink_url, access_style, base_url, file_suffix),
        "calib_level": (np.array([level_of[k] for k in kind_list], dtype=np.int32), None),
        "dataproduct_subtype": (_strings([subtype_of[k] for k in kind_list]), None),
        "dataproduct_type": (_constant(DATAPRODUCT_TYPE, n), None),
        "em_max": (np.asarray(c["em_max"], dtype=np.float64), None),
        "em_min": (np.asarray(c["em_min"], dtype=np.float64), None),
        "em_res_power": (np.full(n, np.nan), none),
        "em_xel": (np.zeros(n, dtype=np.int64), none),
        "facility_name": (_constant(nm.facility_name, n), None),
        "instrument_name": (_constant(nm.instrument_name, n), None),
        "lsst_band": (band.astype("S1"), None),
        "lsst_ccdvisitid": _masked_int(visit * 1000 + det, coadd, np.int64),
        "lsst_detector": _masked_int(det, coadd, np.int64),
        "lsst_filter": (
            _strings(
                [
                    filt[b] if v else ""
                    for b, v in zip(band.tolist(), is_visit.tolist(), strict=True)
                ]
            ),
            coadd,
        ),
        "lsst_patch": _masked_int(np.asarray(c["patch"], dtype=np.int64), is_visit, np.int64),
        "lsst_tract": _masked_int(np.full(n, nm.tract, dtype=np.int64), is_visit, np.int64),
        "lsst_visit": _masked_int(visit, coadd, np.int64),
        "o_ucd": (_strings([ucd_of[k] for k in kind_list]), None),
        "obs_collection": (_constant(nm.obs_collection, n), None),
        "obs_creator_did": (_strings(c["creator_did"]), None),
        "obs_id": (_strings(obs_id), None),
        "obs_publisher_did": (_strings(c["did"]), None),
        "obs_title": (_strings(_titles(sky, kind_list, band.tolist(), obs_id)), None),
        "pol_xel": (np.zeros(n, dtype=np.int64), none),
        "s_dec": (np.asarray(c["s_dec"], dtype=np.float64), None),
        "s_fov": (np.asarray(c["s_fov"], dtype=np.float64), None),
        "s_ra": (np.asarray(c["s_ra"], dtype=np.float64), None),
        "s_region": (_strings(c["s_region"]), None),
        "s_resolution": (np.asarray(c["s_resolution"], dtype=np.float64), None),
        "s_xel1": (np.asarray(c["naxis1"], dtype=np.int64), None),
        "s_xel2": (np.asarray(c["naxis2"], dtype=np.int64), None),
        "t_exptime": (np.asarray(c["exptime"], dtype=np.float64), None),
        "t_max": (np.asarray(c["t_max"], dtype=np.float64), None),
        "t_min": (np.asarray(c["t_min"], dtype=np.float64), None),
        "t_resolution": (np.full(n, np.nan), none),
        "t_xel": (np.zeros(n, dtype=np.int64), none),
        "target_name": (np.full(n, b"", dtype="S1"), none),
    }
    served = obscore_columns(creator_did)
    if [name for name in values if name != CREATOR_DID.name] != list(COLUMN_NAMES):
        raise AssertionError("ObsCore column values out of sync with OBSCORE_COLUMNS")

    table = Table(meta={"name": TABLE_NAME, "description": TABLE_DESCRIPTION})
    for cdef in served:
        data, mask = values[cdef.name]
        kw = dict(name=cdef.name, unit=cdef.unit, description=cdef.description, meta=cdef.meta())
        col = Column(data, **kw) if mask is None else MaskedColumn(data, mask=mask, **kw)
        table.add_column(col, copy=False)
    return table
