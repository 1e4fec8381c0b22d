"""The client's s_region reader and sky tests, checked against independent references.

References: astropy ``SkyCoord`` (offsets and separations) for points and circles near
polygon edges; a TAN (gnomonic) projection with matplotlib's planar point-in-polygon for
any polygon (gnomonic maps great circles to straight lines, so that test is exact); and
the embedded archive's own geometry, written separately, on thousands of seeded random
cases.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, Table
from astropy.wcs import WCS
from matplotlib.path import Path

from obsharvest.errors import SRegionError
from obsharvest.models import Target
from obsharvest.query.adql import TARGET_COLUMN
from obsharvest.query.obscore import ServiceFeatures, _refine_upload, associate
from obsharvest.simarchive.adql import geometry as archive
from obsharvest.verify import containment, sregion
from obsharvest.verify.sregion import (
    Circle,
    Intersection,
    Not,
    Point,
    Polygon,
    Union,
    circle_meets_regions,
    pack_regions,
    parse_region,
    parse_s_region,
    point_in_regions,
)

# -- helpers ----------------------------------------------------------------------------


def s_region(vertices, frame: str = "ICRS") -> str:
    coords = " ".join(f"{float(ra)!r} {float(dec)!r}" for ra, dec in vertices)
    return f"POLYGON {frame} {coords}".replace("  ", " ")


def offsets(ra0: float, dec0: float, pa_deg, sep_deg) -> list[tuple[float, float]]:
    """Points at position angles and separations from a centre, by astropy."""
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    moved = centre.directional_offset_by(np.atleast_1d(pa_deg) * u.deg, sep_deg * u.deg)
    return [(float(c.ra.deg), float(c.dec.deg)) for c in moved]


def square(ra0: float, dec0: float, half_diag: float, angle: float = 0.0):
    return offsets(ra0, dec0, angle + np.array([0.0, 90.0, 180.0, 270.0]), half_diag)


def midpoint(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """The middle of the great-circle arc a-b, by astropy."""
    ca, cb = SkyCoord(*a, unit="deg"), SkyCoord(*b, unit="deg")
    mid = ca.directional_offset_by(ca.position_angle(cb), ca.separation(cb) / 2)
    return float(mid.ra.deg), float(mid.dec.deg)


def tan_inside(vertices, ra, dec, centre) -> np.ndarray:
    """Point-in-polygon on the gnomonic (TAN) image, exact for great-circle edges."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(centre)
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [-1.0, 1.0]
    vx, vy = w.wcs_world2pix(np.array([v[0] for v in vertices]), [v[1] for v in vertices], 0)
    px, py = w.wcs_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
    return Path(np.column_stack([vx, vy])).contains_points(np.column_stack([px, py]))


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    ["ICRS", "icrs", "FK5", "J2000", "UNKNOWNFrame", "unknownframe", "UNKNOWNFRAME", ""],
)
def test_icrs_like_frames_are_read(frame: str) -> None:
    text = s_region([(10.0, 20.0), (11.0, 20.0), (11.0, 21.0)], frame)
    assert parse_s_region(text) == [(10.0, 20.0), (11.0, 20.0), (11.0, 21.0)]


@pytest.mark.parametrize(
    "text",
    [
        "POLYGON ICRS BARYCENTER 1 2 3 4 5 6",
        "Polygon ICRS GEOCENTER SPHERICAL2 1 2 3 4 5 6",
        "POLYGON UNKNOWNFrame UNKNOWNRefPos SPHERICAL2 1 2 3 4 5 6",
        "POLYGON TOPOCENTER 1 2 3 4 5 6",  # STC-S: the frame itself may be left out
    ],
)
def test_stcs_reference_position_and_flavour_are_read(text: str) -> None:
    assert parse_s_region(text) == [(1, 2), (3, 4), (5, 6)]


def test_closing_and_repeated_vertices_are_dropped() -> None:
    assert parse_s_region("POLYGON ICRS 1 2 3 4 5 6 1 2") == [(1, 2), (3, 4), (5, 6)]
    assert parse_s_region("POLYGON ICRS 1 2 3 4 3 4 5 6") == [(1, 2), (3, 4), (5, 6)]
    # RA 360 is RA 0: still the closing vertex
    assert parse_s_region("POLYGON ICRS 0 2 3 4 5 6 360 2") == [(0, 2), (3, 4), (5, 6)]
    # at a pole every RA is the same point
    assert parse_s_region("POLYGON ICRS 0 -90 120 -90 10 -80 20 -80") == [
        (0, -90),
        (10, -80),
        (20, -80),
    ]


def test_ra_is_normalised() -> None:
    vertices = parse_s_region("POLYGON ICRS -0.5 1 360.5 2 3 4 -1e-17 5")
    assert vertices[:3] == [(359.5, 1), (0.5, 2), (3, 4)]
    assert vertices[3] == (0.0, 5)  # -1e-17 % 360 rounds to 360.0: folded to 0


