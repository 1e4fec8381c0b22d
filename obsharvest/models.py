"""The records that flow through a harvest: targets, images, verdicts, stored objects.

Plain frozen dataclasses (no Prefect, no I/O) so every step can be tested directly and
results can cross process boundaries (Dask, Prefect task results) by pickling.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
