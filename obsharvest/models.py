"""The records that flow through a harvest (targets, images, verdicts, stored objects,
outcomes, the run summary), the modes the parameters choose between, and the little
ObsCore/DataLink vocabulary an image's record needs to say how its bytes are reached.

Plain frozen dataclasses (no Prefect, no I/O) so every step can be tested directly and
results can cross process boundaries (Dask, Prefect task results) by pickling. The ground
floor: this module imports nothing of obsharvest, every other module may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# The modes, shared by the parameters (the Prefect form refuses other values) and the library.
VerificationMode = Literal["skip", "record-only", "off"]
"""skip: verify, store only images containing a target; record-only: verify, store all;
off: no header reads."""
ProductMode = Literal["image", "cutout"]
"""image: the whole file once per image; cutout: a SODA cutout around each target."""
CutoutFallback = Literal["fail", "image"]
"""cutout mode on an archive without SODA: stop before any work, or store whole images."""
QueryMode = Literal["sync", "async"]
"""TAP's /sync or /async (UWS) endpoint."""
QueryStrategy = Literal["per_target", "batched", "upload"]
"""One query per target, OR-batches of targets, or a TAP_UPLOAD join of the target list."""


@dataclass(frozen=True)
class Target:
    """A sky position to harvest around; ``radius`` (deg) asks for overlap, not containment."""

    name: str
    ra: float  # ICRS degrees, normalised to [0, 360)
    dec: float  # ICRS degrees, [-90, 90]
    radius: float | None = None  # degrees; None: the point itself must be on the pixels
    row: int | None = None  # 1-based data row in the source file, for error messages


class Verdict(StrEnum):
    """Does an image's pixel grid (its header WCS) truly contain the target?"""

    CONTAINS = "contains"  # on the pixels (or, with a radius, the circle overlaps them)
    OUTSIDE = "outside"  # only inside the padded s_region (seed §1.1)
    NO_DATA = "no_data"  # on the pixel grid, but the pixel is flagged NO_DATA (§1.1: lost amps)
    NO_WCS = "no_wcs"  # no celestial WCS in any HDU
    ERROR = "error"  # the header could not be read or the transform failed


@dataclass(frozen=True)
class Containment:
    """The verdict for one (target, image) pair, with the target's pixel position."""

    verdict: Verdict
    x: float | None = None  # 0-based pixel column of the target in the WCS HDU
    y: float | None = None
    hdu: int | None = None  # index of the HDU whose WCS decided
    reason: str | None = None  # why, for NO_WCS and ERROR
    pixel_scale: float | None = None  # deg per pixel near the image centre (from the header)
    grid: tuple[int, int] | None = None  # (NAXIS1, NAXIS2) of that HDU: what a cutout cuts


@dataclass(frozen=True)
class StoredObject:
    """A file written to object storage (or found there already, identical)."""

    uri: str  # full fsspec URL of the object
    key: str  # key relative to the storage root
    size: int
    sha256: str
    md5: str | None = None  # also computed, to compare with S3-style ETags
    skipped: bool = False  # already present with the same size and checksum


@dataclass(frozen=True)
class Prior:
    """What an earlier run decided for one (target, image) pair."""

    verdict: str | None
    x: float | None = None
    y: float | None = None
    hdu: int | None = None
    reason: str | None = None
    stored: bool = False
    storage_uri: str | None = None
    size: int | None = None
    sha256: str | None = None


# -- what an access_url is (ObsCore 1.1 §4.7) and how Datalink is asked about it ---------
# The rest of the access vocabulary (sniffing replies, service descriptors, how a file was
# reached) is in obsharvest.access.kinds, which re-exports these names.

DATALINK_CONTENT = "datalink"  # the content= parameter of the DataLink media type
FITS_TYPES = frozenset(
    {
        "image/fits",
        "application/fits",
        "image/x-fits",
        "application/x-fits",
        "application/x-fits-bintable",
        "application/x-fits-image",
    }
)


class Kind(StrEnum):
    """What ``access_url`` is: a DataLink document, the file itself, or not said."""

    DATALINK = "datalink"
    FILE = "file"
    UNKNOWN = "unknown"


