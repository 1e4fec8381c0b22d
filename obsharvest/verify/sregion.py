"""The client's own reading of ObsCore ``s_region`` values, and sky tests against them.

Archives write ``s_region`` in several dialects, all read here:

- STC-S shapes, keywords in any case, with frame ICRS, FK5, J2000, UNKNOWNFrame or none,
  and optional reference position and flavour: ``POLYGON ICRS ra dec ...`` (Rubin),
  ``POLYGON J2000 ...`` (ESO), ``Polygon ICRS ...``/``Circle ICRS ra dec r`` (ALMA),
  ``BOX ICRS ra dec width height`` (read as its four-vertex polygon);
- STC-S operators: ``Union ICRS (Polygon ... Polygon ...)`` (ALMA mosaics),
  ``Intersection (...)`` and ``Not (...)``: a target is in a union if it is in any member;
  what cannot be decided exactly for an operator is *unknown* (see below);
- DALI arrays, the column served as doubles with ``xtype="polygon"`` (``ra1 dec1 ra2
  dec2 ...``), ``"circle"`` (``ra dec r``) or ``"point"`` (``ra dec``); without an xtype,
  3 numbers are a circle and an even count of 6 or more a polygon. They are read as the
  equivalent STC-S text (:func:`region_text`), exactly (``repr`` of a float round-trips);
- NULL, masked or blank values: :func:`pack_rows` falls back to the circle of diameter
  ``s_fov`` about (``s_ra``, ``s_dec``), ObsCore's "estimated size of the covered region
  as the diameter of a containing circle"; without those, the row is unknown.

The client uses ``s_region`` to decide which result rows can serve which target before
any image header is read, and to draw footprints. It is written apart from any archive's
code on purpose: were the archive under test and the client to share geometry, a bug in
it would agree with itself and never show.

Geometry is exact on the unit sphere: polygon edges are great-circle arcs and every test
is made on 3-D unit vectors, so RA wrap-around and the poles need no special case.
Polygons may be wound either way; a polygon is the smaller of the two regions its edges
bound and must lie in an open hemisphere (true of any instrument footprint). Values that
cannot be used are *unknown*, never "outside": the caller keeps those rows and lets the
image's WCS decide. A ``POINT``/``POSITION`` region is unknown for containment too: a
point says where an image is, not how far it reaches, so it can rule no target out
(:func:`pack_rows` uses the ``s_fov`` circle instead when the row has one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from functools import cached_property
from itertools import chain
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from obsharvest.errors import SRegionError

__all__ = [
    "S_REGION_FRAMES",
    "Circle",
    "Intersection",
    "Not",
    "Point",
    "Polygon",
    "SRegionError",
    "SRegions",
    "Union",
    "circle_meets_regions",
    "pack_regions",
    "pack_rows",
    "parse_region",
    "parse_s_region",
    "point_in_regions",
    "region_text",
    "s_region_outlines",
]

# Frames whose coordinates are ICRS to well under an arcsecond. UNKNOWNFRAME is what
# DaCHS writes ("UNKNOWNFrame") for ICRS positions without a declared frame; J2000 is
# ESO's name for FK5 J2000.
S_REGION_FRAMES = ("ICRS", "FK5", "J2000", "UNKNOWNFRAME")
# STC-S reference positions and the 2-D spherical flavour may follow the frame: at the
# scale of a footprint they move nothing, so they are read and ignored.
S_REGION_REFERENCE_POSITIONS = frozenset(
    {
        "BARYCENTER",
        "EMBARYCENTER",
        "GALACTIC_CENTER",
        "GEOCENTER",
        "HELIOCENTER",
        "LOCAL_GROUP_CENTER",
        "LSR",
        "LSRD",
        "LSRK",
        "RELOCATABLE",
        "TOPOCENTER",
        "UNKNOWNREFPOS",
    }
)
S_REGION_FLAVORS = frozenset({"SPHERICAL2"})
_SHAPES = {
    "POLYGON": "POLYGON",
    "CIRCLE": "CIRCLE",
    "POINT": "POINT",
    "POSITION": "POINT",
    "BOX": "BOX",
}
# STC-S operators; Difference (two operands) is not read: such a value is unknown.
_OPERATORS = {"UNION": "or", "INTERSECTION": "and", "NOT": "not"}
_OPERANDS = re.compile(r"[()]|[^\s()]+")
# the columns pack_rows reads, matched case-insensitively (some servers upper-case them)
S_REGION, S_RA, S_DEC, S_FOV = "s_region", "s_ra", "s_dec", "s_fov"
# DALI xtypes of region-valued double arrays, and the STC-S shape each one is
_DALI_SHAPES = {"polygon": "POLYGON", "circle": "CIRCLE", "point": "POSITION"}
_QUOTE_CHARS = 60  # how much of a bad s_region an error message quotes
_CAP_SLACK = 1e-9  # radians added to bounding caps: they only pre-select, never decide
_FLAT = 1e-12  # relative signed area below which a polygon has no inside
_POLYGON_PROBLEMS = {
    1: "does not lie within a hemisphere",
    2: "has no area",
    3: "has a zero-length edge",
}
_POINT_UNKNOWN = "POINT has no extent: it cannot rule a target out"
_PAIR_BUDGET = 2_000_000  # (pairs x vertices) evaluated at once, bounds temporary memory
_CIRCLE_OUTLINE = 72  # vertices of a circle drawn as an outline


# -- parsing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    ra: float  # degrees, [0, 360)
    dec: float


@dataclass(frozen=True)
class Circle:
    ra: float
    dec: float
    radius: float  # degrees, [0, 180]


@dataclass(frozen=True)
class Polygon:
    vertices: tuple[tuple[float, float], ...]  # (ra, dec) degrees, distinct, not closed


@dataclass(frozen=True)
class Union:
    """STC-S ``Union``: the sky in any member (ALMA writes mosaics so)."""

    members: tuple[Region, ...]


@dataclass(frozen=True)
class Intersection:
    """STC-S ``Intersection``: the sky in every member."""

    members: tuple[Region, ...]


@dataclass(frozen=True)
class Not:
    """STC-S ``Not``: the sky outside its member (ALMA cuts holes with it)."""

    member: Region


Region: TypeAlias = Point | Circle | Polygon | Union | Intersection | Not
# A compound region's shape, its leaves replaced by their places ("slots") 0, 1, ...:
# an int is a leaf; ("or" | "and" | "not", (operands...)) an operator.
_Signature: TypeAlias = int | tuple[str, tuple[Any, ...]]


def _one_line(text: str, limit: int = _QUOTE_CHARS) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _bad(problem: str, text: str) -> SRegionError:
    """The error for an unusable value, quoting its start on one line (built only on failure:
    parsing 100k rows must not pay for messages)."""
    return SRegionError(f"s_region {problem}: {_one_line(text)!r}")


def parse_region(text: str) -> Region:
    """One STC-S ``s_region``: ``SHAPE [frame] [refpos] [SPHERICAL2] numbers``, or an
    operator ``Union|Intersection [frame] (region region ...)`` / ``Not (region)``.

    Shapes are POLYGON, CIRCLE, POINT (``POSITION`` is STC-S for a point) and BOX (its
    centre, width and height; read as its polygon, see :func:`_box`). Keywords are
    case-insensitive; the frame is optional and must be ICRS-like (see
    :data:`S_REGION_FRAMES`) because nothing here transforms coordinates. RA is
    normalised to [0, 360). A polygon's repeated consecutive vertices and its closing
    vertex are dropped (at a pole every RA is one point). Anything else - other frames,
    Difference, several shapes side by side, bad numbers - raises :class:`SRegionError`
    with a one-line message quoting the start of the value.
    """
    if _is_compound(text):
        return _compound(text)
    return _region(*_read(text))


def _region(shape: str, values: list[float]) -> Point | Circle | Polygon:
    if shape == "POLYGON":
        return Polygon(tuple(zip(values[0::2], values[1::2], strict=True)))
    if shape == "CIRCLE":
        return Circle(*values)
    return Point(*values)


def _is_compound(text: object) -> bool:
    """An operator, or parentheses: cheap enough to ask of every value."""
    if not isinstance(text, str):
        return False
    if "(" in text or ")" in text:
        return True
    head = text.lstrip()[:13].split(maxsplit=1)
    return bool(head) and head[0].upper() in _OPERATORS


def _compound(text: str) -> Region:
    tokens = _OPERANDS.findall(text)
    region, at = _operand(tokens, 0, text)
    if at != len(tokens):
        raise _bad("has more after its region (several shapes side by side?)", text)
    return region


def _operand(tokens: list[str], at: int, text: str) -> tuple[Region, int]:
    """The region starting at ``tokens[at]`` and the index after it (recursive descent)."""
    if at >= len(tokens):
        raise _bad("ends where a region should start", text)
    word = tokens[at].upper()
    operator = _OPERATORS.get(word)
    if operator is not None:
        at = _skip_keywords(tokens, at + 1, text)
        if at >= len(tokens) or tokens[at] != "(":
            raise _bad(f"{tokens[at - 1]} wants its operands in parentheses", text)
        at += 1
        members: list[Region] = []
        while at < len(tokens) and tokens[at] != ")":
            member, at = _operand(tokens, at, text)
            members.append(member)
        if at >= len(tokens):
            raise _bad("has an unclosed parenthesis", text)
        if operator == "not":
            if len(members) != 1:
                raise _bad(f"Not takes one operand, got {len(members)}", text)
            return Not(members[0]), at + 1
        if not members:
            raise _bad(f"{word.title()} has no operands", text)
        kind = Union if operator == "or" else Intersection
        return kind(tuple(members)), at + 1
    if word not in _SHAPES:
        raise _bad(_shape_problem(tokens[at]), text)
    end = at + 1
    while (
        end < len(tokens)
        and tokens[end] not in ("(", ")")
        and tokens[end].upper() not in _SHAPES
        and tokens[end].upper() not in _OPERATORS
    ):
        end += 1
    return _region(*_shape(tokens[at:end], text)), end


def _shape_problem(word: str) -> str:
    return f"shape {_one_line(word, 20)!r} is not POLYGON, CIRCLE, BOX, POINT or an operator"


def _read(text: str) -> tuple[str, list[float]]:
    """``(shape, numbers)`` of one value that is a single shape (no operator): a polygon's
    (and a box's) numbers are its distinct vertices as ``ra0, dec0, ra1, ...``. Flat lists
    keep packing 100k rows cheap."""
    if not isinstance(text, str):
        raise SRegionError(f"s_region is not text: {type(text).__name__}")
    tokens = text.split()
    if not tokens:
        raise SRegionError("s_region is empty")
    return _shape(tokens, text)


def _shape(tokens: list[str], text: str) -> tuple[str, list[float]]:
    shape = _SHAPES.get(tokens[0].upper())
    if shape is None:
        raise _bad(_shape_problem(tokens[0]), text)
    values = _numbers(tokens, text)
    if shape == "POLYGON":
        return shape, _polygon(values, text)
    if shape == "BOX":
        return "POLYGON", _polygon(_box(values, text), text)
    if shape == "CIRCLE":
        if len(values) != 3:
            raise _bad(f"CIRCLE needs 3 numbers, got {len(values)}", text)
        ra, dec, radius = values
        if not -90.0 <= dec <= 90.0:
            raise _bad("has a declination outside [-90, 90]", text)
        if not 0.0 <= radius <= 180.0:
            raise _bad("CIRCLE radius is outside [0, 180]", text)
        return shape, [_ra(ra), dec, radius]
    if len(values) != 2:
        raise _bad(f"POINT needs 2 numbers, got {len(values)}", text)
    if not -90.0 <= values[1] <= 90.0:
        raise _bad("has a declination outside [-90, 90]", text)
    return shape, [_ra(values[0]), values[1]]


def _box(values: list[float], text: str) -> list[float]:
    """The vertices of an STC-S ``BOX ra dec width height`` (degrees).

    STC's box: arms from the centre along its meridian and along the great circle
    perpendicular to it, half the height and half the width long; the sides are the great
    circles through the arms' ends at right angles to them. The corners are then, in the
    gnomonic plane about the centre, ``(+-tan(width/2), +-tan(height/2))``, so the box is
    exactly the polygon of those four vertices.
    """
    if len(values) != 4:
        raise _bad(f"BOX needs 4 numbers, got {len(values)}", text)
    ra, dec, width, height = values
    if not -90.0 <= dec <= 90.0:
        raise _bad("has a declination outside [-90, 90]", text)
    if not (0.0 < width < 180.0 and 0.0 < height < 180.0):
        raise _bad("BOX width and height must be in (0, 180)", text)
    lon, lat = math.radians(ra), math.radians(dec)
    centre = np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
    east = np.array([-math.sin(lon), math.cos(lon), 0.0])
    north = np.cross(centre, east)
    half_w, half_h = math.tan(math.radians(width) / 2), math.tan(math.radians(height) / 2)
    flat: list[float] = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        corner = centre + sx * half_w * east + sy * half_h * north
        x, y, z = (corner / np.linalg.norm(corner)).tolist()
        flat += (math.degrees(math.atan2(y, x)), math.degrees(math.atan2(z, math.hypot(x, y))))
    return flat


def _ra(value: float) -> float:
    ra = value % 360.0
    return 0.0 if ra == 360.0 else ra  # -1e-17 % 360 rounds to 360


def _skip_keywords(tokens: list[str], at: int, text: str) -> int:
    """The index after an optional ``fillfactor f``, frame, reference position, flavour."""
    if at + 1 < len(tokens) and tokens[at].upper() == "FILLFACTOR":
        at += 2
    for allowed in (S_REGION_FRAMES, S_REGION_REFERENCE_POSITIONS, S_REGION_FLAVORS):
        if at >= len(tokens):
            break
        word = tokens[at].upper()
        if word in allowed:
            at += 1
        elif (
            allowed is S_REGION_FRAMES
            and word not in S_REGION_REFERENCE_POSITIONS
            and word not in S_REGION_FLAVORS
            and word not in ("(", ")")
            and not _is_number(word)
        ):  # the frame's place: an unknown word here is read as a frame we cannot use
            frames = ", ".join(S_REGION_FRAMES)
            raise _bad(f"frame {_one_line(tokens[at], 20)!r} is not one of {frames}", text)
    return at


def _numbers(tokens: list[str], text: str) -> list[float]:
    """The coordinates after the shape and its optional frame, reference position, flavour."""
    at = _skip_keywords(tokens, 1, text)
    try:
        values = [float(tok) for tok in tokens[at:]]
    except ValueError:
        raise _bad("has a non-number (or several shapes)", text) from None
    if not all(map(math.isfinite, values)):
        raise _bad("has a non-finite coordinate", text)
    return values


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _polygon(values: list[float], text: str) -> list[float]:
    if len(values) % 2:
        raise _bad("has an odd number of coordinates", text)
    decs = values[1::2]
    if not all(-90.0 <= dec <= 90.0 for dec in decs):
        raise _bad("has a declination outside [-90, 90]", text)
    flat: list[float] = []
    last_ra = last_dec = math.nan
    for ra, dec in zip(values[0::2], decs, strict=True):
        ra %= 360.0
        if ra == 360.0:  # -1e-17 % 360 rounds to 360
            ra = 0.0
        if dec == last_dec and (ra == last_ra or abs(dec) == 90.0):
            continue  # a repeated vertex (at a pole, every RA is the same point)
        flat += (ra, dec)
        last_ra, last_dec = ra, dec
    if len(flat) > 2:
        ra, dec = flat[0], flat[1]
        if dec == last_dec and (ra == last_ra or abs(dec) == 90.0):
            del flat[-2:]  # the closing vertex
    if len(flat) < 6:
        raise _bad("polygon needs at least 3 vertices", text)
    return flat


def parse_s_region(text: str) -> list[tuple[float, float]]:
    """Vertices ``(ra, dec)`` in degrees of an ``s_region`` that is one POLYGON (or BOX).

    Rubin writes ``POLYGON ICRS ra1 dec1 ra2 dec2 ...``. Read by :func:`parse_region`;
    anything else is an :class:`SRegionError` here, since callers want vertices to
    pre-filter with (the padded polygon never decides containment). To draw any region,
    :func:`s_region_outlines`.
    """
    region = parse_region(text)
    if not isinstance(region, Polygon):
        raise _bad("is not a single POLYGON", text)
    return list(region.vertices)


def s_region_outlines(value: object, xtype: str | None = None) -> list[list[tuple[float, float]]]:
    """The outlines to draw for one served ``s_region`` (STC-S text, bytes or DALI array).

    A polygon is its vertices; a circle a polygon of many vertices on it; an operator
    draws every boundary of its members (a union's pieces, a ``Not``'s hole); a point or
    an unusable value draws nothing (``[]``).
    """
    text = region_text(value, xtype)
    if text is None:
        return []
    try:
        region = parse_region(text)
    except SRegionError:
        return []
    return _outlines(region)


def _outlines(region: Region) -> list[list[tuple[float, float]]]:
    if isinstance(region, Polygon):
        return [list(region.vertices)]
    if isinstance(region, Circle):
        if region.radius >= 90.0:
            return []  # a hemisphere or more has no outline worth drawing on a map
        angles = np.linspace(0.0, 2 * np.pi, _CIRCLE_OUTLINE, endpoint=False)
        centre = _unit(region.ra, region.dec)
        east = np.array([-math.sin(math.radians(region.ra)), math.cos(math.radians(region.ra)), 0])
        north = np.cross(centre, east)
        r = math.radians(region.radius)
        ring = math.cos(r) * centre + math.sin(r) * (
            np.cos(angles)[:, None] * north + np.sin(angles)[:, None] * east
        )
        ra = np.degrees(np.arctan2(ring[:, 1], ring[:, 0])) % 360.0
        dec = np.degrees(_latitude(ring))
        return [list(zip(ra.tolist(), dec.tolist(), strict=True))]
    if isinstance(region, Not):
        return _outlines(region.member)
    if isinstance(region, Union | Intersection):
        return [outline for member in region.members for outline in _outlines(member)]
    return []


# -- served values as text --------------------------------------------------------------


def region_text(value: object, xtype: str | None = None) -> str | None:
    """One served ``s_region`` as STC-S text, or None when there is none (NULL, blank).

    Text and bytes are returned as they are; a DALI double array (``xtype`` polygon,
    circle or point; without one, guessed from the count: 2 a point, 3 a circle, an even
    count of 6 or more a polygon) becomes the same region in STC-S, numbers written with
    ``repr`` so they read back exactly.
    """
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, np.ndarray | list | tuple):
        return _dali_text(value, xtype)
    return None


def _dali_text(value: npt.ArrayLike, xtype: str | None) -> str | None:
    array: np.ma.MaskedArray = np.ma.asarray(value)
    if array.dtype.kind not in "fiu" or array.size == 0 or np.ma.getmaskarray(array).any():
        return None
    numbers = np.ma.getdata(array).astype(float).ravel().tolist()
    shape = _DALI_SHAPES.get((xtype or "").strip().lower())
    if shape is None:
        count = len(numbers)
        shape = (
            "POSITION"
            if count == 2
            else "CIRCLE"
            if count == 3
            else "POLYGON"
            if count >= 6 and not count % 2
            else None
        )
    if shape is None:
        return None
    return f"{shape} ICRS " + " ".join(map(repr, numbers))


# -- many regions, packed ---------------------------------------------------------------


def _unit(ra: npt.ArrayLike, dec: npt.ArrayLike) -> np.ndarray:
    """Unit vectors (..., 3) of RA/Dec in degrees."""
    lon = np.radians(np.asarray(ra, dtype=float))
    lat = np.radians(np.asarray(dec, dtype=float))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product over the last axis (np.cross is several times slower on small axes)."""
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], axis=-1)