def test_circle_and_point_regions() -> None:
    assert parse_region("CIRCLE ICRS 370 -30 0.5") == Circle(10.0, -30.0, 0.5)
    assert parse_region("Circle UNKNOWNFrame 10 -30 0.5") == Circle(10.0, -30.0, 0.5)
    assert parse_region("POINT ICRS 10 -30") == Point(10.0, -30.0)
    assert parse_region("Position ICRS 10 -30") == Point(10.0, -30.0)
    assert parse_region("POLYGON 1 2 3 4 5 6") == Polygon(((1, 2), (3, 4), (5, 6)))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("POLYGON GALACTIC 1 2 3 4 5 6", "frame 'GALACTIC'"),
        ("POLYGON ECLIPTIC 1 2 3 4 5 6", "frame 'ECLIPTIC'"),
        ("POLYGON FK4 1 2 3 4 5 6", "frame 'FK4'"),
        ("ELLIPSE ICRS 62 -37 1 1 0", "shape 'ELLIPSE'"),
        ("Difference ICRS (POLYGON 1 2 3 4 5 6 POLYGON 7 8 9 10 11 12)", "shape 'Difference'"),
        ("Union ICRS (POLYGON 1 2 3 4 5 6", "unclosed"),
        ("Union ICRS POLYGON 1 2 3 4 5 6", "parentheses"),
        ("Not (POLYGON 1 2 3 4 5 6 POLYGON 7 8 9 10 11 12)", "one operand"),
        ("Union ICRS ()", "no operands"),
        ("Union ICRS (POLYGON 1 2 3 4 5 6) POLYGON 1 2 3 4 5 6", "more after"),
        ("Union GALACTIC (POLYGON 1 2 3 4 5 6)", "frame 'GALACTIC'"),
        ("BOX ICRS 62 -37 1", "BOX needs 4"),
        ("BOX ICRS 62 -37 0 1", "width and height"),
        ("POLYGON ICRS 1 2 3 4 5 6 POLYGON ICRS 7 8 9 10 11 12", "non-number"),
        ("POLYGON ICRS 1 2 3 4 5", "odd number"),
        ("POLYGON ICRS 1 2 3 4", "at least 3 vertices"),
        ("POLYGON ICRS 1 2 3 4 1 2", "at least 3 vertices"),
        ("POLYGON ICRS 1 2 3 four 5 6", "non-number"),
        ("POLYGON ICRS 1 2 3 NaN 5 6", "non-finite"),
        ("POLYGON ICRS 1 2 3 inf 5 6", "non-finite"),
        ("POLYGON ICRS 1 2 3 95 5 6", "declination"),
        ("POLYGON ICRS 1,2,3,4,5,6", "non-number"),
        ("CIRCLE ICRS 1 2", "CIRCLE needs 3"),
        ("CIRCLE ICRS 1 2 -1", "radius"),
        ("CIRCLE ICRS 1 2 181", "radius"),
        ("CIRCLE ICRS 1 91 1", "declination"),
        ("POINT ICRS 1", "POINT needs 2"),
        ("POLYGON", "at least 3 vertices"),
        ("", "empty"),
        ("   \n", "empty"),
    ],
)
def test_bad_values_raise_one_line_sregion_errors(text: str, fragment: str) -> None:
    with pytest.raises(SRegionError) as info:
        parse_region(text)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert fragment in message
    assert "\n" not in message and len(message) < 200


def test_non_text_is_an_sregion_error() -> None:
    with pytest.raises(SRegionError, match="not text"):
        parse_region(None)  # type: ignore[arg-type]


def test_messages_quote_a_long_value_on_one_line() -> None:
    text = "POLYGON GALACTIC\n" + " ".join(["62.0"] * 500)
    with pytest.raises(SRegionError) as info:
        parse_region(text)
    assert "POLYGON GALACTIC 62.0" in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_parse_s_region_wants_a_polygon() -> None:
    with pytest.raises(SRegionError, match="not a single POLYGON"):
        parse_s_region("CIRCLE ICRS 62 -37 0.1")


def test_containment_uses_the_same_parser() -> None:
    assert containment.parse_s_region is sregion.parse_s_region


# -- packing ----------------------------------------------------------------------------


def test_pack_marks_unusable_rows_unknown_with_reasons() -> None:
    good = "POLYGON ICRS 10 20 11 20 11 21"
    values = [
        good,
        None,
        good.encode(),
        "POLYGON GALACTIC 1 2 3 4 5 6",
        "POLYGON ICRS 0 0 120 0 240 0",  # a great circle: no smaller side
        "POLYGON ICRS 0 0 90 0 180 1 270 0",  # wider than a hemisphere
        "POLYGON ICRS 10 0 10.5 0 11 0",  # all on one great circle: no area
        17,
        good,
    ]
    packed = pack_regions(values)
    assert packed.unknown.tolist() == [False, True, False, True, True, True, True, True, False]
    assert packed.region_of[0] == packed.region_of[2] == packed.region_of[8]  # parsed once
    assert len(packed.centre) == 1
    assert "frame 'GALACTIC'" in packed.reasons["POLYGON GALACTIC 1 2 3 4 5 6"]
    assert "hemisphere" in packed.reasons["POLYGON ICRS 0 0 90 0 180 1 270 0"]
    assert "no area" in packed.reasons["POLYGON ICRS 10 0 10.5 0 11 0"]
    hit, unknown = point_in_regions(10.7, 20.5, packed)
    assert hit.tolist() == [True, False, True] + [False] * 5 + [True]
    assert (unknown == packed.unknown).all()


def test_pack_reads_masked_columns() -> None:
    column = MaskedColumn(
        ["POLYGON ICRS 10 20 11 20 11 21", "", "CIRCLE ICRS 10 20 1"], mask=[False, True, False]
    )
    hit, unknown = point_in_regions(10.7, 20.5, column)
    assert hit.tolist() == [True, False, True]
    assert unknown.tolist() == [False, True, False]


def test_empty_input() -> None:
    hit, unknown = circle_meets_regions(1.0, 2.0, 0.5, [])
    assert hit.shape == unknown.shape == (0,)
    hit, unknown = point_in_regions(1.0, 2.0, [None, "nonsense"])
    assert hit.tolist() == [False, False] and unknown.tolist() == [True, True]


