"""The records that flow through a harvest (targets, images, verdicts, stored objects,
outcomes, the run summary) and the modes the parameters choose between.

Plain frozen dataclasses (no Prefect, no I/O) so every step can be tested directly and
results can cross process boundaries (Dask, Prefect task results) by pickling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from obsharvest.access.kinds import Kind, LinkRequest, kind_of, link_request

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
class Summary:
    run_id: str
    targets: list[TargetSummary] = field(default_factory=list)
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
