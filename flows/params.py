"""The harvest's parameters: one set of pydantic models for the Prefect UI form, the YAML
profiles in ``config/`` and the command line.

Unknown keys are refused (a typo in a profile must not silently mean "default"), and every
value is checked before any work starts; errors name the key.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from astropy.time import Time
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from obsharvest.models import (
    CutoutFallback,
    ProductMode,
    QueryMode,
    QueryStrategy,
    Target,
    VerificationMode,
)
from obsharvest.net.archive import name_of
from obsharvest.net.credentials import is_s3

_BAND = re.compile(r"^[A-Za-z0-9_]{1,16}$")
_SUBTYPE = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# Value types shared with the flow's signature, so the Prefect UI form and the server's
# parameter validation refuse bad values before a run starts.
Band = Annotated[str, Field(pattern=_BAND.pattern, description="band, e.g. i")]
Subtype = Annotated[str, Field(pattern=_SUBTYPE.pattern, description="dataproduct_subtype")]
CalibLevel = Annotated[int, Field(ge=0, le=4)]

# The flow's one-position parameters take degrees or sexagesimal text. Their JSON Schema
# carries the ranges the target readers enforce (obsharvest.targets: RA in [0, 360] deg or
# 0-24 h, Dec in [-90, 90]) as keywords that apply to one type each -- minimum/maximum to
# numbers, pattern to strings -- so Prefect's server refuses ra=400 or dec="-97:00:00"
# when a deployment run is created, not inside the run. They are schema only
# (json_schema_extra), not enforced by pydantic: a flow called from Python still gets
# build_params' message, which names the parameter ("parameter dec: ... outside [-90, 90]").
RA_TEXT = (
    r"^\s*\+?(?:(?:[01]?\d|2[0-4])(?:\s*[:hH]\s*|\s+)[0-9:.\shmsHMS]*"
    r"|(?:360(?:\.0*)?|(?:3[0-5]\d|[12]?\d?\d)(?:\.\d*)?|\.\d+)"
    r"(?:\s*(?:d|deg|°)[0-9:.\sdmsDMS'\"°]*)?)\s*$"
)
DEC_TEXT = (
    r"^\s*[+-]?(?:(?:[0-8]?\d|90)(?:\s*[:dD°]\s*|\s+)[0-9:.\sdmsDMS'\"°]*"
    r"|(?:90(?:\.0*)?|[0-8]?\d(?:\.\d*)?|\.\d+)(?:\s*(?:deg|d|°))?)\s*$"
)
RA_SCHEMA: dict[str, Any] = {"minimum": 0, "maximum": 360, "pattern": RA_TEXT}
DEC_SCHEMA: dict[str, Any] = {"minimum": -90, "maximum": 90, "pattern": DEC_TEXT}
MJD_SCHEMA: dict[str, Any] = {
    "exclusiveMinimum": 0,
    "exclusiveMaximum": 200_000,
}  # as _mjd checks numbers


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str, what: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{what} must be an absolute {'/'.join(schemes)} URL, got {value!r}")
    return value.rstrip("/")


class EmbeddedArchive(Model):
    """Start obsharvest's embedded archive in-process and harvest from it (demo, tests)."""

    seed: int = 42
    n_visits: int = Field(120, ge=1, le=100_000)
    binning: int = Field(10, ge=1, le=100)
    profile: Literal["generic", "rubin"] = "generic"
    naming: Literal["dp02", "dp1"] = "dp02"
    port: int = Field(0, ge=0, le=65535)
    # what ObsCore's access_url is, as real archives differ (see simarchive.server)
    access_style: Literal["datalink", "product", "direct", "unlabelled", "descriptor"] = "datalink"
    datalink_multi_id: Literal["all", "first"] = "all"
    datalink_order: Literal["grouped", "shuffled"] = "grouped"
    faults: list[str] = Field(
        default_factory=list, description="injected faults, e.g. files.head_stall=1"
    )
    dialect: list[str] = Field(
        default_factory=list,
        description="how the archive reads the standards, e.g. capabilities=untyped, files=fz "
        "(simarchive.dialect)",
    )

    @field_validator("faults")
    @classmethod
    def _faults(cls, value: list[str]) -> list[str]:
        from obsharvest.simarchive.faults import FaultPlan

        FaultPlan.parse(value)  # raises ValueError naming the bad item
        return value

    @field_validator("dialect")
    @classmethod
    def _dialect(cls, value: list[str]) -> list[str]:
        from obsharvest.simarchive.dialect import Dialect

        Dialect.parse(value)  # raises ValueError naming the bad item
        return value


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class Service(Model):
    """One ObsTAP service. The token is never part of the parameters: it comes from the
    environment variable ``token_env`` or the Prefect Secret block ``token_secret_block``."""

    name: str | None = Field(
        None,
        description="how reports and the Parquet (obsh_service) name it; default: its host",
    )
    tap_url: str | None = None
    embedded: EmbeddedArchive | None = None
    token_env: str = "ACCESS_TOKEN"
    token_secret_block: str | None = None
    token_required: bool = Field(
        False,
        description="the service wants a bearer token (the RSP): a run without one stops "
        "before it starts, naming token_env",
    )
    band_column: str = "lsst_band"
    extra_token_hosts: list[str] = Field(default_factory=list)
    extra_where: str | None = Field(
        None,
        description="TRUSTED raw ADQL ANDed into this service's queries only (with "
        "constraints.extra_where); never fill from untrusted input",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a service name: letters, digits and _.:- (at most 64)"
            )
        return value

    @field_validator("tap_url")
    @classmethod
    def _tap(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, "tap_url", ("http", "https"))

    @field_validator("band_column")
    @classmethod
    def _band_column(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"{value!r} is not an ADQL column name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Service:
        if (self.tap_url is None) == (self.embedded is None):
            raise ValueError("give exactly one of tap_url or embedded")
        return self

    @property
    def label(self) -> str:
        """Its name: as given, else the host of its TAP URL (``embedded`` for the embedded
        archive)."""
        if self.name:
            return self.name
        if self.tap_url is None:
            return "embedded"
        return name_of(self.tap_url)


def _mjd(value: float | str | date | None, what: str) -> float | None:
    """MJD from a number, an ISO date or time string (UTC unless it names a zone), or a
    ``date``/``datetime`` (what YAML makes of an unquoted ``2023-01-01``)."""
    if value is None or value == "":
        return None
    if isinstance(value, date):
        value = _iso(value)
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is neither an MJD nor an ISO time")
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            number = _iso_mjd(text, what)
    if not math.isfinite(number) or not 0 < number < 200_000:
        raise ValueError(f"{what} {value!r} is not a plausible MJD")
    return number


def _iso(value: date) -> str:
    """A ``date``/``datetime`` as ISO text in UTC (naive datetimes are taken as UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    return value.isoformat()


def _iso_mjd(text: str, what: str) -> float:
    try:
        moment = datetime.fromisoformat(text)  # dates, "T" or " ", "Z" and offsets (3.11)
    except ValueError as exc:
        raise ValueError(
            f"{what} {text!r} is neither an MJD nor an ISO time ({exc}); "
            "e.g. 60310 or 2023-01-01 or 2023-01-01T12:00:00"
        ) from None
    return float(Time(_iso(moment), format="isot", scale="utc").mjd)


def _time_value(value: object) -> object:
    """Keep times JSON-friendly: a ``date``/``datetime`` becomes its ISO text (UTC)."""
    return _iso(value) if isinstance(value, date) else value


def _items(schema: dict) -> dict:
    """A list field's JSON Schema for its items: the Prefect server refuses a bad item
    when a deployment run is created; the validators below say it in their own words."""
    return {"items": schema}


class Constraints(Model):
    bands: list[str] = Field(
        default_factory=list,
        description="bands, e.g. i",
        json_schema_extra=_items({"type": "string", "pattern": _BAND.pattern}),
    )
    subtypes: list[str] = Field(
        default_factory=list,
        description="dataproduct_subtype values",
        json_schema_extra=_items({"type": "string", "pattern": _SUBTYPE.pattern}),
    )
    calib_levels: list[int] = Field(
        default_factory=list,
        json_schema_extra=_items({"type": "integer", "minimum": 0, "maximum": 4}),
    )
    time_start: float | str | None = Field(
        None, description="MJD or ISO time (UTC)", json_schema_extra=MJD_SCHEMA
    )
    time_end: float | str | None = Field(
        None, description="MJD or ISO time (UTC)", json_schema_extra=MJD_SCHEMA
    )
    extra_where: str | None = Field(
        None, description="TRUSTED raw ADQL ANDed into every query; never fill from untrusted input"
    )

    @field_validator("time_start", "time_end", mode="before")
    @classmethod
    def _dates(cls, value: object) -> object:
        return _time_value(value)

    @field_validator("bands")
    @classmethod
    def _bands(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _BAND.match(value):
                raise ValueError(f"band {value!r} may only contain letters, digits and _")
        return values

    @field_validator("subtypes")
    @classmethod
    def _subtypes(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _SUBTYPE.match(value):
                raise ValueError(f"subtype {value!r} has characters not allowed")
        return values

    @field_validator("calib_levels")
    @classmethod
    def _levels(cls, values: list[int]) -> list[int]:
        for value in values:
            if not 0 <= value <= 4:
                raise ValueError(f"calib_level {value} is not in 0..4")
        return values

    @model_validator(mode="after")
    def _times(self) -> Constraints:
        start = _mjd(self.time_start, "time_start")
        end = _mjd(self.time_end, "time_end")
        if start is not None and end is not None and start > end:
            raise ValueError(f"time_start {self.time_start} is after time_end {self.time_end}")
        return self

    @property
    def mjd_range(self) -> tuple[float | None, float | None]:
        return _mjd(self.time_start, "time_start"), _mjd(self.time_end, "time_end")


class Query(Model):
    strategy: QueryStrategy = "upload"
    mode: QueryMode = "async"
    maxrec: int | None = Field(None, ge=1)
    batch_size: int = Field(100, ge=1, le=10_000, description="targets per OR-batch or upload")
    deadline_seconds: float = Field(1800, gt=0, description="an async job is aborted after this")
    prefilter_radius: float = Field(
        0.25,
        gt=0,
        le=5,
        description="deg; services without INTERSECTS: how far an image centre "
        "may lie outside a target circle",
    )


class Concurrency(Model):
    targets_per_task: int = Field(500, ge=1, description="targets per query task")
    images_per_task: int = Field(250, ge=1, description="images per Datalink/verify/store task")
    task_workers: int = Field(2, ge=1, le=64, description="Prefect tasks running at once")
    datalink_workers: int = Field(4, ge=1, le=64)
    datalink_batch: int = Field(50, ge=1, le=1000, description="IDs per Datalink request")
    verify_workers: int = Field(
        8, ge=1, le=128, description="images in flight per archive host to start with"
    )
    max_per_host: int = Field(
        32,
        ge=1,
        le=256,
        description="images in flight per archive host at most (all tasks of the process): "
        "the limit grows from verify_workers while replies come back, halves on 429/503",
    )
    download_workers: int = Field(8, ge=1, le=64, description="downloads at once per task")
    image_processes: bool | Literal["auto"] = Field(
        "auto",
        description="run each image batch of at least 64 images in a worker process of its "
        "own, so the batches use every core; auto: when this process may use 2 or more "
        "cores and the tasks run in threads",
    )


class Retry(Model):
    attempts: int = Field(6, ge=1, le=100)
    initial_wait: float = Field(0.5, ge=0)
    max_wait: float = Field(30.0, gt=0)
    deadline_seconds: float = Field(600.0, gt=0, description="all attempts of one request")
    connect_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds to open a connection (every HTTP request)"
    )
    image_deadline_seconds: float = Field(
        1800.0, gt=0, description="all the steps and attempts of one image together"
    )
    read_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="seconds a reply may pause between two bytes before it counts as "
        "stalled (a transient failure: retried)",
    )


class Verification(Model):
    mode: VerificationMode = Field(
        "skip",
        description="skip: verify and download only images containing a target; "
        "record-only: verify, download everything; off: no header reads",
    )
    margin_px: float = Field(0.0, ge=0, le=1000, description="pixels of tolerance at the edges")
    mask: bool = Field(
        False,
        description="stricter: the target's pixel must not be flagged NO_DATA in the MASK "
        "(dead amplifiers do not change s_region; seed 1.1)",
    )
    header_block_size: int = Field(32768, ge=2880, description="bytes per HTTP range read")


class Products(Model):
    """What to store for a (target, image) pair that matches."""

    mode: ProductMode = Field(
        "image",
        description="image: the whole file, once per image; cutout: a SODA cutout "
        "around each target, stored as {...}/{obs_id}/{target}.fits",
    )
    cutout_radius: float | None = Field(
        None,
        gt=0,
        le=5,
        description="deg; cutout circle for point targets (radius targets use theirs)",
    )
    quicklook: bool = Field(
        False, description="a PNG (zscale, grid, target, s_region) beside each stored file"
    )
    cutout_fallback: CutoutFallback = Field(
        "fail",
        description="cutout mode, where the archive offers no SODA service: fail (said at "
        "plan time, before any work) or store the whole image",
    )


class Storage(Model):
    url: str | None = Field(None, description="where FITS go; default <output_url>/fits")
    storage_options: dict = Field(default_factory=dict)
    aws_credentials_block: str | None = Field(
        None,
        description="name of a prefect-aws AwsCredentials block for the s3:// locations "
        "(keeps secrets out of these parameters)",
    )


class Execution(Model):
    """Where the harvest's tasks run and how hard the archive may be hit, across runs.

    ``threads`` (default): the tasks of one run share a thread pool of
    ``concurrency.task_workers`` in the flow's process. ``dask``: they are sent to a Dask
    cluster -- an existing scheduler (``dask_address``) or one started for the run
    (``dask_cluster_class`` with ``dask_cluster_kwargs``, scaled by ``dask_adapt_kwargs``,
    e.g. ``dask_jobqueue.SLURMCluster``). Dask workers must reach the same Prefect API
    (``PREFECT_API_URL``), the archive and the storage as the flow.
    """

    runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = Field(None, description="an existing scheduler, tcp://host:8786")
    dask_cluster_class: str | None = Field(
        None, description="e.g. dask_jobqueue.SLURMCluster or distributed.LocalCluster"
    )
    dask_cluster_kwargs: dict = Field(default_factory=dict)
    dask_adapt_kwargs: dict = Field(
        default_factory=dict, description="e.g. {minimum: 1, maximum: 10} to scale with load"
    )
    archive_concurrency_limit: str | None = Field(
        None,
        description="Prefect global concurrency limit: each query or image batch holds one "
        "slot, shared by every run and worker; None: no limit",
    )
    shard_targets: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="targets per shard: each shard is queried, verified, stored and written "
        "to the Parquet before the next begins, so memory is bounded by a shard",
    )
    run_deadline_seconds: float | None = Field(
        None,
        gt=0,
        description="stop the run after this long, as SIGTERM would: what is decided is "
        "written, the rest recorded as interrupted; None: no deadline",
    )

    @model_validator(mode="after")
    def _dask(self) -> Execution:
        if self.runner == "threads" and (self.dask_address or self.dask_cluster_class):
            raise ValueError("dask_address/dask_cluster_class need runner: dask")
        if self.dask_address and (
            self.dask_cluster_class or self.dask_cluster_kwargs or self.dask_adapt_kwargs
        ):
            raise ValueError("give dask_address or dask_cluster_*/dask_adapt_kwargs, not both")
        return self


class HarvestParams(Model):
    """Everything one harvest needs; the Prefect UI shows this as the run form."""

    service: Service | None = Field(None, description="the ObsTAP service (or services:)")
    services: list[Service] = Field(
        default_factory=list,
        description="several ObsTAP services harvested in one run, into one output",
    )
    targets: str | None = Field(
        None, description="target list: CSV, ECSV, Parquet or VOTable path/URL"
    )
    ra: float | str | None = Field(
        None, description="one target: RA (deg or hh:mm:ss)", json_schema_extra=RA_SCHEMA
    )
    dec: float | str | None = Field(
        None, description="one target: Dec (deg or dd:mm:ss)", json_schema_extra=DEC_SCHEMA
    )
    radius: float | None = Field(
        None, gt=0, le=10, description="deg; overlap instead of containment"
    )
    target_name: str | None = None
    constraints: Constraints = Field(default_factory=Constraints)
    query: Query = Field(default_factory=Query)
    concurrency: Concurrency = Field(default_factory=Concurrency)
    retry: Retry = Field(default_factory=Retry)
    verification: Verification = Field(default_factory=Verification)
    products: Products = Field(default_factory=Products)
    storage: Storage = Field(default_factory=Storage)
    execution: Execution = Field(default_factory=Execution)
    output_url: str = Field(
        "output/harvest", description="holds metadata/ (Parquet) and, by default, fits/"
    )
    output_storage_options: dict = Field(default_factory=dict)
    plan: bool = Field(
        False, description="dry run: query, verify and write Parquet; download nothing"
    )
    incremental: bool = Field(
        False, description="only what is new since the last good run into this output"
    )
    # Where each value came from (a profile key, --set, a flag, a Prefect parameter), for
    # error messages; set by flows.config.build_params, never part of the parameters.
    _profile: str | None = PrivateAttr(default=None)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    # The targets the preflight read and checked (flows.preflight.checked): a run handed
    # checked parameters in this process neither checks nor reads them again. Never sent
    # to the Prefect API (private), so a deployment run checks in its own process.
    _checked: list[Target] | None = PrivateAttr(default=None)

    @property
    def checked_targets(self) -> list[Target] | None:
        """The targets, when the preflight has passed for these parameters; else None."""
        return self._checked

    @model_validator(mode="after")
    def _services(self) -> HarvestParams:
        if (self.service is None) == (not self.services):
            raise ValueError("give service (one) or services (a list), not both or neither")
        names = [s.label for s in self.all_services]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"services: {', '.join(twice)} named twice: give each service a distinct name"
            )
        return self

    @property
    def all_services(self) -> list[Service]:
        """The run's services: ``[service]`` or ``services``."""
        return [self.service] if self.service is not None else list(self.services)

    @model_validator(mode="after")
    def _targets(self) -> HarvestParams:
        single = self.ra is not None or self.dec is not None
        if single and (self.ra is None or self.dec is None):
            raise ValueError("give both ra and dec")
        if single == (self.targets is not None):
            raise ValueError("give either targets (a file) or ra and dec, not both or neither")
        if self.products.mode == "cutout" and not (
            self.radius or self.products.cutout_radius or self.targets
        ):  # a plan too: its estimate is of cutout bytes (a target file is checked per row)
            raise ValueError(
                "cutout mode (products.mode) needs a radius: set radius or products.cutout_radius"
            )
        if self.storage.aws_credentials_block and not (
            is_s3(self.output_url) or is_s3(self.storage_url)
        ):
            raise ValueError(
                "storage.aws_credentials_block is for S3: output_url or storage.url must be s3://"
            )
        return self

    @property
    def storage_url(self) -> str:
        return self.storage.url or self.output_url.rstrip("/") + "/fits"

    @property
    def storage_options(self) -> dict:
        return self.storage.storage_options or self.output_storage_options