def test_bulk_reading_equals_the_reader() -> None:
    """The numpy bulk path for plain polygons reads exactly what the reader reads."""
    rng = np.random.default_rng(7)
    texts = []
    for i in range(3000):
        m = int(rng.integers(3, 7))
        ra = rng.uniform(-400, 800, m)
        ra[rng.random(m) < 0.1] = -1e-17
        dec = rng.uniform(-90, 90, m)
        frame = ["ICRS", "icrs", "", "UNKNOWNFrame", "FK5", "GALACTIC"][i % 6]
        coords = " ".join(f"{a!r} {d!r}" for a, d in zip(ra.tolist(), dec.tolist(), strict=True))
        if i % 17 == 0:
            coords += f" {float(ra[0])!r} {float(dec[0])!r}"  # closed: left to the reader
        if i % 23 == 0:
            coords = coords.replace(" ", "  ", 3)
        texts.append(f"POLYGON {frame} {coords}".replace("  ", " ", 1))
    plain, rest = sregion._plain_polygons(texts)
    assert sum(len(keys) for keys, _ in plain) > 2000
    for keys, radec in plain:
        for key, row in zip(keys.tolist(), radec.tolist(), strict=True):
            shape, numbers = sregion._read(texts[key])
            assert shape == "POLYGON" and numbers == row
    read_later = set(rest)
    assert read_later.isdisjoint(k for keys, _ in plain for k in keys.tolist())
    assert len(read_later) + sum(len(keys) for keys, _ in plain) == len(texts)


# -- points against astropy -------------------------------------------------------------


@pytest.mark.parametrize(
    ("ra0", "dec0"),
    [(0.0, 0.0), (359.99, 10.0), (0.01, -45.0), (180.0, -89.0), (45.0, 88.5), (150.0, -30.0)],
)
@pytest.mark.parametrize("reverse", [False, True], ids=["ccw", "cw"])
def test_points_just_inside_and_outside_each_edge(ra0: float, dec0: float, reverse: bool) -> None:
    """Square of half-diagonal 0.2 deg: from its centre towards each edge's midpoint (the
    perpendicular, by symmetry), 1e-7 deg short of the edge is inside, past it outside."""
    vertices = square(ra0, dec0, 0.2, angle=17.0)
    text = s_region(vertices[::-1] if reverse else vertices)
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    inside, outside = [], []
    for a, b in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        mid = SkyCoord(*midpoint(a, b), unit="deg")
        pa, sep = centre.position_angle(mid).deg, centre.separation(mid).deg
        inside += offsets(ra0, dec0, pa, sep - 1e-7)
        outside += offsets(ra0, dec0, pa, sep + 1e-7)
    group = pack_regions([text]).groups[0]
    assert group.convex.all()  # wound counter-clockwise whichever way it was written
    for points, expected in ((inside, True), (outside, False), ([(ra0, dec0)], True)):
        ra, dec = np.array(points).T
        hit, unknown = point_in_regions(ra, dec, [text] * len(ra))
        assert not unknown.any()
        assert (hit == expected).all(), (points, hit)
        for one_ra, one_dec in points:  # the one-target-many-rows path
            assert point_in_regions(one_ra, one_dec, [text])[0][0] == expected


def test_polygon_around_the_pole() -> None:
    """Vertices all at Dec -89: the pole is inside, and edges are great circles that
    bulge towards the pole (a point at Dec -89.0001 midway between vertices is inside)."""
    vertices = [(ra, -89.0) for ra in (0.0, 90.0, 180.0, 270.0)]
    text = s_region(vertices)
    mid = midpoint(vertices[0], vertices[1])
    assert mid[1] < -89.0
    points = [(0.0, -90.0), (123.0, -89.9), (45.0, mid[1] + 1e-7), (45.0, mid[1] - 1e-7)]
    ra, dec = np.array(points).T
    hit, _ = point_in_regions(ra, dec, [text] * 4)
    assert hit.tolist() == [True, True, False, True]
    assert tan_inside(vertices, ra, dec, (0.0, -90.0)).tolist() == hit.tolist()


def test_non_convex_polygon_across_ra_zero() -> None:
    """A chevron straddling RA 0: the notch is outside, both arms inside (TAN reference)."""
    local = [(-1.0, -1.0), (0.0, 0.0), (1.0, -1.0), (1.0, 1.0), (0.0, 2.0), (-1.0, 1.0)]
    vertices = [(ra % 360.0, dec) for ra, dec in local]
    rng = np.random.default_rng(3)
    ra = rng.uniform(-1.2, 1.2, 4000) % 360.0
    dec = rng.uniform(-1.2, 2.2, 4000)
    expected = tan_inside(vertices, ra, dec, (0.0, 0.5))
    for order in (vertices, vertices[::-1]):
        hit, _ = point_in_regions(ra, dec, [s_region(order)] * len(ra))
        assert (hit == expected).all()
    assert not point_in_regions(0.0, -0.5, [s_region(vertices)])[0][0]  # in the notch
    assert point_in_regions(0.8, -0.5, [s_region(vertices)])[0][0]  # in an arm
    assert not point_in_regions(180.8, 0.5, [s_region(vertices)])[0][0]  # its antipode


def test_random_polygons_match_the_gnomonic_reference() -> None:
    rng = np.random.default_rng(11)
    for _ in range(150):
        ra0, dec0 = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
        if rng.random() < 0.3:
            ra0 = rng.choice([0.0, 359.999, 0.001])
        if rng.random() < 0.2:
            dec0 = rng.choice([-89.9, 89.5, -88.0])
        size = 10 ** rng.uniform(-3, 1)
        m = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 360, m))
        vertices = offsets(ra0, dec0, angles, size * rng.uniform(0.3, 1.0, m))
        probes = offsets(ra0, dec0, rng.uniform(0, 360, 200), size * rng.uniform(0, 1.2, 200))
        ra, dec = np.array(probes).T
        expected = tan_inside(vertices, ra, dec, (ra0, dec0))
        hit, unknown = point_in_regions(ra, dec, [s_region(vertices)] * len(ra))
        if unknown.any():  # only a degenerate random shape may be refused
            assert "no area" in " ".join(pack_regions([s_region(vertices)]).reasons.values())
            continue
        near_edge = _near_edge(vertices, ra, dec, 1e-9 * size)
        assert (hit == expected)[~near_edge].all()