def _latitude(xyz: np.ndarray) -> np.ndarray:
    """Latitude (radians) of unit vectors, accurate near the poles too (unlike arcsin)."""
    return np.arctan2(xyz[..., 2], np.hypot(xyz[..., 0], xyz[..., 1]))


def _chord(angle: npt.ArrayLike) -> np.ndarray:
    """Chord length of an angle in radians (clipped to [0, pi]): compared with vector
    differences it resolves tiny separations that a dot product near 1 cannot."""
    return 2.0 * np.sin(np.clip(angle, 0.0, np.pi) / 2.0)


def _chord2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return _dot(d, d)


@dataclass(frozen=True)
class _PolygonGroup:
    """Polygons with the same number of vertices, wound counter-clockwise seen from outside
    (interior on the left), with what the tests need precomputed once per polygon."""

    vertices: np.ndarray  # (k, m, 3)
    normals: np.ndarray  # (k, m, 3) v[i] x v[i+1]: interior on the positive side
    unit_normals: np.ndarray  # (k, m, 3)
    before_end: np.ndarray  # (k, m, 3) n x v[i]: p.this >= 0 when p is past edge i's start
    before_start: np.ndarray  # (k, m, 3) v[i+1] x n: p.this >= 0 when p is before its end
    chord_dots: np.ndarray  # (k, m) v[i] . v[i+1]
    centre: np.ndarray  # (k, 3) normalised vertex mean: every vertex is < 90 deg from it
    convex: np.ndarray  # (k,) bool


