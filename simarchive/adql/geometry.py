"""Spherical geometry for the embedded archive's ADQL engine, vectorized with numpy.

Everything is computed on 3-D unit vectors rather than on (RA, Dec) numbers: that
way RA wrap-around at 0/360 deg and the poles need no special cases, and polygon
edges are exact great-circle arcs (the STC/ADQL convention) instead of
straight lines in RA/Dec.

Two layers:

* scalar region objects (:class:`Point`, :class:`Circle`, :class:`Polygon`) and
  :func:`parse_region` for STC-S-like strings such as Rubin's ``s_region``;
* :class:`RegionArray`, many regions of mixed kinds in padded numpy arrays, and the
  vectorized predicates :func:`contains` / :func:`intersects` used per query.

Polygons may be wound either way: a polygon is the *smaller* of the two regions
its edges bound, i.e. the one containing the normalized mean of its vertices.
Polygons must fit within a hemisphere around that centre (true for any
instrument footprint).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

NULL, POINT, CIRCLE, POLYGON = 0, 1, 2, 3
"""Kind codes stored in :attr:`RegionArray.kind` (``NULL`` = missing/unparseable)."""

_FRAMES = {"ICRS", "FK5", "J2000", "UNKNOWNFRAME"}
_FRAME_QUALIFIERS = {
    "BARYCENTER",
    "GEOCENTER",
    "TOPOCENTER",
    "HELIOCENTER",
    "UNKNOWNREFPOS",
    "SPHERICAL2",
    "CARTESIAN2",
}
_EPS = 1e-12  # radians; slack for bounding-cap pre-filters only


# ---------------------------------------------------------------------------
# scalar regions and parsing


@dataclass(frozen=True)
class Point:
    ra: float
    dec: float


@dataclass(frozen=True)
class Circle:
    ra: float
    dec: float
    radius: float  # degrees


@dataclass(frozen=True)
class Polygon:
    vertices: tuple[tuple[float, float], ...]  # (ra, dec) degrees


Region = Point | Circle | Polygon


def parse_region(text: str) -> Region:
    """Parse ``POLYGON [frame] ra dec ...``, ``CIRCLE [frame] ra dec r`` or ``POINT [frame] ra dec``.

    Raises ValueError with a message naming the problem; frames other than ICRS-like
    ones (ICRS, FK5, J2000, UNKNOWNFrame) are rejected because no transformation
    is done here.
    """
    if not isinstance(text, str):
        raise ValueError(f"region must be a string, got {type(text).__name__}")
    tokens = text.replace(",", " ").replace("(", " ").replace(")", " ").split()
    if not tokens:
        raise ValueError("empty region string")
    shape = tokens[0].upper()
    if shape not in {"POLYGON", "CIRCLE", "POINT"}:
        raise ValueError(f"unknown region shape {tokens[0]!r} (expected POLYGON, CIRCLE or POINT)")
    rest = tokens[1:]
    while rest and not _is_number(rest[0]):
        word = rest[0].upper()
        if word not in _FRAMES and word not in _FRAME_QUALIFIERS:
            raise ValueError(f"unsupported frame or token {rest[0]!r} in region {text!r}")
        rest = rest[1:]
    try:
        nums = [float(t) for t in rest]
    except ValueError:
        raise ValueError(f"non-numeric coordinate in region {text!r}") from None
    if not all(map(math.isfinite, nums)):
        raise ValueError(f"non-finite coordinate in region {text!r}")
    if shape == "POINT":
        if len(nums) != 2:
            raise ValueError(f"POINT needs 2 numbers, got {len(nums)}")
        _check_dec(nums[1])
        return Point(nums[0] % 360.0, nums[1])
    if shape == "CIRCLE":
        if len(nums) != 3:
            raise ValueError(f"CIRCLE needs 3 numbers, got {len(nums)}")
        _check_dec(nums[1])
        if not 0.0 <= nums[2] <= 180.0:
            raise ValueError(f"CIRCLE radius {nums[2]} outside [0, 180] degrees")
        return Circle(nums[0] % 360.0, nums[1], nums[2])
    if len(nums) % 2 or len(nums) < 6:
        raise ValueError(f"POLYGON needs an even number (>= 6) of coordinates, got {len(nums)}")
    return make_polygon(nums[0::2], nums[1::2])


def make_polygon(ras: Sequence[float], decs: Sequence[float]) -> Polygon:
    """Build a Polygon, dropping repeated consecutive vertices and an explicit closing vertex."""
    verts: list[tuple[float, float]] = []
    for ra, dec in zip(ras, decs, strict=True):
        _check_dec(dec)
        v = (float(ra) % 360.0, float(dec))
        if not verts or not _same_position(v, verts[-1]):
            verts.append(v)
    if len(verts) > 1 and _same_position(verts[0], verts[-1]):
        verts.pop()
    if len(verts) < 3:
        raise ValueError("POLYGON needs at least 3 distinct vertices")
    return Polygon(tuple(verts))


def format_region(region: Region) -> str:
    """STC-S-like text of a region (inverse of :func:`parse_region`)."""
    if isinstance(region, Point):
        return f"POINT ICRS {region.ra:.9g} {region.dec:.9g}"
    if isinstance(region, Circle):
        return f"CIRCLE ICRS {region.ra:.9g} {region.dec:.9g} {region.radius:.9g}"
    coords = " ".join(f"{ra:.9g} {dec:.9g}" for ra, dec in region.vertices)
    return f"POLYGON ICRS {coords}"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _check_dec(dec: float) -> None:
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"declination {dec} outside [-90, 90]")


def _same_position(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Equal positions, treating all RAs at a pole as one point (plain floats: this is hot)."""
    return a[1] == b[1] and (a[0] == b[0] or abs(a[1]) == 90.0)