def _near_edge(vertices, ra, dec, tolerance_deg: float) -> np.ndarray:
    v = archive.radec_to_xyz(*np.array(vertices).T)
    p = archive.radec_to_xyz(ra, dec)
    distance = archive.point_arc_distance(p[:, None, :], v, np.roll(v, -1, axis=0))
    return np.degrees(distance.min(axis=1)) <= tolerance_deg


# -- circles against astropy ------------------------------------------------------------


def _edge_distance(vertices, ra0: float, dec0: float, samples: int = 4000) -> float:
    """Smallest separation (deg) from a point to a polygon's edges, by astropy on densely
    sampled great-circle arcs (accurate to ~1e-7 deg for these sizes)."""
    target = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    best = np.inf
    for a, b in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        ca, cb = SkyCoord(*a, unit="deg"), SkyCoord(*b, unit="deg")
        steps = np.linspace(0, 1, samples) * ca.separation(cb)
        arc = ca.directional_offset_by(ca.position_angle(cb), steps)
        best = min(best, float(target.separation(arc).deg.min()))
    return best


@pytest.mark.parametrize(("ra0", "dec0"), [(0.0, 0.0), (359.95, -30.0), (10.0, -89.2)])
def test_circles_touching_edges_from_outside(ra0: float, dec0: float) -> None:
    vertices = square(ra0, dec0, 0.2, angle=31.0)
    text = s_region(vertices)
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    rng = np.random.default_rng(5)
    for pa in rng.uniform(0, 360, 12):
        for sep in (0.25, 0.4, 1.0):
            ra, dec = offsets(ra0, dec0, pa, sep)[0]
            if tan_inside(vertices, ra, dec, (ra0, dec0))[0]:
                continue
            distance = _edge_distance(vertices, ra, dec)
            assert circle_meets_regions(ra, dec, distance + 1e-6, [text])[0][0]
            assert not circle_meets_regions(ra, dec, distance - 1e-6, [text])[0][0]
    # the middle of an edge is nearer than either of its vertices: the arc part counts
    mid = midpoint(vertices[0], vertices[1])
    pa = centre.position_angle(SkyCoord(*mid, unit="deg")).deg
    beyond = centre.separation(SkyCoord(*mid, unit="deg")).deg + 0.05
    ra, dec = offsets(ra0, dec0, pa, beyond)[0]
    to_vertex = SkyCoord(ra * u.deg, dec * u.deg).separation(
        SkyCoord(*np.array(vertices[:2]).T, unit="deg")
    )
    assert to_vertex.deg.min() > 0.1
    assert circle_meets_regions(ra, dec, 0.05 + 1e-6, [text])[0][0]
    assert not circle_meets_regions(ra, dec, 0.05 - 1e-6, [text])[0][0]


def test_circle_swallowing_a_polygon_and_centre_inside() -> None:
    text = s_region(square(0.0, 0.0, 0.1))
    assert circle_meets_regions(0.5, 0.0, 1.0, [text])[0][0]  # swallows it
    assert circle_meets_regions(0.0, 0.0, 1e-9, [text])[0][0]  # centre inside, tiny radius
    assert circle_meets_regions(0.0, 0.0, 0.0, [text])[0][0]
    assert circle_meets_regions(180.0, 0.0, 180.0, [text])[0][0]  # the whole sky
    assert not circle_meets_regions(180.0, 0.0, 179.0, [text])[0][0]


def test_circle_and_point_regions_against_astropy_separations() -> None:
    rng = np.random.default_rng(9)
    ra0, dec0 = rng.uniform(0, 360, 300), rng.uniform(-89.9, 89.9, 300)
    radius = rng.uniform(0.001, 2.0, 300)
    texts = [
        f"CIRCLE ICRS {a!r} {d!r} {r!r}"
        for a, d, r in zip(ra0.tolist(), dec0.tolist(), radius.tolist(), strict=True)
    ]
    sep = rng.uniform(0, 3.0, 300)
    targets = [
        offsets(a, d, pa, s)[0]
        for a, d, pa, s in zip(ra0, dec0, rng.uniform(0, 360, 300), sep, strict=True)
    ]
    ra, dec = np.array(targets).T
    truth = SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(ra0 * u.deg, dec0 * u.deg)).deg
    clear = np.abs(truth - radius) > 1e-8
    hit, _ = point_in_regions(ra, dec, texts)
    assert (hit == (truth <= radius))[clear].all()
    hit, _ = circle_meets_regions(ra, dec, 0.5, texts)
    clear = np.abs(truth - radius - 0.5) > 1e-8
    assert (hit == (truth <= radius + 0.5))[clear].all()
    # a point has no extent: it rules no target out, whatever the target
    points = [f"POINT ICRS {a!r} {d!r}" for a, d in zip(ra0.tolist(), dec0.tolist(), strict=True)]
    for hit, unknown in (
        circle_meets_regions(ra, dec, 1.0, points),
        point_in_regions(ra0, dec0 + 1e-6, points),
    ):
        assert not hit.any() and unknown.all()


# -- the embedded archive's geometry, written separately --------------------------------


def _random_polygons(rng: np.random.Generator, count: int):
    for _ in range(count):
        ra0, dec0 = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
        if rng.random() < 0.25:
            ra0 = float(rng.choice([0.0, 359.9999, 0.0001, 180.0]))
        if rng.random() < 0.2:
            dec0 = float(rng.choice([-89.99, 89.9, -88.5, 90.0, -90.0]))
        size = 10 ** rng.uniform(-3.5, 1.2)
        m = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 360, m))
        convex = rng.random() < 0.5
        radii = size if convex else size * rng.uniform(0.3, 1.0, m)
        vertices = offsets(ra0, dec0, angles, radii)
        if rng.random() < 0.5:
            vertices = vertices[::-1]
        yield ra0, dec0, size, vertices