@dataclass(frozen=True)
class _Compounds:
    """Operator regions, grouped by signature (their shape with leaves as slots) so that
    rows of the same shape - every row of an ALMA-like archive, say - are decided together.

    ``leaves[s]`` holds, per compound of signature ``s``, the distinct-region index of each
    leaf slot (-1: an unusable leaf, unknown).
    """

    signatures: tuple[_Signature, ...] = ()
    signature_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    index_in: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    leaves: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class SRegions:
    """Many rows' ``s_region`` values, parsed once per distinct string, for vectorised tests.

    ``region_of[row]`` indexes the distinct usable single shapes, ``compound_of[row]`` the
    distinct operator regions (whose leaves are distinct shapes too); a row with neither is
    unknown (see ``reasons``). Each distinct shape has a bounding cap (``centre``, ``reach``
    in radians) that pre-selects the few shapes a target can touch; only those get the
    exact test.
    """

    region_of: np.ndarray  # (n,) intp
    centre: np.ndarray  # (d, 3)
    reach: np.ndarray  # (d,) radians
    kind: np.ndarray  # (d,) 0 circle, 1 + g polygon group g
    slot: np.ndarray  # (d,) index within its kind's arrays
    circles: np.ndarray  # (c, 3)
    circle_radius: np.ndarray  # (c,) radians
    groups: tuple[_PolygonGroup, ...]
    reasons: dict[str, str] = field(default_factory=dict)  # unusable text -> why
    compound_of: np.ndarray | None = None  # (n,) intp, -1 for none; None: no compounds
    compounds: _Compounds = field(default_factory=_Compounds)

    def __len__(self) -> int:
        return len(self.region_of)

    @property
    def unknown(self) -> np.ndarray:
        """Rows whose ``s_region`` could not be used at all (an operator region that is
        usable may still leave a target undecided: the tests say so per target)."""
        if self.compound_of is None:
            return self.region_of < 0
        return (self.region_of < 0) & (self.compound_of < 0)

    @cached_property
    def _by_latitude(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Distinct regions sorted by their cap centre's latitude, and the widest cap."""
        latitude = _latitude(self.centre)
        order = np.argsort(latitude, kind="stable")
        return order, latitude[order], float(self.reach.max(initial=0.0))

    def within_dec(self, latitude: float, radius: float) -> np.ndarray:
        """Distinct regions whose cap could reach within ``radius`` of a point at
        ``latitude`` (radians): a binary search, so one target need not scan every row."""
        order, sorted_latitude, widest = self._by_latitude
        span = widest + radius + _CAP_SLACK
        lo = np.searchsorted(sorted_latitude, latitude - span, "left")
        hi = np.searchsorted(sorted_latitude, latitude + span, "right")
        return order[lo:hi]


def _xtype_of(values: object) -> str | None:
    """The VOTable ``xtype`` an astropy column carries in its ``meta`` (astropy's VOTable
    reader puts it there), if any."""
    meta = getattr(values, "meta", None)
    xtype = meta.get("xtype") if isinstance(meta, dict) else None
    return str(xtype) if xtype else None


def _texts(values: Iterable[object], xtype: str | None = None) -> list[str | None]:
    """Each value as STC-S text; masked/None, blank and non-region values are None.

    A numeric column of fixed-size arrays (VOTable ``arraysize="8"``) is 2-D; one of
    variable-size arrays (``arraysize="*"``) holds an array per row: both are DALI
    regions, read by ``xtype`` (the column's, unless given).
    """
    xtype = xtype or _xtype_of(values)
    if isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype.kind in "fiu":
        masked = np.asarray(np.ma.getmaskarray(values).any(axis=1))
        data = np.ma.getdata(values)
        return [None if m else _dali_text(row, xtype) for row, m in zip(data, masked, strict=True)]
    if isinstance(values, np.ndarray) and values.dtype.kind in "SU" and values.ndim == 1:
        items: list[object] = values.tolist()  # masked values become None
    elif isinstance(values, np.ndarray) and values.dtype.kind == "O":
        mask = np.ma.getmaskarray(values)
        items = [None if m else v for v, m in zip(np.ma.getdata(values), mask, strict=True)]
    elif isinstance(values, np.ndarray):
        items = [None] * len(values)  # one number per row is no region
    else:
        items = list(values)
    out: list[str | None] = []
    for item in items:
        if isinstance(item, str):
            out.append(item if item.strip() else None)
        else:
            out.append(region_text(item, xtype))
    return out


def pack_regions(values: Iterable[object]) -> SRegions:
    """Parse a column of ``s_region`` values for many tests: STC-S text (str, bytes), DALI
    arrays (read by the column's ``xtype``), None/masked. Given a whole result table, it
    is :func:`pack_rows`.

    Each distinct value is parsed once. Unusable values - unparseable, a polygon with no
    area or not within a hemisphere, a point - become unknown rows with their reason kept.
    """
    if hasattr(values, "colnames"):
        return pack_rows(values)
    return _pack(_texts(values))


def pack_rows(rows: Any) -> SRegions:
    """The ``s_region`` of every row of an ObsCore result table (astropy ``Table``), read
    in whichever dialect the archive serves, with ObsCore's own fallback where it is
    missing: a NULL, blank or POINT ``s_region`` is replaced by the circle of diameter
    ``s_fov`` about (``s_ra``, ``s_dec``) when the row has those (else it is unknown).

    Column names are matched case-insensitively: some database back ends upper-case them.
    """
    columns = {name.lower(): name for name in rows.colnames}
    n = len(rows)
    texts: list[str | None] = _texts(rows[columns[S_REGION]]) if S_REGION in columns else [None] * n
    missing = [
        i
        for i, text in enumerate(texts)
        if text is None or text.lstrip()[:8].upper().startswith(("POINT", "POSITION"))
    ]
    if missing and all(c in columns for c in (S_RA, S_DEC, S_FOV)):
        picked = np.asarray(missing, dtype=np.intp)
        ra, dec, fov = (_floats(rows[columns[c]], picked) for c in (S_RA, S_DEC, S_FOV))
        usable = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(fov)
        usable &= (np.abs(dec) <= 90.0) & (fov > 0.0) & (fov <= 360.0)
        for i, a, d, f in zip(
            picked[usable].tolist(),
            ra[usable].tolist(),
            dec[usable].tolist(),
            fov[usable].tolist(),
            strict=True,
        ):
            texts[i] = f"CIRCLE ICRS {a!r} {d!r} {f / 2.0!r}"
    return _pack(texts)


def _floats(column: Any, rows: np.ndarray) -> np.ndarray:
    """A numeric column's values at ``rows`` as floats, masked or non-numeric as NaN."""
    values = np.ma.asarray(column)[rows]
    if values.dtype.kind not in "fiu":
        return np.full(len(rows), np.nan)
    return np.ma.filled(values.astype(float), np.nan)


def _distinct(texts: list[str | None]) -> tuple[list[str], np.ndarray]:
    """Each text once (archives repeat a footprint across rows), and each row's index
    into them (-1: no text)."""
    seen: dict[str, int] = {}
    distinct: list[str] = []
    row_key = np.empty(len(texts), dtype=np.intp)
    for i, text in enumerate(texts):
        if text is None:
            row_key[i] = -1
            continue
        key = seen.get(text)
        if key is None:
            key = seen[text] = len(distinct)
            distinct.append(text)
        row_key[i] = key
    return distinct, row_key


@dataclass
class _Shapes:
    """The shapes read one at a time, keyed by distinct text or compound leaf.

    ``owner[key]`` is the distinct text a key came from (a leaf's is its compound's), so
    a problem found later is reported against the text a user can see.
    """

    owner: list[int]
    reasons: dict[str, str] = field(default_factory=dict)  # unusable text -> why
    circles: list[tuple[int, list[float]]] = field(default_factory=list)
    polygons: dict[int, list[tuple[int, list[float]]]] = field(default_factory=dict)  # by m
    compounds: list[tuple[int, _Signature, list[int]]] = field(default_factory=list)

    def add(self, key: int, shape: str, numbers: list[float]) -> bool:
        """Keep a polygon or circle; False for a shape with no extent (a point)."""
        if shape == "POLYGON":
            self.polygons.setdefault(len(numbers) // 2, []).append((key, numbers))
        elif shape == "CIRCLE":
            self.circles.append((key, numbers))
        else:
            return False
        return True

    def add_leaves(self, key: int, leaves: list[Point | Circle | Polygon]) -> list[int]:
        """New keys for a compound's leaves (-1 for a point leaf: unknown)."""
        leaf_keys = []
        for leaf in leaves:
            leaf_key = len(self.owner)
            self.owner.append(key)
            if not self.add(leaf_key, *_leaf_numbers(leaf)):
                leaf_key = -1  # a point leaf: unknown
            leaf_keys.append(leaf_key)
        return leaf_keys


def _read_one_by_one(distinct: list[str], rest: list[int], shapes: _Shapes) -> None:
    """Read what the bulk path left: single shapes into ``shapes``, each operator region
    as its signature and leaves; an unusable text gets its reason."""
    for key in rest:
        text = distinct[key]
        try:
            if _is_compound(text):
                leaves: list[Point | Circle | Polygon] = []
                signature = _signature(_compound(text), leaves)
            else:
                shape, numbers = _read(text)
                if not shapes.add(key, shape, numbers):
                    shapes.reasons[text] = str(_bad(_POINT_UNKNOWN, text))
                continue
        except SRegionError as exc:
            shapes.reasons[text] = str(exc)
            continue
        shapes.compounds.append((key, signature, shapes.add_leaves(key, leaves)))


def _polygon_batches(
    plain: list[tuple[np.ndarray, np.ndarray]], others: dict[int, list[tuple[int, list[float]]]]
) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Polygons by vertex count, as ``(keys, (k, 2m) ra/dec)`` batches: bulk-read first."""
    polygons: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for keys, radec in plain:
        polygons.setdefault(radec.shape[1] // 2, []).append((keys, radec))
    for size, members in others.items():
        keys = np.array([key for key, _ in members], dtype=np.intp)
        radec = np.array([numbers for _, numbers in members], dtype=float)
        polygons.setdefault(size, []).append((keys, radec))
    return polygons


@dataclass
class _Caps:
    """Bounding caps of the usable shapes, numbered in the order they are added.

    ``final[key]`` is a key's number (-1: unusable; ``final[-1]`` is for rows without
    text); ``kind`` and ``slot`` say where its exact shape is kept.
    """

    final: np.ndarray
    centres: list[np.ndarray] = field(default_factory=list)
    reaches: list[np.ndarray] = field(default_factory=list)
    kinds: list[np.ndarray] = field(default_factory=list)
    slots: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def add(self, keys: np.ndarray, centre: np.ndarray, reach: np.ndarray, kind: int) -> None:
        self.final[keys] = np.arange(self.count, self.count + len(keys))
        self.centres.append(centre.reshape(len(keys), 3))
        self.reaches.append(reach)
        self.kinds.append(np.full(len(keys), kind, dtype=np.intp))
        self.slots.append(np.arange(len(keys)))
        self.count += len(keys)

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(centre, reach, kind, slot)`` over every shape added (empty arrays for none)."""
        if not self.count:
            empty = np.zeros(0, dtype=np.intp)
            return np.zeros((0, 3)), np.zeros(0), empty, empty.copy()
        return (
            np.concatenate(self.centres),
            np.concatenate(self.reaches),
            np.concatenate(self.kinds),
            np.concatenate(self.slots),
        )


def _circle_caps(
    circles: list[tuple[int, list[float]]], caps: _Caps
) -> tuple[np.ndarray, np.ndarray]:
    """``(centres, radii)`` of the circles (unit vectors, radians); each is its own cap."""
    circle_radec = np.array([numbers for _, numbers in circles], dtype=float).reshape(-1, 3)
    circle_xyz = _unit(circle_radec[:, 0], circle_radec[:, 1]).reshape(-1, 3)
    circle_radius = np.radians(circle_radec[:, 2])
    caps.add(np.array([key for key, _ in circles], dtype=np.intp), circle_xyz, circle_radius, 0)
    return circle_xyz, circle_radius


def _polygon_caps(
    polygons: dict[int, list[tuple[np.ndarray, np.ndarray]]],
    caps: _Caps,
    distinct: list[str],
    shapes: _Shapes,
) -> list[_PolygonGroup]:
    """One group per vertex count (smallest first) of the polygons that are usable; each
    unusable one gives its text a reason (no area, not within a hemisphere, ...)."""
    groups: list[_PolygonGroup] = []
    for size in sorted(polygons):
        keys = np.concatenate([keys for keys, _ in polygons[size]])
        radec = np.concatenate([radec for _, radec in polygons[size]])
        group, reach, problem = _prepare_polygons(_unit(radec[:, 0::2], radec[:, 1::2]))
        for key, code in zip(
            keys[problem > 0].tolist(), problem[problem > 0].tolist(), strict=True
        ):
            text = distinct[shapes.owner[key]]
            shapes.reasons[text] = str(_bad(f"polygon {_POLYGON_PROBLEMS[code]}", text))
        good = problem == 0
        if not good.any():
            continue
        group = _PolygonGroup(**{f.name: getattr(group, f.name)[good] for f in fields(group)})
        caps.add(keys[good], group.centre, reach[good], 1 + len(groups))
        groups.append(group)
    return groups


def _pack(texts: list[str | None]) -> SRegions:
    """Pack distinct texts: plain polygons in bulk, other shapes one by one, and each
    operator region as a signature plus its leaves (packed as shapes of their own)."""
    distinct, row_key = _distinct(texts)
    shapes = _Shapes(owner=list(range(len(distinct))))
    plain, rest = _plain_polygons(distinct)
    _read_one_by_one(distinct, rest, shapes)
    polygons = _polygon_batches(plain, shapes.polygons)

    caps = _Caps(final=np.full(len(shapes.owner) + 1, -1, dtype=np.intp))
    circle_xyz, circle_radius = _circle_caps(shapes.circles, caps)
    groups = _polygon_caps(polygons, caps, distinct, shapes)
    compound_of, compounds = _pack_compounds(shapes.compounds, caps.final, len(distinct), row_key)
    centre, reach, kind, slot = caps.stacked()
    return SRegions(
        region_of=caps.final[row_key],
        centre=centre,
        reach=reach,
        kind=kind,
        slot=slot,
        circles=circle_xyz,
        circle_radius=circle_radius,
        groups=tuple(groups),
        reasons=shapes.reasons,
        compound_of=compound_of,
        compounds=compounds,
    )


def _leaf_numbers(leaf: Point | Circle | Polygon) -> tuple[str, list[float]]:
    if isinstance(leaf, Polygon):
        return "POLYGON", [x for vertex in leaf.vertices for x in vertex]
    if isinstance(leaf, Circle):
        return "CIRCLE", [leaf.ra, leaf.dec, leaf.radius]
    return "POINT", [leaf.ra, leaf.dec]


def _signature(region: Region, leaves: list[Point | Circle | Polygon]) -> _Signature:
    """The region's shape with each leaf replaced by its slot (appending it to ``leaves``)."""
    if isinstance(region, Union | Intersection):
        operator = "or" if isinstance(region, Union) else "and"
        return operator, tuple(_signature(m, leaves) for m in region.members)
    if isinstance(region, Not):
        return "not", (_signature(region.member, leaves),)
    leaves.append(region)
    return len(leaves) - 1


def _pack_compounds(
    compound_keys: list[tuple[int, _Signature, list[int]]],
    final: np.ndarray,
    n_distinct: int,
    row_key: np.ndarray,
) -> tuple[np.ndarray | None, _Compounds]:
    """Rows' compound index and the compounds grouped by signature."""
    if not compound_keys:
        return None, _Compounds()
    by_signature: dict[_Signature, list[list[int]]] = {}
    number: dict[_Signature, int] = {}
    signature_of, index_in = [], []
    key_compound = np.full(n_distinct + 1, -1, dtype=np.intp)  # [-1]: rows without text
    for c, (key, signature, leaf_keys) in enumerate(compound_keys):
        members = by_signature.setdefault(signature, [])
        signature_of.append(number.setdefault(signature, len(number)))
        index_in.append(len(members))
        members.append([int(final[k]) if k >= 0 else -1 for k in leaf_keys])
        key_compound[key] = c
    return key_compound[row_key], _Compounds(
        signatures=tuple(by_signature),
        signature_of=np.asarray(signature_of, dtype=np.intp),
        index_in=np.asarray(index_in, dtype=np.intp),
        leaves=tuple(
            np.asarray(m, dtype=np.intp).reshape(len(m), -1) for m in by_signature.values()
        ),
    )


def _plain_polygons(texts: list[str]) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """The common case in bulk: ``POLYGON [frame] numbers`` with nothing to drop or fix.

    Values sharing a layout (token count, keyword, frame) are converted in one go and checked
    with numpy; any that is not plainly a usable polygon of distinct vertices - another
    shape or keyword, a bad number, a repeated or closing vertex - is left (its index in
    ``rest``) to :func:`parse_region`'s reader, which stays the rule. Returns
    ``[(indices, (k, 2m) ra/dec)]`` with RA normalised, and ``rest``.
    """
    tokens = [text.split() for text in texts]
    layouts: dict[tuple[int, str, str], list[int]] = {}
    rest: list[int] = []
    for key, words in enumerate(tokens):
        if len(words) < 7:
            rest.append(key)
            continue
        second = words[1] if words[1][:1].isalpha() else ""  # a frame word or a number
        layouts.setdefault((len(words), words[0], second), []).append(key)
    plain: list[tuple[np.ndarray, np.ndarray]] = []
    for (width, shape, second), keys in layouts.items():
        skip = 1 if not second else 2 if second.upper() in S_REGION_FRAMES else 0
        count = width - skip
        if shape.upper() != "POLYGON" or not skip or count % 2:
            rest.extend(keys)
            continue
        numbers = chain.from_iterable(tokens[key][skip:] for key in keys)
        try:  # Python's float, exactly as the reader converts
            radec = np.fromiter(map(float, numbers), float, len(keys) * count)
        except ValueError:
            rest.extend(keys)
            continue
        radec = radec.reshape(len(keys), count)
        ra, dec = radec[:, 0::2], radec[:, 1::2]
        with np.errstate(invalid="ignore"):
            ra[:] = np.mod(ra, 360.0)
            ra[ra == 360.0] = 0.0
            usable = np.isfinite(radec).all(axis=1) & (np.abs(dec) <= 90.0).all(axis=1)
        repeated = (dec == np.roll(dec, -1, axis=1)) & (
            (ra == np.roll(ra, -1, axis=1)) | (np.abs(dec) == 90.0)
        )
        usable &= ~repeated.any(axis=1)
        index = np.asarray(keys, dtype=np.intp)
        rest.extend(index[~usable].tolist())
        if usable.any():
            plain.append((index[usable], radec[usable]))
    return plain, rest


def _prepare_polygons(v: np.ndarray) -> tuple[_PolygonGroup, np.ndarray, np.ndarray]:
    """Wind polygons ``v`` (k, m, 3) counter-clockwise and precompute their edges.

    The winding comes from the signed area of the gnomonic image about the vertex mean
    (gnomonic maps great circles to lines, so that image is the polygon exactly); its sign
    says which side is the smaller region. Returns the group, each polygon's bounding-cap
    radius and a problem code per polygon (0 when usable, see ``_POLYGON_PROBLEMS``).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        total = v.sum(axis=1)
        centre = total / np.linalg.norm(total, axis=-1, keepdims=True)
        height = _dot(v, centre[:, None, :])  # (k, m) cosines from the centre
        in_hemisphere = np.isfinite(centre).all(axis=1) & (height > 1e-12).all(axis=1)
        nxt = np.roll(v, -1, axis=1)
        terms = _dot(_cross(v, nxt), centre[:, None, :]) / (height * np.roll(height, -1, 1))
    area = terms.sum(axis=1)
    flat = ~(np.abs(area) > _FLAT * np.abs(terms).sum(axis=1))
    clockwise = area < 0
    v = np.where(clockwise[:, None, None], v[:, ::-1, :], v)
    nxt = np.roll(v, -1, axis=1)
    normals = _cross(v, nxt)
    length = np.linalg.norm(normals, axis=-1)
    degenerate = ~(length > 0).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit_normals = normals / length[..., None]
    # convex when every vertex is on the inner side of every edge's great circle
    sides = np.einsum("kjx,kix->kij", v, normals)  # vertex j against edge i
    convex = (sides >= -1e-12 * length[:, :, None]).all(axis=(1, 2))
    reach = 2.0 * np.arcsin(np.minimum(np.sqrt(_chord2(v, centre[:, None, :]).max(axis=1)) / 2, 1))
    problem = np.where(~in_hemisphere, 1, np.where(flat, 2, np.where(degenerate, 3, 0))).astype(
        np.int8
    )
    group = _PolygonGroup(
        vertices=v,
        normals=normals,
        unit_normals=unit_normals,
        before_end=_cross(normals, v),
        before_start=_cross(nxt, normals),
        chord_dots=_dot(v, nxt),
        centre=centre,
        convex=convex,
    )
    return group, reach, problem


# -- tests ------------------------------------------------------------------------------


def point_in_regions(
    ra: npt.ArrayLike, dec: npt.ArrayLike, regions: SRegions | Iterable[object]
) -> tuple[np.ndarray, np.ndarray]:
    """``(hit, unknown)`` per row: is the point (deg) inside the row's region?

    ``ra``/``dec`` are one point for every row, or one per row. Boundaries count as
    inside. ``unknown`` rows (unusable ``s_region``, or an operator region that cannot
    decide this point) have ``hit`` False; callers that must not lose a match keep them.
    """
    return _test(ra, dec, None, regions)


def circle_meets_regions(
    ra: npt.ArrayLike,
    dec: npt.ArrayLike,
    radius: npt.ArrayLike,
    regions: SRegions | Iterable[object],
) -> tuple[np.ndarray, np.ndarray]:
    """``(hit, unknown)`` per row: does the circle (centre, radius in deg) overlap the region?

    Overlap means the centre is inside, or some point of the region's boundary is within
    ``radius`` (which also covers a circle swallowing the region); touching counts.
    """
    return _test(ra, dec, radius, regions)


def _test(
    ra: npt.ArrayLike,
    dec: npt.ArrayLike,
    radius: npt.ArrayLike | None,
    regions: SRegions | Iterable[object],
) -> tuple[np.ndarray, np.ndarray]:
    packed = regions if isinstance(regions, SRegions) else pack_regions(regions)
    n = len(packed)
    ra, dec = np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)
    r = np.radians(np.asarray(0.0 if radius is None else radius, dtype=float))
    if np.any(~(r >= 0)):
        raise ValueError("radius must be a non-negative number of degrees")
    hit = np.zeros(n, dtype=bool)
    unknown = packed.unknown.copy()
    simple = packed.region_of >= 0
    compound = np.zeros(n, dtype=bool) if packed.compound_of is None else packed.compound_of >= 0
    circle = radius is not None
    if ra.ndim == 0 and dec.ndim == 0 and r.ndim == 0:
        # one target for all rows: decide each distinct region once, then spread to rows
        target = _unit(ra, dec)
        ids = packed.within_dec(float(_latitude(target)), float(r))
        verdict = np.zeros(len(packed.kind), dtype=bool)
        verdict[ids] = _hits(packed, target[None, :], r[None], ids, circle)
        hit[simple] = verdict[packed.region_of[simple]]
        if compound.any():
            assert packed.compound_of is not None
            verdicts = {circle: verdict}  # the leaves are distinct shapes too

            def known(_: np.ndarray, shapes: np.ndarray, as_circle: bool) -> np.ndarray:
                if as_circle not in verdicts:  # the centre alone (a circle in Not, And)
                    near = packed.within_dec(float(_latitude(target)), 0.0)
                    verdicts[as_circle] = np.zeros(len(packed.kind), dtype=bool)
                    verdicts[as_circle][near] = _hits(
                        packed, target[None, :], np.zeros(1), near, as_circle
                    )
                return verdicts[as_circle][shapes]

            every = np.arange(len(packed.compounds.signature_of))  # each distinct once
            yes, maybe = _compound_verdicts(packed, every, known, circle)
            of = packed.compound_of[compound]
            hit[compound], unknown[compound] = yes[of], maybe[of]
        return hit, unknown
    ra, dec, r = (np.broadcast_to(a, (n,)) for a in (ra, dec, r))
    rows = np.flatnonzero(simple)
    target = _unit(ra[rows], dec[rows])
    hit[rows] = _hits(packed, target, r[rows], packed.region_of[rows], circle)
    if compound.any():
        assert packed.compound_of is not None
        rows = np.flatnonzero(compound)
        targets, radii = _unit(ra[rows], dec[rows]), r[rows]

        def tested(which: np.ndarray, shapes: np.ndarray, as_circle: bool) -> np.ndarray:
            reach = radii[which] if as_circle else np.zeros(len(which))
            return _hits(packed, targets[which], reach, shapes, as_circle)

        hit[rows], unknown[rows] = _compound_verdicts(
            packed, packed.compound_of[rows], tested, circle
        )
    return hit, unknown


def _hits(
    packed: SRegions, target: np.ndarray, r: np.ndarray, ids: np.ndarray, circle: bool
) -> np.ndarray:
    """Exact verdicts for targets (P or 1, 3) with radii (P or 1,) against shapes ``ids``."""
    out = np.zeros(len(ids), dtype=bool)
    if not len(ids):
        return out
    target = np.broadcast_to(target, (len(ids), 3))
    r = np.broadcast_to(r, (len(ids),))
    reach = np.minimum(packed.reach[ids] + r + _CAP_SLACK, np.pi)
    near = _chord2(target, packed.centre[ids]) <= _chord(reach) ** 2
    candidates = np.flatnonzero(near)
    kinds = packed.kind[ids[candidates]]
    for kind in np.unique(kinds).tolist():
        chosen = candidates[kinds == kind]
        slots = packed.slot[ids[chosen]]
        t, radius = target[chosen], r[chosen]
        if kind == 0:
            reach = packed.circle_radius[slots] + (radius if circle else 0.0)
            out[chosen] = _chord2(t, packed.circles[slots]) <= _chord(reach) ** 2
        else:
            group = packed.groups[kind - 1]
            step = max(1, _PAIR_BUDGET // group.vertices.shape[1])
            for lo in range(0, len(chosen), step):
                part = slice(lo, lo + step)
                out[chosen[part]] = _in_polygons(group, slots[part], t[part], radius[part], circle)
    return out


_Verdict: TypeAlias = tuple[np.ndarray, np.ndarray]  # (yes, unknown); neither: no


# (which of the compounds, their leaves' shape ids, as a circle?) -> the leaves' hits
_ShapeHits: TypeAlias = Callable[[np.ndarray, np.ndarray, bool], np.ndarray]


def _compound_verdicts(
    packed: SRegions, ids: np.ndarray, shape_hits: _ShapeHits, circle: bool
) -> _Verdict:
    """``(hit, unknown)`` of the target(s) against compound regions ``ids``, given how
    the target(s) meet single shapes (``shape_hits``).

    Three-valued logic over each compound's signature: for a point, a union is in if any
    member is, an intersection if all are, a ``Not`` if its member is not - all exact
    (boundaries aside). For a circle, a union meets if any member meets; an intersection
    is out if any member is out, met if the centre is in every member, else unknown; a
    ``Not`` is met if the centre is outside its member, else unknown (the circle may lie
    wholly inside the hole). Unknown is kept by callers: the WCS decides.
    """
    comp = packed.compounds
    n = len(ids)
    yes, maybe = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    signature_of = comp.signature_of[ids]
    for s in range(len(comp.signatures)):
        # one signature (every row a union of two polygons, say) needs no search
        chosen = np.arange(n) if len(comp.signatures) == 1 else np.flatnonzero(signature_of == s)
        if not len(chosen):
            continue
        leaves = comp.leaves[s][comp.index_in[ids[chosen]]]  # (k, slots)
        cache: dict[tuple[int, bool], _Verdict] = {}

        def leaf(slot: int, as_circle: bool, chosen=chosen, leaves=leaves, cache=cache):
            if (slot, as_circle) not in cache:
                shapes = leaves[:, slot]
                usable = shapes >= 0
                hit = np.zeros(len(shapes), dtype=bool)
                hit[usable] = shape_hits(chosen[usable], shapes[usable], as_circle)
                cache[slot, as_circle] = hit, ~usable
            return cache[slot, as_circle]

        yes[chosen], maybe[chosen] = _evaluate(comp.signatures[s], leaf, circle)
    return yes, maybe


def _evaluate(node: _Signature, leaf: Callable[[int, bool], _Verdict], circle: bool) -> _Verdict:
    if isinstance(node, int):
        return leaf(node, circle)
    operator, operands = node
    if operator == "not":
        inside, unsure = _evaluate(operands[0], leaf, False)
        outside = ~inside & ~unsure
        return (outside, unsure) if not circle else (outside, ~outside)
    parts = [_evaluate(operand, leaf, circle) for operand in operands]
    hits = np.array([p[0] for p in parts])
    unsure = np.array([p[1] for p in parts])
    if operator == "or":
        yes = np.asarray(hits.any(axis=0))
        return yes, ~yes & unsure.any(axis=0)
    no = np.asarray((~hits & ~unsure).any(axis=0))
    if circle:  # met for sure only when the centre is in every member
        centre = np.array([_evaluate(operand, leaf, False)[0] for operand in operands])
        yes = np.asarray(centre.all(axis=0))
    else:
        yes = np.asarray(hits.all(axis=0))
    return yes, ~yes & ~no


def _in_polygons(
    group: _PolygonGroup, slots: np.ndarray, t: np.ndarray, radius: np.ndarray, circle: bool
) -> np.ndarray:
    """Point inside polygon, or (``circle``) circle overlapping polygon, pair by pair."""
    inside = np.zeros(len(slots), dtype=bool)
    convex = group.convex[slots]
    if convex.any():
        s = slots[convex]
        sides = _dot(group.normals[s], t[convex][:, None, :])
        inside[convex] = (sides >= 0).all(axis=1)
    if not convex.all():
        s, p = slots[~convex], t[~convex]
        inside[~convex] = _winding_inside(group, s, p)
    if not circle:
        return inside
    todo = np.flatnonzero(~inside)
    if len(todo):
        inside[todo] = _near_boundary(group, slots[todo], t[todo], radius[todo])
    return inside


def _winding_inside(group: _PolygonGroup, slots: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Point in a (non-convex) polygon by its winding number seen from the point.

    The angle each edge subtends at ``p`` is measured in ``p``'s tangent plane; they add
    up to +-2 pi when ``p`` and its antipode are on different sides of the boundary, to 0
    otherwise. The polygon lies in the hemisphere about its centre, so of ``p`` and ``-p``
    the one inside is the one on the centre's side.
    """
    v = group.vertices[slots]
    pv = _dot(v, p[:, None, :])  # (k, m)
    across = _dot(group.normals[slots], p[:, None, :])
    along = group.chord_dots[slots] - pv * np.roll(pv, -1, axis=1)
    turn = np.arctan2(across, along).sum(axis=1)
    return (np.abs(turn) > np.pi) & (_dot(p, group.centre[slots]) > 0)


def _near_boundary(
    group: _PolygonGroup, slots: np.ndarray, p: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Whether some edge arc of each polygon is within ``radius`` (radians) of ``p``.

    Within an arc's span the distance is the one to its great circle (its sine is
    ``|p . unit normal|``); outside the span it is the distance to the nearer end, and the
    ends are vertices, all of which are checked. Everything is compared as sines and
    chords, so no inverse trigonometry blurs arcsecond-scale answers.
    """
    q = p[:, None, :]
    height = np.abs(_dot(group.unit_normals[slots], q))
    spanned = (_dot(group.before_end[slots], q) >= 0) & (_dot(group.before_start[slots], q) >= 0)
    to_line = spanned & (height <= np.sin(np.minimum(radius, np.pi / 2))[:, None])
    to_vertex = _chord2(group.vertices[slots], q) <= (_chord(radius) ** 2)[:, None]
    return (to_line | to_vertex).any(axis=1)