# ---------------------------------------------------------------------------
# vector helpers


def radec_to_xyz(ra: np.ndarray | float, dec: np.ndarray | float) -> np.ndarray:
    """Unit vectors (..., 3) for RA/Dec in degrees."""
    ra_r = np.radians(np.asarray(ra, dtype=float))
    dec_r = np.radians(np.asarray(dec, dtype=float))
    cd = np.cos(dec_r)
    return np.stack([cd * np.cos(ra_r), cd * np.sin(ra_r), np.sin(dec_r)], axis=-1)


def xyz_to_radec(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA in [0, 360) and Dec in degrees of (..., 3) vectors (need not be normalized)."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    dec = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return ra, dec


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in radians between (..., 3) vectors; atan2 form is accurate at 0 and pi."""
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.arctan2(cross, np.einsum("...i,...i->...", a, b))


def _normalize(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / norm


def angular_separation(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance in degrees; broadcasts like numpy."""
    return np.degrees(_angle(radec_to_xyz(ra1, dec1), radec_to_xyz(ra2, dec2)))


# ---------------------------------------------------------------------------
# many regions at once


@dataclass(frozen=True)
class RegionArray:
    """Regions of mixed kinds as padded arrays so predicates vectorize over rows.

    ``center``/``radius`` describe a bounding cap (exact for points and circles,
    the vertex centroid and max vertex distance for polygons); predicates use it
    as a cheap pre-filter so only nearby regions get the exact, costlier test.
    Polygon vertex lists are padded to a common length by repeating the last
    vertex: the resulting zero-length edges cross nothing and bound nothing.
    """

    kind: np.ndarray  # (n,) int8, see NULL/POINT/CIRCLE/POLYGON
    center: np.ndarray  # (n, 3)
    radius: np.ndarray  # (n,) radians
    vertices: np.ndarray  # (n, m, 3); m == 0 when there are no polygons

    def __len__(self) -> int:
        return len(self.kind)

    @cached_property
    def dec_index(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(order, sorted centre Dec in radians, max cap radius) for band searches.

        Built lazily once per array; cached arrays (e.g. a table's ``s_region``)
        then answer "which caps could reach this point" with a binary search
        instead of a full scan, which is what makes per-row joins cheap.
        """
        dec = np.arcsin(np.clip(self.center[:, 2], -1.0, 1.0))
        dec = np.where(self.kind == NULL, np.inf, dec)
        order = np.argsort(dec, kind="stable")
        radius = float(self.radius[self.kind != NULL].max()) if (self.kind != NULL).any() else 0.0
        return order, dec[order], radius

    def take(self, index: np.ndarray | slice) -> RegionArray:
        return RegionArray(
            self.kind[index], self.center[index], self.radius[index], self.vertices[index]
        )

    def polygon_radec(self, i: int) -> list[tuple[float, float]]:
        """Distinct vertices of row ``i`` as (ra, dec) pairs."""
        ra, dec = xyz_to_radec(self.vertices[i])
        out: list[tuple[float, float]] = []
        for pair in zip(ra.tolist(), dec.tolist(), strict=True):
            if not out or pair != out[-1]:
                out.append(pair)
        return out


def regions_from(regions: Sequence[Region | None]) -> RegionArray:
    """Pack scalar regions (None = NULL) into a RegionArray."""
    n = len(regions)
    m = max((len(r.vertices) for r in regions if isinstance(r, Polygon)), default=0)
    kind = np.zeros(n, dtype=np.int8)
    ra0 = np.zeros(n)
    dec0 = np.zeros(n)
    radius = np.zeros(n)
    radec = np.zeros((n, m, 2))
    for i, r in enumerate(regions):
        if isinstance(r, Polygon):
            kind[i] = POLYGON
            k = len(r.vertices)
            radec[i, :k] = r.vertices
            radec[i, k:] = r.vertices[-1]
        elif r is not None:
            kind[i] = POINT if isinstance(r, Point) else CIRCLE
            ra0[i], dec0[i] = r.ra, r.dec
            radius[i] = np.radians(r.radius) if isinstance(r, Circle) else 0.0
    center = radec_to_xyz(ra0, dec0).reshape(n, 3)
    vertices = radec_to_xyz(radec[..., 0], radec[..., 1]).reshape(n, m, 3)
    poly = kind == POLYGON
    if poly.any():
        counts = np.array([len(r.vertices) for r in regions if isinstance(r, Polygon)])
        pv = vertices[poly]
        # mean of the distinct vertices: subtract the padding copies of the last one
        total = pv.sum(axis=1) - pv[:, -1, :] * (m - counts)[:, None]
        center[poly] = _normalize(total)
        radius[poly] = _angle(pv, center[poly][:, None, :]).max(axis=1)
    # non-polygons get their centre as every "vertex" so concatenated arrays stay valid
    vertices[~poly] = center[~poly][:, None, :]
    return RegionArray(kind, center, radius, vertices)


def parse_regions(strings: Iterable[str | None]) -> RegionArray:
    """Parse many region strings; NULL (None, masked) and malformed entries give kind NULL.

    Malformed rows become NULL rather than failing: one bad footprint in a
    100k-row table must not make every spatial query on it fail. Columns where all
    rows are polygons with the same token layout (the ObsCore norm) are parsed in
    one numpy conversion, several times faster than the per-row parser.
    """
    strings = list(strings)
    fast = _parse_uniform_polygons(strings)
    if fast is not None:
        return fast
    parsed: list[Region | None] = []
    for s in strings:
        try:
            parsed.append(parse_region(s) if isinstance(s, str) else None)
        except ValueError:
            parsed.append(None)
    return regions_from(parsed)


def _parse_uniform_polygons(strings: list) -> RegionArray | None:
    if not strings or not all(isinstance(s, str) for s in strings):
        return None
    tokens = [s.split() for s in strings]
    head = tokens[0]
    if not head or head[0].upper() != "POLYGON":
        return None
    skip = 2 if len(head) > 1 and head[1].upper() in _FRAMES else 1
    width = len(head)
    ncoord = width - skip
    if ncoord < 6 or ncoord % 2:
        return None
    if any(len(t) != width or t[:skip] != head[:skip] for t in tokens):
        return None
    try:
        coords = np.array([t[skip:] for t in tokens], dtype=float)
    except ValueError:
        return None
    ra, dec = coords[:, 0::2], coords[:, 1::2]
    if not (np.isfinite(coords).all() and (np.abs(dec) <= 90).all()):
        return None
    vertices = radec_to_xyz(ra, dec)
    if not (vertices != np.roll(vertices, -1, axis=1)).any(axis=2).all():
        # repeated or closing vertices somewhere: leave them to the careful parser
        return None
    n = len(strings)
    center = _normalize(vertices.sum(axis=1))
    radius = _angle(vertices, center[:, None, :]).max(axis=1)
    return RegionArray(np.full(n, POLYGON, dtype=np.int8), center, radius, vertices)


def points(ra: np.ndarray, dec: np.ndarray) -> RegionArray:
    """RegionArray of points from RA/Dec arrays in degrees (vectorized, no Python loop)."""
    ra, dec = np.broadcast_arrays(
        np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    )
    xyz = radec_to_xyz(ra, dec)
    kind = np.where(np.isfinite(xyz).all(axis=1), POINT, NULL).astype(np.int8)
    return RegionArray(kind, xyz, np.zeros(len(ra)), np.zeros((len(ra), 0, 3)))


def circles(ra: np.ndarray, dec: np.ndarray, radius: np.ndarray) -> RegionArray:
    """RegionArray of circles; radius in degrees."""
    ra, dec, radius = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, float)) for a in (ra, dec, radius))
    )
    xyz = radec_to_xyz(ra, dec)
    ok = np.isfinite(xyz).all(axis=1) & np.isfinite(radius) & (radius >= 0)
    kind = np.where(ok, CIRCLE, NULL).astype(np.int8)
    return RegionArray(kind, xyz, np.radians(radius), np.zeros((len(ra), 0, 3)))


def concat(parts: Sequence[RegionArray]) -> RegionArray:
    """Stack RegionArrays row-wise (re-padding polygon vertices)."""
    m = max(p.vertices.shape[1] for p in parts)
    verts = []
    for p in parts:
        v = p.vertices
        if v.shape[1] < m:
            if v.shape[1] == 0:
                pad = np.repeat(p.center[:, None, :], m, axis=1)
                v = pad
            else:
                v = np.concatenate([v, np.repeat(v[:, -1:, :], m - v.shape[1], axis=1)], axis=1)
        verts.append(v)
    return RegionArray(
        np.concatenate([p.kind for p in parts]),
        np.concatenate([p.center for p in parts]),
        np.concatenate([p.radius for p in parts]),
        np.concatenate(verts) if m else np.zeros((sum(map(len, parts)), 0, 3)),
    )


# ---------------------------------------------------------------------------
# exact predicates on compact arrays (k rows, already pre-filtered)


def _tangent_basis(center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal (east, north)-like vectors in the tangent plane at each centre."""
    axis = np.zeros_like(center)
    axis[..., 2] = 1.0
    near_pole = np.abs(center[..., 2]) > 0.9
    axis[near_pole] = (1.0, 0.0, 0.0)
    e1 = _normalize(np.cross(axis, center))
    e2 = np.cross(center, e1)
    return e1, e2


def _gnomonic(v: np.ndarray, center: np.ndarray, e1: np.ndarray, e2: np.ndarray):
    """Gnomonic projection of (..., 3) vectors onto the tangent plane at ``center``.

    Gnomonic is the one projection that maps great circles to straight lines, so a
    2-D point-in-polygon test on projected coordinates is exact for polygons with
    great-circle edges. Points more than 90 deg from the centre get ``w <= 0``.
    """
    w = np.einsum("...i,...i->...", v, center)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.einsum("...i,...i->...", v, e1) / w
        y = np.einsum("...i,...i->...", v, e2) / w
    return x, y, w


def points_in_polygons(p: np.ndarray, vertices: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Whether each point ``p[k]`` (k, 3) lies inside polygon ``vertices[k]`` (k, m, 3).

    Crossing-number test in the gnomonic plane of the polygon centre; independent
    of winding, and correct for non-convex polygons within a hemisphere.
    """
    e1, e2 = _tangent_basis(center)
    px, py, pw = _gnomonic(p, center, e1, e2)
    vx, vy, _ = _gnomonic(vertices, center[:, None, :], e1[:, None, :], e2[:, None, :])
    xj, yj = np.roll(vx, -1, axis=1), np.roll(vy, -1, axis=1)
    px, py = px[:, None], py[:, None]
    straddles = (vy > py) != (yj > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = vx + (py - vy) * (xj - vx) / (yj - vy)
    crossings = np.count_nonzero(straddles & (px < x_cross), axis=1)
    return (crossings % 2 == 1) & (pw > 0)


def _edges(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return vertices, np.roll(vertices, -1, axis=-2)


def point_arc_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angular distance (radians) from points to great-circle arcs a->b (broadcasting).

    If the foot of the perpendicular from p onto the arc's great circle lies between
    a and b it is the perpendicular distance, otherwise the nearer endpoint.
    """
    n = np.cross(a, b)
    n_norm = np.linalg.norm(n, axis=-1)
    end_dist = np.minimum(_angle(p, a), _angle(p, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        n_hat = n / n_norm[..., None]
    pn = np.einsum("...i,...i->...", p, n_hat)
    foot = p - pn[..., None] * n_hat
    within = (np.einsum("...i,...i->...", np.cross(a, foot), n_hat) >= 0) & (
        np.einsum("...i,...i->...", np.cross(foot, b), n_hat) >= 0
    )
    perp = np.arcsin(np.clip(np.abs(pn), 0.0, 1.0))
    return np.where(within & (n_norm > 0), np.minimum(perp, end_dist), end_dist)


def point_in_circle(p: np.ndarray, center: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Points (k, 3) within ``radius`` radians of centres (k, 3), boundary included."""
    return _angle(p, center) <= radius


def arcs_cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Whether minor great-circle arcs a-b and c-d properly cross (broadcasting).

    The four triangles ACB, BDA, CBD, DAC must all have the same non-zero
    orientation (the S2 library's crossing test); unlike a plane-side test alone,
    this rejects arcs whose great circles meet only on the far side of the sphere.
    """

    def orient(x, y, z):
        return np.sign(np.einsum("...i,...i->...", np.cross(x, y), z))

    acb, bda, cbd, dac = orient(a, c, b), orient(b, d, a), orient(c, b, d), orient(d, a, c)
    return (acb != 0) & (acb == bda) & (acb == cbd) & (acb == dac)


def circle_intersects_polygon(
    c: np.ndarray, r: np.ndarray, vertices: np.ndarray, center: np.ndarray
) -> np.ndarray:
    """Circles (k) overlapping polygons (k): centre inside, or some edge arc within r.

    The edge-distance test also covers a circle containing the whole polygon
    (every edge is then within r), and a circle just touching an edge from outside.
    """
    a, b = _edges(vertices)
    near_edge = (point_arc_distance(c[:, None, :], a, b) <= r[:, None]).any(axis=1)
    return near_edge | points_in_polygons(c, vertices, center)


def circle_in_polygon(
    c: np.ndarray, r: np.ndarray, vertices: np.ndarray, center: np.ndarray
) -> np.ndarray:
    """Circles entirely inside polygons: centre inside and every edge farther than r."""
    a, b = _edges(vertices)
    clear = (point_arc_distance(c[:, None, :], a, b) > r[:, None]).all(axis=1)
    return clear & points_in_polygons(c, vertices, center)


def polygon_in_circle(vertices: np.ndarray, c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Polygons inside circles: all vertices inside suffices because caps are convex."""
    return (_angle(vertices, c[:, None, :]) <= r[:, None]).all(axis=1)


def _any_edges_cross(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    a1, a2 = _edges(va)
    b1, b2 = _edges(vb)
    cross = arcs_cross(a1[:, :, None, :], a2[:, :, None, :], b1[:, None, :, :], b2[:, None, :, :])
    return cross.any(axis=(1, 2))


def _vertices_in(va: np.ndarray, vb: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """(k, m_a) flags: vertex j of polygon A inside polygon B, per row."""
    return np.stack([points_in_polygons(va[:, j], vb, cb) for j in range(va.shape[1])], axis=1)


def polygons_intersect(
    va: np.ndarray, ca: np.ndarray, vb: np.ndarray, cb: np.ndarray
) -> np.ndarray:
    """Exact polygon overlap: a vertex of one inside the other, or crossing edge arcs."""
    return (
        _vertices_in(va, vb, cb).any(axis=1)
        | _vertices_in(vb, va, ca).any(axis=1)
        | _any_edges_cross(va, vb)
    )


def polygon_in_polygon(va: np.ndarray, vb: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """Polygon A inside polygon B: all A's vertices in B and no edges crossing."""
    return _vertices_in(va, vb, cb).all(axis=1) & ~_any_edges_cross(va, vb)


# ---------------------------------------------------------------------------
# vectorized CONTAINS / INTERSECTS over RegionArrays


def _broadcast_pair(a: RegionArray, b: RegionArray) -> int:
    if len(a) != len(b) and len(a) != 1 and len(b) != 1:
        raise ValueError(f"cannot broadcast {len(a)} regions against {len(b)}")
    return max(len(a), len(b))


def _rows(arr: RegionArray, idx: np.ndarray) -> RegionArray:
    return arr.take(np.zeros(len(idx), dtype=np.intp) if len(arr) == 1 else idx)


def _cap_candidates(a: RegionArray, b: RegionArray, mode: str) -> np.ndarray:
    """Rows whose bounding caps allow the predicate: the cheap vectorized pre-filter.

    For one region against many, a Dec band search on the many (see
    :attr:`RegionArray.dec_index`) narrows the rows before the cap test.
    """
    n = max(len(a), len(b))
    rows = None
    if n > 256 and (len(a) == 1) != (len(b) == 1):
        one, many = (a, b) if len(a) == 1 else (b, a)
        order, sorted_dec, max_radius = many.dec_index
        dec = float(np.arcsin(np.clip(one.center[0, 2], -1.0, 1.0)))
        reach = float(one.radius[0]) + max_radius + 1e-6
        lo, hi = np.searchsorted(sorted_dec, [dec - reach, dec + reach + 1e-12])
        rows = order[lo:hi]
    ca = a.center if len(a) == 1 or rows is None else a.center[rows]
    cb = b.center if len(b) == 1 or rows is None else b.center[rows]
    ra_ = a.radius if len(a) == 1 or rows is None else a.radius[rows]
    rb_ = b.radius if len(b) == 1 or rows is None else b.radius[rows]
    dot = np.einsum("ij,ij->i", *np.broadcast_arrays(ca, cb))
    sep = np.arccos(np.clip(dot, -1.0, 1.0))
    slack = _EPS + 1e-7
    # a inside b needs a's cap centre within b's cap; overlap needs the caps to touch
    ok = sep <= rb_ + slack if mode == "contains" else sep <= ra_ + rb_ + slack
    if rows is None:
        return np.broadcast_to(ok, (n,))
    out = np.zeros(n, dtype=bool)
    out[rows[ok]] = True
    return out


def _evaluate(a: RegionArray, b: RegionArray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    n = _broadcast_pair(a, b)
    ka = np.broadcast_to(a.kind, n)
    kb = np.broadcast_to(b.kind, n)
    null = (ka == NULL) | (kb == NULL)
    result = np.zeros(n, dtype=bool)
    cand = np.flatnonzero(_cap_candidates(a, b, mode) & ~null)
    ka_c, kb_c = ka[cand], kb[cand]
    for kind_a in np.unique(ka_c).tolist():
        for kind_b in np.unique(kb_c).tolist():
            idx = cand[(ka_c == kind_a) & (kb_c == kind_b)]
            if len(idx):
                result[idx] = _pair(_rows(a, idx), _rows(b, idx), kind_a, kind_b, mode)
    return result, null


def contains(a: RegionArray, b: RegionArray) -> tuple[np.ndarray, np.ndarray]:
    """ADQL CONTAINS(a, b): is region a inside region b, row by row (broadcasting length 1).

    Returns ``(result, null)``; ``null`` flags rows where either region is NULL.
    """
    return _evaluate(a, b, "contains")


def intersects(a: RegionArray, b: RegionArray) -> tuple[np.ndarray, np.ndarray]:
    """ADQL INTERSECTS(a, b), row by row; returns ``(result, null)``."""
    return _evaluate(a, b, "intersects")


def _pair(a: RegionArray, b: RegionArray, ka: int, kb: int, mode: str) -> np.ndarray:
    if mode == "intersects":
        if ka == POINT or kb == POINT:
            if ka != POINT:
                a, b, ka, kb = b, a, kb, ka
            return _pair(a, b, ka, kb, "contains")
        if ka == CIRCLE and kb == CIRCLE:
            return _angle(a.center, b.center) <= a.radius + b.radius
        if ka == POLYGON and kb == POLYGON:
            return polygons_intersect(a.vertices, a.center, b.vertices, b.center)
        if ka == POLYGON:
            a, b = b, a
        return circle_intersects_polygon(a.center, a.radius, b.vertices, b.center)
    # contains: a inside b
    if kb == POINT:
        return (ka == POINT) & (_angle(a.center, b.center) <= 1e-12)
    if ka == POINT:
        if kb == CIRCLE:
            return point_in_circle(a.center, b.center, b.radius)
        return points_in_polygons(a.center, b.vertices, b.center)
    if ka == CIRCLE:
        if kb == CIRCLE:
            return _angle(a.center, b.center) + a.radius <= b.radius
        return circle_in_polygon(a.center, a.radius, b.vertices, b.center)
    if kb == CIRCLE:
        return polygon_in_circle(a.vertices, b.center, b.radius)
    return polygon_in_polygon(a.vertices, b.vertices, b.center)


def area(regions: RegionArray) -> np.ndarray:
    """Solid angle in square degrees (points 0; polygons via spherical excess of a fan)."""
    out = np.zeros(len(regions))
    circ = regions.kind == CIRCLE
    out[circ] = 2 * np.pi * (1 - np.cos(regions.radius[circ]))
    poly = np.flatnonzero(regions.kind == POLYGON)
    if len(poly):
        v = regions.vertices[poly]
        c = regions.center[poly][:, None, :]
        a, b = _edges(v)
        # signed area of triangles (c, a, b) via the Van Oosterom-Strackee formula
        num = np.einsum("...i,...i->...", c, np.cross(a, b))
        den = (
            1
            + np.einsum("...i,...i->...", c, a)
            + np.einsum("...i,...i->...", a, b)
            + np.einsum("...i,...i->...", b, c)
        )
        out[poly] = np.abs((2 * np.arctan2(num, den)).sum(axis=1))
    out[regions.kind == NULL] = np.nan
    return out * np.degrees(1.0) ** 2