def test_agrees_with_the_archive_geometry_on_random_cases() -> None:
    rng = np.random.default_rng(20240601)
    texts, ra, dec, radius = [], [], [], []
    for ra0, dec0, size, vertices in _random_polygons(rng, 600):
        text = s_region(vertices)
        probes = offsets(ra0, dec0, rng.uniform(0, 360, 8), size * rng.uniform(0, 1.5, 8))
        for pra, pdec in probes:
            texts.append(text)
            ra.append(pra)
            dec.append(pdec)
            radius.append(size * rng.uniform(0, 0.6))
    ra, dec, radius = np.array(ra), np.array(dec), np.array(radius)
    regions = archive.parse_regions(texts)
    assert not (regions.kind == archive.NULL).any()

    theirs, _ = archive.contains(archive.points(ra, dec), regions)
    ours, unknown = point_in_regions(ra, dec, texts)
    edge = _distance_to_boundary(regions, ra, dec)
    assert unknown.sum() < 0.01 * len(texts)  # only degenerate random shapes
    ok = ~unknown & (edge > 1e-9)
    assert ok.sum() > 4000
    assert (ours == theirs)[ok].all(), np.flatnonzero((ours != theirs) & ok)[:10]

    theirs, _ = archive.intersects(archive.circles(ra, dec, radius), regions)
    ours, unknown = circle_meets_regions(ra, dec, radius, texts)
    inside = archive.contains(archive.points(ra, dec), regions)[0]
    ok = ~unknown & (edge > 1e-9) & (inside | (np.abs(edge - radius) > 1e-9))
    assert ok.sum() > 4000
    assert (ours == theirs)[ok].all(), np.flatnonzero((ours != theirs) & ok)[:10]

    # the one-target-many-rows path answers as the row-by-row path
    for i in rng.choice(len(texts), 40, replace=False):
        one, _ = circle_meets_regions(ra[i], dec[i], radius[i], texts)
        every, _ = circle_meets_regions(np.full(len(texts), ra[i]), dec[i], radius[i], texts)
        assert (one == every).all()


