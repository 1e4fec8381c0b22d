"""ADQL geometry functions (POINT, CIRCLE, POLYGON, BOX, CONTAINS, INTERSECTS, DISTANCE, ...).

Region-valued string columns such as ObsCore ``s_region`` are parsed once per
table and cached in ``table.meta`` (see :func:`column_regions`): parsing 100k
footprint strings takes a good fraction of a second, while the vectorized
predicates afterwards take milliseconds.
"""

from __future__ import annotations

import threading

import numpy as np
from astropy.table import Table

from obsharvest.simarchive.adql import geometry as g
from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.adql.values import Geo, Val, merge_null, require

GEOMETRY_FUNCTIONS = frozenset(
    {
        "POINT",
        "CIRCLE",
        "POLYGON",
        "BOX",
        "CONTAINS",
        "INTERSECTS",
        "DISTANCE",
        "COORD1",
        "COORD2",
        "COORDSYS",
        "AREA",
        "CENTROID",
    }
)
REGION_CACHE_KEY = "_region_cache"
_cache_lock = threading.Lock()


def column_regions(table: Table, column: str) -> g.RegionArray:
    """Parsed regions of a string column, cached in ``table.meta[REGION_CACHE_KEY]``.

    The cache entry is stamped with the column object's identity and length so a
    replaced column is re-parsed; the lock only serializes the first parse so that
    concurrent first queries do not all pay for it.
    """
    col = table[column]
    stamp = (id(col), len(col))
    entry = table.meta.get(REGION_CACHE_KEY, {}).get(column)
    if entry is not None and entry[0] == stamp:
        return entry[1]
    with _cache_lock:
        cache = table.meta.setdefault(REGION_CACHE_KEY, {})
        entry = cache.get(column)
        if entry is None or entry[0] != stamp:
            entry = (stamp, g.parse_regions(_strings(col)))
            cache[column] = entry
    return entry[1]


def _strings(col) -> list[str | None]:
    data = np.asarray(col)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", "replace")
    values = data.tolist()
    mask = getattr(col, "mask", None)
    if mask is not None and np.any(mask):
        values = [None if m else v for v, m in zip(values, np.ma.getmaskarray(col), strict=True)]
    return values


def as_regions(value: Val | Geo, what: str) -> g.RegionArray:
    """A geometry argument as a RegionArray: geometry values, or region strings."""
    if isinstance(value, Geo):
        return value.regions
    require(value, "str", what)
    ref = value.ref
    if ref is not None:
        regions = column_regions(ref.source.table, ref.column)
        if ref.rows is None:
            return regions
        return regions.take(np.atleast_1d(np.asarray(ref.rows, dtype=np.intp)))
    if value.data.ndim == 0:
        if value.null is not None and bool(value.null):
            return g.regions_from([None])
        try:
            return g.regions_from([g.parse_region(str(value.data))])
        except ValueError as exc:
            raise AdqlError(f"{what}: invalid region {str(value.data)!r}: {exc}") from None
    null = value.null_mask()
    texts = [
        None if m else s
        for s, m in zip(
            value.data.tolist(), np.broadcast_to(null, value.data.shape).tolist(), strict=True
        )
    ]
    return g.parse_regions(texts)


def _null_out(regions: g.RegionArray, null: np.ndarray | None) -> g.RegionArray:
    if null is None or not np.any(null):
        return regions
    kind = regions.kind.copy()
    kind[np.broadcast_to(np.atleast_1d(null), kind.shape)] = g.NULL
    return g.RegionArray(kind, regions.center, regions.radius, regions.vertices)


def _check_coordsys(name: str, value: Val) -> None:
    systems = set(np.unique(value.data).tolist()) if value.data.ndim else {str(value.data)}
    for system in systems:
        if system.strip().upper() not in {"", "ICRS"}:
            raise AdqlError(f"{name}: unsupported coordinate system {system!r} (use 'ICRS')")


def _split_coordsys(name: str, args: list[Val | Geo]) -> list[Val | Geo]:
    if args and isinstance(args[0], Val) and args[0].kind == "str":
        _check_coordsys(name, args[0])
        return args[1:]
    return args


def _numbers(name: str, args: list[Val | Geo]) -> list[Val]:
    return [require(a, "num", name) for a in args]