def media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``'Application/X-VOTable+XML; content=datalink'`` → (type, {param: value})."""
    parts = [p.strip() for p in str(value or "").split(";")]
    params = {}
    for part in parts[1:]:
        name, _, val = part.partition("=")
        params[name.strip().lower()] = val.strip().strip('"').lower()
    return parts[0].lower(), params


def is_datalink_type(value: str | None) -> bool:
    """A DataLink media type (any capitalisation, spacing or parameter order)."""
    kind, params = media_type(value)
    return kind in ("application/x-votable+xml", "text/xml") and (
        params.get("content") == DATALINK_CONTENT
    )


def is_fits_type(value: str | None) -> bool:
    kind, _ = media_type(value)
    return kind in FITS_TYPES or (kind.endswith("fits") and "/" in kind)


def kind_of(access_format: str | None) -> Kind:
    """What ObsCore's ``access_format`` says ``access_url`` is."""
    if is_datalink_type(access_format):
        return Kind.DATALINK
    if is_fits_type(access_format):
        return Kind.FILE
    return Kind.UNKNOWN


@dataclass(frozen=True)
class LinkRequest:
    """How to ask Datalink about one image: ``ident`` sent to ``endpoint`` (batchable),
    or, with ``ident`` None, a GET on ``endpoint`` exactly as given (redirects followed)."""

    endpoint: str
    ident: str | None = None


def link_request(
    access_url: str, service_url: str | None = None, service_id: str | None = None
) -> LinkRequest:
    """The request for a row: its descriptor and ID if the TAP result gave them, else the
    links endpoint of an ``access_url`` with exactly one ID, else the URL as given."""
    if service_url and service_id:
        return LinkRequest(service_url, service_id)
    if not access_url:
        raise ValueError("no access_url and no Datalink service descriptor for this row")
    try:
        endpoint, ident = split_access_url(access_url)
    except ValueError:
        return LinkRequest(access_url, None)
    return LinkRequest(endpoint, ident)