def _distance_to_boundary(regions, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Degrees from each point to its row's polygon boundary (the archive's arc distance)."""
    p = archive.radec_to_xyz(ra, dec)[:, None, :]
    v = regions.vertices
    return np.degrees(archive.point_arc_distance(p, v, np.roll(v, -1, axis=1)).min(axis=1))


# -- the client's use of it -------------------------------------------------------------


def _rows(texts) -> Table:
    return Table(
        {
            "obs_publisher_did": [f"ivo://x?{i}" for i in range(len(texts))],
            "s_region": MaskedColumn(
                [t or "" for t in texts], mask=[t is None for t in texts], dtype=object
            ),
        }
    )


def test_associate_ties_rows_to_the_targets_they_serve() -> None:
    a = s_region(square(0.0, 0.0, 0.2))
    b = s_region(square(10.0, 0.0, 0.2))
    rows = _rows([a, b, None, "POLYGON GALACTIC 1 2 3 4 5 6", a])
    targets = [
        Target("p0", 0.05, 0.0),
        Target("p10", 10.0, 0.05),
        Target("far", 50.0, 0.0),
        Target("c", 0.0, 0.4, radius=0.3),
    ]
    out = associate(rows, targets, intersects=True)
    pairs = sorted(
        (str(t), str(d)) for t, d in zip(out[TARGET_COLUMN], out["obs_publisher_did"], strict=True)
    )
    unknown = ["ivo://x?2", "ivo://x?3"]  # kept for every target: the WCS decides
    expected = sorted(
        [("p0", d) for d in ["ivo://x?0", "ivo://x?4", *unknown]]
        + [("p10", d) for d in ["ivo://x?1", *unknown]]
        + [("far", d) for d in unknown]
        + [("c", d) for d in ["ivo://x?0", "ivo://x?4", *unknown]]
    )
    assert pairs == expected


def test_associate_single_target_needs_no_test() -> None:
    rows = _rows([s_region(square(10.0, 0.0, 0.2))])
    out = associate(rows, [Target("p", 50.0, 0.0)], intersects=True)
    assert len(out) == 1
    out = associate(rows, [Target("c", 50.0, 0.0, radius=1.0)], intersects=False)
    assert len(out) == 0


def test_refine_upload_decides_radius_rows_only() -> None:
    a = s_region(square(0.0, 0.0, 0.2))
    rows = _rows([a, a, a, None, a])
    rows[TARGET_COLUMN] = ["near", "far", "point", "far", "gone"]
    targets = [
        Target("near", 0.0, 0.4, radius=0.3),
        Target("far", 0.0, 2.0, radius=0.3),
        Target("point", 50.0, 0.0),
    ]
    kept = _refine_upload(rows, targets, ServiceFeatures(intersects=False))
    assert list(kept[TARGET_COLUMN]) == ["near", "point", "far", "gone"]
    assert len(_refine_upload(rows, targets, ServiceFeatures(intersects=True))) == 5


# -- dialects: what other archives write ------------------------------------------------


SQUARE = square(62.0, -37.0, 0.2, angle=10.0)


def _coords(vertices) -> str:
    return " ".join(f"{float(ra)!r} {float(dec)!r}" for ra, dec in vertices)


def _probes(rng: np.random.Generator, ra0: float, dec0: float, size: float, count: int = 400):
    ra, dec = np.array(
        offsets(ra0, dec0, rng.uniform(0, 360, count), rng.uniform(0, size, count))
    ).T
    return ra, dec


@pytest.mark.parametrize(
    "template",
    [
        "POLYGON J2000 {}",  # ESO
        "Polygon J2000 {}",
        "Polygon ICRS {}",  # ALMA
        "polygon icrs {}",
        "POLYGON ICRS TOPOCENTER {}",
        "Polygon ICRS GEOCENTER SPHERICAL2 {}",
        "POLYGON FK5 {}",
        "POLYGON UNKNOWNFrame {}",
        "POLYGON {}",
        "polygon {}",  # DALI 1.2 "shape" text: no frame, lower case
    ],
)
def test_every_icrs_like_polygon_dialect_is_the_same_region(template: str) -> None:
    text = template.format(_coords(SQUARE))
    assert parse_region(text) == Polygon(tuple(SQUARE))
    plain, rest = sregion._plain_polygons([text])
    assert not rest or "TOPOCENTER" in text or "GEOCENTER" in text  # the bulk path reads it
    ra, dec = _probes(np.random.default_rng(1), 62.0, -37.0, 0.3)
    reference = s_region(SQUARE)
    assert (
        point_in_regions(ra, dec, [text] * len(ra))[0]
        == point_in_regions(ra, dec, [reference] * len(ra))[0]
    ).all()


def test_alma_circle() -> None:
    assert parse_region("Circle ICRS 83.8221 -5.3911 0.0127") == Circle(83.8221, -5.3911, 0.0127)
    hit, unknown = point_in_regions(
        [83.8221, 83.8221], [-5.38, -5.37], ["Circle ICRS 83.8221 -5.3911 0.0127"] * 2
    )
    assert hit.tolist() == [True, False] and not unknown.any()


@pytest.mark.parametrize(("ra0", "dec0"), [(62.0, -37.0), (0.05, 10.0), (150.0, 85.0)])
def test_box_is_the_gnomonic_rectangle(ra0: float, dec0: float) -> None:
    """STC's BOX: in the tangent plane at its centre, |x| <= tan(w/2), |y| <= tan(h/2)
    (astropy's TAN projection is the reference)."""
    width, height = 1.0, 0.4
    region = parse_region(f"BOX ICRS {ra0} {dec0} {width} {height}")
    assert isinstance(region, Polygon) and len(region.vertices) == 4
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [1.0, 1.0]  # pixel 0 (0-based) is the tangent point
    w.wcs.cdelt = [-1.0, 1.0]
    ra, dec = _probes(np.random.default_rng(2), ra0, dec0, 0.8, 3000)
    x, y = w.wcs_world2pix(ra, dec, 0)
    half_x, half_y = (
        np.degrees(np.tan(np.radians(width / 2))),
        np.degrees(np.tan(np.radians(height / 2))),
    )
    expected = (np.abs(x) <= half_x) & (np.abs(y) <= half_y)
    clear = (np.abs(np.abs(x) - half_x) > 1e-7) & (np.abs(np.abs(y) - half_y) > 1e-7)
    hit, unknown = point_in_regions(ra, dec, [f"box icrs {ra0} {dec0} {width} {height}"] * len(ra))
    assert not unknown.any() and expected.sum() > 100
    assert (hit == expected)[clear].all()


def _halves(vertices) -> str:
    """The square cut along a diagonal, as ALMA would write two pointings."""
    a, b = vertices[:3], [vertices[2], vertices[3], vertices[0]]
    return f"Union ICRS (Polygon {_coords(a)} Polygon {_coords(b)})"


def test_union_of_two_halves_is_the_whole() -> None:
    text = _halves(SQUARE)
    region = parse_region(text)
    assert isinstance(region, Union) and len(region.members) == 2
    ra, dec = _probes(np.random.default_rng(3), 62.0, -37.0, 0.35, 2000)
    whole = point_in_regions(ra, dec, [s_region(SQUARE)] * len(ra))[0]
    near = _near_edge(SQUARE, ra, dec, 1e-9)
    for packed in ([text] * len(ra), pack_regions([text] * len(ra))):
        hit, unknown = point_in_regions(ra, dec, packed)
        assert not unknown.any()
        assert (hit == whole)[~near].all() and whole.sum() > 200
    # a circle meets the union when it meets either half, and the single-target path agrees
    for one_ra, one_dec, radius in [(62.0, -36.6, 0.25), (62.0, -36.6, 0.1), (62.4, -37.0, 0.3)]:
        union = circle_meets_regions(one_ra, one_dec, radius, [text])
        plain = circle_meets_regions(one_ra, one_dec, radius, [s_region(SQUARE)])
        assert union[0].tolist() == plain[0].tolist() and not union[1].any()
        rows = circle_meets_regions([one_ra], [one_dec], [radius], [text])
        assert rows[0].tolist() == union[0].tolist()


def test_union_spacing_case_and_frames_inside() -> None:
    a = "Polygon ICRS 1 0 2 0 2 1"
    b = "POLYGON 10 0 11 0 11 1"
    for text in (
        f"Union ICRS ({a} {b})",
        f"union icrs ( {a} {b} )",
        f"UNION (\n{a}\n{b}\n)",
        f"Union ICRS (Circle ICRS 1.7 0.3 0.01 {b})",
    ):
        hit, unknown = point_in_regions([1.7, 10.7, 5.0], [0.3, 0.3, 0.3], [text] * 3)
        assert hit.tolist() == [True, True, False] and not unknown.any(), text


def test_intersection_and_not_for_points() -> None:
    big = s_region(square(62.0, -37.0, 0.4))
    small = s_region(square(62.0, -37.0, 0.1))
    ring = f"Intersection ICRS ({big} Not ({small}))"
    region = parse_region(ring)
    assert isinstance(region, Intersection) and isinstance(region.members[1], Not)
    points = [(62.0, -37.0), (62.0, -36.8), (62.0, -36.0)]  # hole, ring, outside
    ra, dec = np.array(points).T
    hit, unknown = point_in_regions(ra, dec, [ring] * 3)
    assert hit.tolist() == [False, True, False] and not unknown.any()
    hit, unknown = point_in_regions(ra, dec, [f"Not ({small})"] * 3)
    assert hit.tolist() == [False, True, True] and not unknown.any()


def test_intersection_and_not_for_circles_are_never_wrongly_outside() -> None:
    big = s_region(square(62.0, -37.0, 0.4))
    small = s_region(square(62.0, -37.0, 0.1))
    ring = f"Intersection ICRS ({big} Not ({small}))"
    cases = [
        ((62.0, -37.0, 0.01), (False, True)),  # in the hole, too small to reach the ring
        ((62.0, -37.0, 0.2), (False, True)),  # in the hole, reaching the ring: undecided
        ((62.0, -36.8, 0.01), (True, False)),  # centre in the ring
        ((62.0, -36.0, 0.1), (False, False)),  # misses the big square: outside for sure
        ((62.0, -36.0, 0.8), (False, True)),  # meets the big square, centre outside it
    ]
    for (ra, dec, radius), expected in cases:
        hit, unknown = circle_meets_regions(ra, dec, radius, [ring])
        assert (bool(hit[0]), bool(unknown[0])) == expected, (ra, dec, radius)
        rows = circle_meets_regions([ra], [dec], [radius], [ring])
        assert (bool(rows[0][0]), bool(rows[1][0])) == expected


def test_unknown_members_make_unknown_never_outside() -> None:
    good = s_region(square(62.0, -37.0, 0.1))
    wide = "POLYGON ICRS 0 0 90 0 180 1 270 0"  # not within a hemisphere: unusable
    texts = [
        f"Union ICRS ({good} {wide})",
        f"Union ICRS ({good} POINT 200 10)",
        f"Intersection ICRS ({wide} {good})",
        "Difference ICRS (POLYGON 1 2 3 4 5 6 POLYGON 7 8 9 10 11 12)",
        "POLYGON GALACTIC 1 2 3 4 5 6",
    ]
    inside = point_in_regions(62.0, -37.0, texts)
    assert inside[0].tolist() == [True, True, False, False, False]
    assert inside[1].tolist() == [False, False, True, True, True]
    far = point_in_regions(100.0, 30.0, texts)
    assert not far[0].any()
    assert far[1].tolist() == [True, True, False, True, True]  # the good member rules it out
    packed = pack_regions(texts)
    assert packed.unknown.tolist() == [False, False, False, True, True]
    assert "hemisphere" in packed.reasons[texts[0]]


def test_point_regions_are_unknown() -> None:
    for text in ("POINT ICRS 10 20", "Position ICRS 10 20", "POSITION 10 20"):
        packed = pack_regions([text])
        hit, unknown = point_in_regions(10.0, 20.0, packed)
        assert not hit[0] and unknown[0]
        assert "POINT has no extent" in packed.reasons[text]


# -- DALI arrays ------------------------------------------------------------------------


def _dali(arrays, xtype: str | None) -> MaskedColumn:
    data = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        values = a if a is not None else []
        data[i] = np.ma.MaskedArray(values, mask=np.zeros(len(values), bool), dtype=float)
    column = MaskedColumn(data, mask=[a is None for a in arrays])
    if xtype:
        column.meta["xtype"] = xtype
    return column


def test_dali_arrays_read_by_xtype_and_exactly() -> None:
    flat = [x for vertex in SQUARE for x in vertex]
    column = _dali([flat, None, [62.0, -37.0, 0.05]], "polygon")
    packed = pack_regions(column)
    assert packed.unknown.tolist() == [False, True, True]  # 3 numbers are no polygon
    hit, _ = point_in_regions(62.0, -37.0, packed)
    assert hit.tolist() == [True, False, False]
    assert sregion.region_text(np.array(flat), "polygon") == "POLYGON ICRS " + _coords(SQUARE)
    assert parse_s_region(sregion.region_text(np.array(flat), "polygon")) == SQUARE
    circles = _dali([[62.0, -37.0, 0.05], [62.0, -37.2, 0.05]], "circle")
    assert point_in_regions(62.0, -37.0, circles)[0].tolist() == [True, False]
    points = _dali([[62.0, -37.0]], "point")
    assert point_in_regions(62.0, -37.0, points)[1].tolist() == [True]


def test_dali_arrays_without_xtype_by_count() -> None:
    flat = [x for vertex in SQUARE for x in vertex]
    column = _dali([flat, [62.0, -37.0, 0.05], [62.0, -37.0], [1.0, 2.0, 3.0, 4.0]], None)
    packed = pack_regions(column)
    assert packed.unknown.tolist() == [False, False, True, True]
    hit, _ = point_in_regions(62.0, -37.0, packed)
    assert hit.tolist() == [True, True, False, False]
    # fixed-size arrays (arraysize="8") arrive as a 2-D column
    fixed = MaskedColumn(np.array([flat, flat]), mask=np.array([[False] * 8, [True] * 8]))
    fixed.meta["xtype"] = "polygon"
    assert point_in_regions(62.0, -37.0, fixed)[0].tolist() == [True, False]


def test_dali_column_through_a_votable() -> None:
    """As pyvo hands it over: astropy's VOTable reader puts the xtype in ``meta``."""
    import io

    from astropy.io.votable import from_table, parse

    flat = [x for vertex in SQUARE for x in vertex]
    wound = [x for vertex in SQUARE[::-1] for x in vertex]
    table = Table({"obs_id": ["a", "b"], "s_region": _dali([flat, wound], "polygon")})
    for binary in (False, True):
        buffer = io.BytesIO()
        votable = from_table(table)
        votable.get_first_table().get_field_by_id("s_region").xtype = "polygon"
        votable.to_xml(buffer, tabledata_format="binary2" if binary else "tabledata")
        read = parse(io.BytesIO(buffer.getvalue())).get_first_table().to_table()
        assert read["s_region"].meta["xtype"] == "polygon"
        hit, unknown = point_in_regions(62.0, -37.0, read)  # the whole table: pack_rows
        assert hit.tolist() == [True, True] and not unknown.any()


# -- NULL s_region: ObsCore's s_ra, s_dec, s_fov ----------------------------------------


def _null_rows(upper: bool = False) -> Table:
    good = s_region(SQUARE)
    rows = Table(
        {
            "s_region": MaskedColumn(
                [good, "", "   ", "", "POINT ICRS 62 -37", "x"],
                mask=[False, True, False, True, False, False],
                dtype=object,
            ),
            "s_ra": MaskedColumn([62.0, 62.0, 62.0, 62.0, 62.0, 62.0], mask=[0, 0, 0, 1, 0, 0]),
            "s_dec": [-37.0, -37.0, -36.0, -37.0, -37.0, -37.0],
            "s_fov": [0.4, 0.2, 0.2, 0.2, 0.2, 0.2],
        }
    )
    if upper:
        rows.rename_columns(rows.colnames, [c.upper() for c in rows.colnames])
    return rows


@pytest.mark.parametrize("upper", [False, True], ids=["lower", "UPPER"])
def test_null_s_region_falls_back_to_the_s_fov_circle(upper: bool) -> None:
    rows = _null_rows(upper)
    packed = sregion.pack_rows(rows)
    # good, NULL -> circle, blank -> circle elsewhere, NULL without s_ra -> unknown,
    # POINT -> circle, unparseable -> unknown (no fallback: it said something)
    assert packed.unknown.tolist() == [False, False, False, True, False, True]
    hit, unknown = point_in_regions(62.0, -37.0, packed)
    assert hit.tolist() == [True, True, False, False, True, False]
    assert unknown.tolist() == [False, False, False, True, False, True]
    # the circle's radius is s_fov / 2: 0.1 deg
    near = circle_meets_regions(62.0, -37.0 + 0.15, 0.049, packed)[0]
    far = circle_meets_regions(62.0, -37.0 + 0.15, 0.051, packed)[0]
    assert not near[1] and far[1]
    assert pack_regions(rows).unknown.tolist() == packed.unknown.tolist()


def test_without_s_fov_a_null_row_is_unknown() -> None:
    rows = _null_rows()
    rows.remove_column("s_fov")
    assert sregion.pack_rows(rows).unknown.tolist() == [False, True, True, True, True, True]


def test_upper_case_columns_through_associate() -> None:
    a = s_region(square(0.0, 0.0, 0.2))
    rows = Table(
        {"OBS_PUBLISHER_DID": ["ivo://x?0", "ivo://x?1"], "S_REGION": [a, f"Union ICRS ({a} {a})"]}
    )
    out = associate(rows, [Target("in", 0.0, 0.0), Target("out", 5.0, 0.0)], intersects=True)
    assert sorted(map(str, out[TARGET_COLUMN])) == ["in", "in"]


# -- drawing --------------------------------------------------------------------------


def test_outlines_of_every_dialect() -> None:
    flat = [x for vertex in SQUARE for x in vertex]
    assert sregion.s_region_outlines(s_region(SQUARE)) == [SQUARE]
    assert sregion.s_region_outlines(_halves(SQUARE).encode()) == [
        SQUARE[:3],
        [SQUARE[2], SQUARE[3], SQUARE[0]],
    ]
    assert sregion.s_region_outlines(np.array(flat), "polygon") == [SQUARE]
    (ring,) = sregion.s_region_outlines("Circle ICRS 62 -37 0.1")
    separations = SkyCoord(*np.array(ring).T, unit="deg").separation(SkyCoord(62, -37, unit="deg"))
    assert np.allclose(separations.deg, 0.1, atol=1e-9)
    assert (
        len(
            sregion.s_region_outlines(f"Intersection ({s_region(SQUARE)} Not (CIRCLE 62 -37 0.01))")
        )
        == 2
    )
    for nothing in ("POINT ICRS 1 2", "nonsense", "", None, np.ma.masked, 17):
        assert sregion.s_region_outlines(nothing) == []


def test_footprint_map_draws_every_dialect() -> None:
    import io

    from obsharvest.products.quicklook import footprint_map_png

    flat = np.array([x for vertex in SQUARE for x in vertex])
    regions = [
        (s_region(SQUARE), "a", "contains", "visit"),
        (_halves(SQUARE), "b", "outside", "visit"),
        ("Circle ICRS 62 -37 0.1", "c", None, "coadd"),
        (sregion.region_text(flat, "polygon"), "d", None, "coadd"),
        ("POINT ICRS 62 -37", "e", None, "visit"),
        (None, "f", None, "visit"),
    ]
    buffer = io.BytesIO()
    footprint_map_png(Target("t", 62.0, -37.0), regions, buffer)
    assert buffer.getvalue()[:4] == b"\x89PNG"


# -- the Parquet writer keeps what was served -------------------------------------------


def test_metadata_writes_dali_and_null_s_region_as_served() -> None:
    import pyarrow as pa

    from obsharvest.metadata import obscore_to_arrow

    flat = [x for vertex in SQUARE for x in vertex]
    dali = Table({"obs_id": ["a", "b"], "s_region": _dali([flat, None], "polygon")})
    arrow = obscore_to_arrow(dali)
    assert arrow.schema.field("s_region").type == pa.list_(pa.float64())
    assert arrow.schema.field("s_region").metadata[b"xtype"] == b"polygon"
    assert arrow.column("s_region").to_pylist() == [flat, None]
    null = Table(
        {"s_region": MaskedColumn([s_region(SQUARE), ""], mask=[False, True], dtype=object)}
    )
    assert obscore_to_arrow(null).column("s_region").to_pylist() == [s_region(SQUARE), None]
