"""The client's own reading of ObsCore ``s_region`` values, and sky tests against them.

Archives write ``s_region`` as STC-S (``POLYGON ICRS ra dec ...``, ``CIRCLE ICRS ra dec r``).
The client uses it to decide which result rows can serve which target before any image
header is read, and to draw footprints. It is written apart from any archive's code on
purpose: were the archive under test and the client to share geometry, a bug in it would
agree with itself and never show.

Geometry is exact on the unit sphere: polygon edges are great-circle arcs and every test
is made on 3-D unit vectors, so RA wrap-around and the poles need no special case.
Polygons may be wound either way; a polygon is the smaller of the two regions its edges
bound and must lie in an open hemisphere (true of any instrument footprint). Values that
cannot be used are *unknown*, never "outside": the caller keeps those rows and lets the
image's WCS decide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from functools import cached_property
from itertools import chain

import numpy as np
import numpy.typing as npt

from obsharvest.errors import SRegionError

__all__ = [
    "S_REGION_FRAMES",
    "Circle",
    "Point",
    "Polygon",
    "SRegionError",
    "SRegions",
    "circle_meets_regions",
    "pack_regions",
    "parse_region",
    "parse_s_region",
    "point_in_regions",
]

# Frames whose coordinates are ICRS to well under an arcsecond. UNKNOWNFRAME is what
# DaCHS writes ("UNKNOWNFrame") for ICRS positions without a declared frame.
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
_SHAPES = {"POLYGON": "POLYGON", "CIRCLE": "CIRCLE", "POINT": "POINT", "POSITION": "POINT"}
_QUOTE_CHARS = 60  # how much of a bad s_region an error message quotes
_CAP_SLACK = 1e-9  # radians added to bounding caps: they only pre-select, never decide
_SAME_POINT = 1e-12  # radians: a point target "in" a POINT region
_FLAT = 1e-12  # relative signed area below which a polygon has no inside
_POLYGON_PROBLEMS = {
    1: "does not lie within a hemisphere",
    2: "has no area",
    3: "has a zero-length edge",
}
_PAIR_BUDGET = 2_000_000  # (pairs x vertices) evaluated at once, bounds temporary memory


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


Region = Point | Circle | Polygon


def _one_line(text: str, limit: int = _QUOTE_CHARS) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _bad(problem: str, text: str) -> SRegionError:
    """The error for an unusable value, quoting its start on one line (built only on failure:
    parsing 100k rows must not pay for messages)."""
    return SRegionError(f"s_region {problem}: {_one_line(text)!r}")


def parse_region(text: str) -> Region:
    """One STC-S ``s_region``: ``POLYGON|CIRCLE|POINT [frame] [refpos] [SPHERICAL2] numbers``.

    Keywords are case-insensitive; the frame is optional and must be ICRS-like (see
    :data:`S_REGION_FRAMES`) because nothing here transforms coordinates. ``POSITION`` is
    STC-S for a point. RA is normalised to [0, 360). A polygon's repeated consecutive
    vertices and its closing vertex are dropped (at a pole every RA is one point). Anything
    else - BOX, unions, several shapes, other frames, bad numbers - raises
    :class:`SRegionError` with a one-line message quoting the start of the value.
    """
    shape, values = _read(text)
    if shape == "POLYGON":
        return Polygon(tuple(zip(values[0::2], values[1::2], strict=True)))
    if shape == "CIRCLE":
        return Circle(*values)
    return Point(*values)


def _read(text: str) -> tuple[str, list[float]]:
    """``(shape, numbers)`` of one value: a polygon's numbers are its distinct vertices as
    ``ra0, dec0, ra1, ...``. Flat lists keep packing 100k rows cheap."""
    if not isinstance(text, str):
        raise SRegionError(f"s_region is not text: {type(text).__name__}")
    tokens = text.split()
    if not tokens:
        raise SRegionError("s_region is empty")
    shape = _SHAPES.get(tokens[0].upper())
    if shape is None:
        raise _bad(f"shape {_one_line(tokens[0], 20)!r} is not POLYGON, CIRCLE or POINT", text)
    values = _numbers(tokens, text)
    if shape == "POLYGON":
        return shape, _polygon(values, text)
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


def _ra(value: float) -> float:
    ra = value % 360.0
    return 0.0 if ra == 360.0 else ra  # -1e-17 % 360 rounds to 360


def _numbers(tokens: list[str], text: str) -> list[float]:
    """The coordinates after the shape and its optional frame, reference position, flavour."""
    at = 1
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
            and not _is_number(word)
        ):  # the frame's place: an unknown word here is read as a frame we cannot use
            frames = ", ".join(S_REGION_FRAMES)
            raise _bad(f"frame {_one_line(tokens[at], 20)!r} is not one of {frames}", text)
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
    """Vertices ``(ra, dec)`` in degrees of an ``s_region`` that is one POLYGON.

    Rubin writes ``POLYGON ICRS ra1 dec1 ra2 dec2 ...``. Read by :func:`parse_region`;
    a CIRCLE or POINT is an :class:`SRegionError` here, since callers want vertices
    to draw or pre-filter with (the padded polygon never decides containment).
    """
    region = parse_region(text)
    if not isinstance(region, Polygon):
        raise _bad("is not a single POLYGON", text)
    return list(region.vertices)


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
class SRegions:
    """Many rows' ``s_region`` values, parsed once per distinct string, for vectorised tests.

    ``region_of[row]`` indexes the distinct usable regions (-1: unknown, see ``reasons``).
    Each distinct region has a bounding cap (``centre``, ``reach`` in radians) that
    pre-selects the few regions a target can touch; only those get the exact test.
    """

    region_of: np.ndarray  # (n,) intp
    centre: np.ndarray  # (d, 3)
    reach: np.ndarray  # (d,) radians
    kind: np.ndarray  # (d,) 0 point, 1 circle, 2 + g polygon group g
    slot: np.ndarray  # (d,) index within its kind's arrays
    points: np.ndarray  # (p, 3)
    circles: np.ndarray  # (c, 3)
    circle_radius: np.ndarray  # (c,) radians
    groups: tuple[_PolygonGroup, ...]
    reasons: dict[str, str] = field(default_factory=dict)  # unusable text -> why

    def __len__(self) -> int:
        return len(self.region_of)

    @property
    def unknown(self) -> np.ndarray:
        """Rows whose ``s_region`` could not be used."""
        return self.region_of < 0

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


def _texts(values: Iterable[object]) -> list[str | None]:
    """Each value as text; masked/None and non-text values are None (unknown)."""
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    out: list[str | None] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, bytes):
            out.append(item.decode("utf-8", "replace"))
        else:
            out.append(None)
    return out


def pack_regions(values: Iterable[object]) -> SRegions:
    """Parse a column of ``s_region`` values (str, bytes, None/masked) for many tests.

    Each distinct string is parsed once. Unusable values - unparseable, a polygon with no
    area or not within a hemisphere - become unknown rows with their reason kept.
    """
    texts = _texts(values)
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

    reasons: dict[str, str] = {}
    points: list[tuple[int, list[float]]] = []
    circles: list[tuple[int, list[float]]] = []
    polygons: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # m -> [(keys, (k, 2m))]
    plain, rest = _plain_polygons(distinct)
    for keys, radec in plain:
        polygons.setdefault(radec.shape[1] // 2, []).append((keys, radec))
    others: dict[int, list[tuple[int, list[float]]]] = {}
    for key in rest:
        text = distinct[key]
        try:
            shape, numbers = _read(text)
        except SRegionError as exc:
            reasons[text] = str(exc)
            continue
        if shape == "POLYGON":
            others.setdefault(len(numbers) // 2, []).append((key, numbers))
        elif shape == "CIRCLE":
            circles.append((key, numbers))
        else:
            points.append((key, numbers))
    for size, members in others.items():
        keys = np.array([key for key, _ in members], dtype=np.intp)
        radec = np.array([numbers for _, numbers in members], dtype=float)
        polygons.setdefault(size, []).append((keys, radec))

    final = np.full(len(distinct) + 1, -1, dtype=np.intp)  # final[-1]: rows without text
    centres: list[np.ndarray] = []
    reaches: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    count = 0

    def add(keys: np.ndarray, centre: np.ndarray, reach: np.ndarray, kind: int) -> None:
        nonlocal count
        final[keys] = np.arange(count, count + len(keys))
        centres.append(centre.reshape(len(keys), 3))
        reaches.append(reach)
        kinds.append(np.full(len(keys), kind, dtype=np.intp))
        slots.append(np.arange(len(keys)))
        count += len(keys)

    point_radec = np.array([numbers for _, numbers in points], dtype=float).reshape(-1, 2)
    point_xyz = _unit(point_radec[:, 0], point_radec[:, 1]).reshape(-1, 3)
    add(np.array([key for key, _ in points], dtype=np.intp), point_xyz, np.zeros(len(points)), 0)
    circle_radec = np.array([numbers for _, numbers in circles], dtype=float).reshape(-1, 3)
    circle_xyz = _unit(circle_radec[:, 0], circle_radec[:, 1]).reshape(-1, 3)
    circle_radius = np.radians(circle_radec[:, 2])
    add(np.array([key for key, _ in circles], dtype=np.intp), circle_xyz, circle_radius, 1)

    groups: list[_PolygonGroup] = []
    for size in sorted(polygons):
        keys = np.concatenate([keys for keys, _ in polygons[size]])
        radec = np.concatenate([radec for _, radec in polygons[size]])
        group, reach, problem = _prepare_polygons(_unit(radec[:, 0::2], radec[:, 1::2]))
        for key, code in zip(
            keys[problem > 0].tolist(), problem[problem > 0].tolist(), strict=True
        ):
            reasons[distinct[key]] = str(_bad(f"polygon {_POLYGON_PROBLEMS[code]}", distinct[key]))
        good = problem == 0
        if not good.any():
            continue
        group = _PolygonGroup(**{f.name: getattr(group, f.name)[good] for f in fields(group)})
        add(keys[good], group.centre, reach[good], 2 + len(groups))
        groups.append(group)

    return SRegions(
        region_of=final[row_key],
        centre=np.concatenate(centres) if count else np.zeros((0, 3)),
        reach=np.concatenate(reaches) if count else np.zeros(0),
        kind=np.concatenate(kinds) if count else np.zeros(0, dtype=np.intp),
        slot=np.concatenate(slots) if count else np.zeros(0, dtype=np.intp),
        points=point_xyz,
        circles=circle_xyz,
        circle_radius=circle_radius,
        groups=tuple(groups),
        reasons=reasons,
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
    inside. ``unknown`` rows (unusable ``s_region``) have ``hit`` False; callers that
    must not lose a match keep them.
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
    unknown = packed.region_of < 0
    if ra.ndim == 0 and dec.ndim == 0 and r.ndim == 0:
        # one target for all rows: decide each distinct region once, then spread to rows
        target = _unit(ra, dec)
        ids = packed.within_dec(float(_latitude(target)), float(r))
        verdict = np.zeros(len(packed.kind), dtype=bool)
        verdict[ids] = _hits(packed, target[None, :], r[None], ids, radius is not None)
        hit[~unknown] = verdict[packed.region_of[~unknown]]
        return hit, unknown
    ra, dec, r = (np.broadcast_to(a, (n,)) for a in (ra, dec, r))
    rows = np.flatnonzero(~unknown)
    target = _unit(ra[rows], dec[rows])
    hit[rows] = _hits(packed, target, r[rows], packed.region_of[rows], radius is not None)
    return hit, unknown


def _hits(
    packed: SRegions, target: np.ndarray, r: np.ndarray, ids: np.ndarray, circle: bool
) -> np.ndarray:
    """Exact verdicts for targets (P or 1, 3) with radii (P or 1,) against regions ``ids``."""
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
            limit = _chord(radius) if circle else _SAME_POINT
            out[chosen] = _chord2(t, packed.points[slots]) <= limit**2
        elif kind == 1:
            reach = packed.circle_radius[slots] + (radius if circle else 0.0)
            out[chosen] = _chord2(t, packed.circles[slots]) <= _chord(reach) ** 2
        else:
            group = packed.groups[kind - 2]
            step = max(1, _PAIR_BUDGET // group.vertices.shape[1])
            for lo in range(0, len(chosen), step):
                part = slice(lo, lo + step)
                out[chosen[part]] = _in_polygons(group, slots[part], t[part], radius[part], circle)
    return out


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