def _point_coords(name: str, value: Val | Geo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(value, Geo) or not np.all(
        value.regions.kind[value.regions.kind != 0] == g.POINT
    ):
        raise AdqlError(f"{name} expects POINT arguments")
    ra, dec = g.xyz_to_radec(value.regions.center)
    return ra, dec, value.regions.kind == g.NULL


def _check_dec(name: str, dec: np.ndarray) -> None:
    if np.any(np.abs(dec) > 90):
        raise AdqlError(f"{name}: declination outside [-90, 90]")


def make_point(args: list[Val | Geo]) -> Geo:
    coords = _numbers("POINT", _split_coordsys("POINT", args))
    if len(coords) != 2:
        raise AdqlError(f"POINT takes a coordinate system and 2 numbers, got {len(args)} arguments")
    ra, dec = coords
    _check_dec("POINT", dec.data)
    return Geo(_null_out(g.points(ra.data, dec.data), merge_null(ra, dec)))


def make_circle(args: list[Val | Geo]) -> Geo:
    rest = _split_coordsys("CIRCLE", args)
    null = None
    if len(rest) == 2 and isinstance(rest[0], Geo):
        ra, dec, pnull = _point_coords("CIRCLE", rest[0])
        radius = require(rest[1], "num", "CIRCLE")
        null = merge_null(Val(ra, pnull), radius)
    elif len(rest) == 3:
        ra_v, dec_v, radius = _numbers("CIRCLE", rest)
        ra, dec = ra_v.data, dec_v.data
        null = merge_null(ra_v, dec_v, radius)
    else:
        raise AdqlError(
            "CIRCLE takes a coordinate system, a centre (POINT or 2 numbers) "
            f"and a radius, got {len(args)} arguments"
        )
    _check_dec("CIRCLE", dec)
    if np.any(radius.data < 0) or np.any(radius.data > 180):
        raise AdqlError("CIRCLE: radius outside [0, 180] degrees")
    return Geo(_null_out(g.circles(ra, dec, radius.data), null))


def make_polygon(args: list[Val | Geo]) -> Geo:
    rest = _split_coordsys("POLYGON", args)
    if rest and all(isinstance(a, Geo) for a in rest):
        ras, decs, nulls = zip(*(_point_coords("POLYGON", p) for p in rest), strict=True)
    else:
        nums = _numbers("POLYGON", rest)
        if len(nums) % 2:
            raise AdqlError("POLYGON needs pairs of coordinates")
        ras = [v.data for v in nums[0::2]]
        decs = [v.data for v in nums[1::2]]
        nulls = [v.null_mask() for v in nums]
    if len(ras) < 3:
        raise AdqlError(f"POLYGON needs at least 3 vertices, got {len(ras)}")
    return Geo(polygon_regions(list(ras), list(decs), list(nulls), "POLYGON"))


def make_box(args: list[Val | Geo]) -> Geo:
    """BOX as the polygon with corners at centre +- half height in Dec and +- half width / cos(Dec)."""
    rest = _split_coordsys("BOX", args)
    if len(rest) == 3 and isinstance(rest[0], Geo):
        ra, dec, pnull = _point_coords("BOX", rest[0])
        width, height = _numbers("BOX", rest[1:])
        nulls = [pnull, width.null_mask(), height.null_mask()]
    elif len(rest) == 4:
        ra_v, dec_v, width, height = _numbers("BOX", rest)
        ra, dec = ra_v.data, dec_v.data
        nulls = [v.null_mask() for v in (ra_v, dec_v, width, height)]
    else:
        raise AdqlError(
            f"BOX takes a coordinate system, a centre, a width and a height, "
            f"got {len(args)} arguments"
        )
    half_w = width.data / 2.0 / np.maximum(np.cos(np.radians(dec)), 1e-9)
    half_h = height.data / 2.0
    ras = [ra - half_w, ra + half_w, ra + half_w, ra - half_w]
    decs = [dec - half_h, dec - half_h, dec + half_h, dec + half_h]
    return Geo(polygon_regions(ras, decs, nulls, "BOX"))


def polygon_regions(ras: list, decs: list, nulls: list, name: str) -> g.RegionArray:
    """Polygons whose vertex coordinates may vary per row: built fully vectorized."""
    ra = np.stack(np.broadcast_arrays(*[np.atleast_1d(r) for r in ras]), axis=1)
    dec = np.stack(np.broadcast_arrays(*[np.atleast_1d(d) for d in decs]), axis=1)
    if ra.shape != dec.shape:
        ra, dec = np.broadcast_arrays(ra, dec)
    _check_dec(name, dec)
    vertices = g.radec_to_xyz(ra, dec)
    center = vertices.sum(axis=1)
    center /= np.linalg.norm(center, axis=1, keepdims=True)
    radius = np.arctan2(
        np.linalg.norm(np.cross(vertices, center[:, None, :]), axis=2),
        np.einsum("nmi,ni->nm", vertices, center),
    ).max(axis=1)
    kind = np.full(len(ra), g.POLYGON, dtype=np.int8)
    null = np.zeros(len(ra), dtype=bool)
    for m in nulls:
        null = null | np.broadcast_to(np.atleast_1d(m), null.shape)
    return _null_out(g.RegionArray(kind, center, radius, vertices), null)


def predicate(name: str, args: list[Val | Geo]) -> Val:
    """CONTAINS / INTERSECTS as integer 0/1 values (NULL where a region is NULL)."""
    if len(args) != 2:
        raise AdqlError(f"{name} takes 2 arguments, got {len(args)}")
    a = as_regions(args[0], name)
    b = as_regions(args[1], name)
    fn = g.contains if name == "CONTAINS" else g.intersects
    result, null = fn(a, b)
    return Val(result.astype(np.int32), null if null.any() else None)


def distance(args: list[Val | Geo]) -> Val:
    if len(args) == 4:
        ra1, dec1, ra2, dec2 = _numbers("DISTANCE", args)
        sep = g.angular_separation(ra1.data, dec1.data, ra2.data, dec2.data)
        return Val(np.asarray(sep), merge_null(ra1, dec1, ra2, dec2))
    if len(args) != 2:
        raise AdqlError(f"DISTANCE takes 2 POINTs or 4 numbers, got {len(args)} arguments")
    ra1, dec1, n1 = _point_coords("DISTANCE", args[0])
    ra2, dec2, n2 = _point_coords("DISTANCE", args[1])
    null = n1 | n2
    sep = g.angular_separation(ra1, dec1, ra2, dec2)
    return Val(np.asarray(sep), null if null.any() else None)


def coordinate(name: str, args: list[Val | Geo]) -> Val:
    if len(args) != 1:
        raise AdqlError(f"{name} takes 1 argument, got {len(args)}")
    ra, dec, null = _point_coords(name, args[0])
    return Val(ra if name == "COORD1" else dec, null if null.any() else None)


def region_area(args: list[Val | Geo]) -> Val:
    if len(args) != 1:
        raise AdqlError(f"AREA takes 1 argument, got {len(args)}")
    regions = as_regions(args[0], "AREA")
    null = regions.kind == g.NULL
    return Val(g.area(regions), null if null.any() else None)


def centroid(args: list[Val | Geo]) -> Geo:
    if len(args) != 1:
        raise AdqlError(f"CENTROID takes 1 argument, got {len(args)}")
    regions = as_regions(args[0], "CENTROID")
    ra, dec = g.xyz_to_radec(regions.center)
    return Geo(_null_out(g.points(ra, dec), regions.kind == g.NULL))


def call_geometry(name: str, args: list[Val | Geo]) -> Val | Geo:
    if name == "POINT":
        return make_point(args)
    if name == "CIRCLE":
        return make_circle(args)
    if name == "POLYGON":
        return make_polygon(args)
    if name == "BOX":
        return make_box(args)
    if name in ("CONTAINS", "INTERSECTS"):
        return predicate(name, args)
    if name == "DISTANCE":
        return distance(args)
    if name in ("COORD1", "COORD2"):
        return coordinate(name, args)
    if name == "AREA":
        return region_area(args)
    if name == "CENTROID":
        return centroid(args)
    if len(args) != 1:
        raise AdqlError(f"COORDSYS takes 1 argument, got {len(args)}")
    return Val(np.asarray("ICRS"))


def format_regions(regions: g.RegionArray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """STC-S strings for selecting a computed geometry (e.g. ``SELECT POINT(...)``)."""
    if len(regions) == 1 and n != 1:
        regions = regions.take(np.zeros(n, dtype=np.intp))
    texts: list[str] = []
    null = regions.kind == g.NULL
    ra, dec = g.xyz_to_radec(regions.center)
    for i in range(len(regions)):
        kind = regions.kind[i]
        if kind == g.POINT:
            texts.append(g.format_region(g.Point(float(ra[i]), float(dec[i]))))
        elif kind == g.CIRCLE:
            texts.append(
                g.format_region(
                    g.Circle(float(ra[i]), float(dec[i]), float(np.degrees(regions.radius[i])))
                )
            )
        elif kind == g.POLYGON:
            texts.append(g.format_region(g.Polygon(tuple(regions.polygon_radec(i)))))
        else:
            texts.append("")
    return np.asarray(texts, dtype=str), null