def split_access_url(access_url: str) -> tuple[str, str]:
    """``https://host/api/datalink/links?ID=butler%3A//dp02/x`` → (endpoint, ID)."""
    parts = urlsplit(access_url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    ids = [v for k, v in params if k.upper() == "ID"]
    if len(ids) != 1:
        # named without its query (a signed URL's credentials), as messages name URLs
        raise ValueError(f"access_url {access_url.split('?', 1)[0]} does not carry exactly one ID")
    rest = [(k, v) for k, v in params if k.upper() != "ID"]
    if rest:  # keep other parameters (e.g. RESPONSEFORMAT) as part of the endpoint
        return urlunsplit(parts._replace(query=urlencode(rest))), ids[0]
    return urlunsplit(parts._replace(query="")), ids[0]


@dataclass(frozen=True)
class ImageWork:
    key: str  # obs_publisher_did: one image, however many targets it serves
    access_url: str  # ObsCore access_url: a Datalink document or the file (access_format)
    storage_key: str
    targets: tuple[Target, ...]
    priors: Mapping[str, Prior] = field(default_factory=dict)  # by target name
    s_region: str = ""  # for the quicklook's outline
    access_format: str = ""  # ObsCore access_format: says what access_url is
    datalink_url: str | None = None  # the TAP result's Datalink service descriptor, if any
    datalink_id: str | None = None  # this row's value of the column that descriptor names
    soda_url: str | None = None  # the TAP result's SODA descriptor (for direct files)
    soda_id: str | None = None
    soda_shape: str = "CIRCLE"  # the SODA shape parameter that descriptor takes
    creator_did: str = ""  # ObsCore obs_creator_did, if served: one image across archives

    @property
    def identity(self) -> str:
        """What makes two archives' rows one image: the creator's DID when the archive
        serves one, else the publisher's (mirrors serve one file under several)."""
        return self.creator_did or self.key

    @property
    def kind(self) -> Kind:
        """What to do with access_url; a Datalink descriptor with an ID makes it Datalink."""
        if self.datalink_url and self.datalink_id and not self.access_url:
            return Kind.DATALINK
        return kind_of(self.access_format)

    def link_request(self) -> LinkRequest:
        return link_request(self.access_url, self.datalink_url, self.datalink_id)


@dataclass(frozen=True)
class ImageOutcome:
    key: str
    verdicts: dict[str, Containment]
    stored: StoredObject | None = None  # the whole image (image mode)
    failure: str | None = None
    content_length: int | None = None
    reused: bool = False  # decided earlier; nothing fetched this run
    downloaded: bool = False  # bytes of the file were transferred this run
    cutouts: dict[str, StoredObject] = field(default_factory=dict)  # cutout mode, by target
    cutout_circles: dict[str, str] = field(default_factory=dict)  # "ra dec r" asked, by target
    quicklooks: dict[str, str] = field(default_factory=dict)  # PNG URI, by target
    access: str | None = None  # how the file was reached (obsharvest.access.kinds.Access)
    kept_for_all: bool = False  # stored whatever the verdicts (record-only, off)

    def stored_for(self, target: str) -> StoredObject | None:
        """What is stored for this (target, image) pair: its cutout, or the image when it
        holds this target (or every image is kept). Not the image stored for another
        target: that would make a pair's row depend on which targets shared its run."""
        if self.cutouts or self.cutout_circles:
            return self.cutouts.get(target)
        if self.stored is None:
            return None
        verdict = self.verdicts.get(target)
        if self.kept_for_all or (verdict is not None and verdict.verdict == Verdict.CONTAINS):
            return self.stored
        return None

    @property
    def stored_objects(self) -> list[StoredObject]:
        return [self.stored] if self.stored else list(self.cutouts.values())

    @property
    def wanted(self) -> bool:
        return any(c.verdict == Verdict.CONTAINS for c in self.verdicts.values())


@dataclass(frozen=True)
class AccessLink:
    """Where to download one image now. The URL is signed and short-lived: never persist it."""

    key: str  # the image this is for (obs_publisher_did)
    url: str | None = None
    content_length: int | None = None
    content_type: str | None = None
    error: str | None = None  # why there is no URL (error_message row, no #this, ...)
    resolved_at: float = 0.0
    soda_url: str | None = None  # the SODA sync endpoint a Datalink row names, if any
    soda_id: str | None = None  # the ID to send it
    access: str = "datalink"  # how the URL was found (obsharvest.access.kinds.Access)
    soda_shape: str = "CIRCLE"  # the SODA shape parameter its descriptor takes

    @property
    def refreshable(self) -> bool:
        """Signed URLs from Datalink can be asked for again; a direct access_url cannot."""
        return "datalink" in self.access


@dataclass
class TargetSummary:
    name: str
    rows: int = 0
    contains: int = 0
    outside: int = 0  # in s_region, not on the pixels: the padding false positives
    undecided: int = 0  # no_wcs, error, or not verified
    stored: int = 0
    bytes: int = 0
    failures: int = 0


@dataclass
class ServiceSummary:
    """One service's share of a run: its rows, the images it served, what was stored from
    it (an image served by several is stored once, counted for the service it came from),
    what failed, and how long its queries and images took."""

    name: str
    rows: int = 0
    images: int = 0
    also_elsewhere: int = 0  # of its images, served by another service of the run too
    stored: int = 0
    bytes: int = 0
    failed: int = 0  # images, and targets whose query failed
    seconds: float = 0.0


@dataclass
class Summary:
    run_id: str
    targets: list[TargetSummary] = field(default_factory=list)
    services: list[ServiceSummary] = field(default_factory=list)  # several: one line each
    images: int = 0
    downloaded: int = 0
    downloaded_bytes: int = 0
    stored_images: int = 0
    stored_bytes: int = 0
    already_stored: int = 0
    reused: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    by_subtype_band: dict[str, int] = field(default_factory=dict)
    planned_bytes: int = 0  # plan mode: what a real run would download
    planned_cutouts: int = 0  # plan in cutout mode: cutouts a real run would fetch
    planned_unknown: int = 0  # ... of which the size could not be estimated
    metadata_url: str = ""
    metadata_written: bool = False  # this run wrote Parquet (no rows: nothing to point at)
    storage_url: str = ""
    plan: bool = False
    cutout_mode: bool = False
    interrupted: str | None = None  # why the run stopped early (a signal, its deadline)

    @property
    def false_positive_rate(self) -> float:
        decided = sum(t.contains + t.outside for t in self.targets)
        return sum(t.outside for t in self.targets) / decided if decided else 0.0

    @property
    def ok(self) -> bool:
        return not self.failures
