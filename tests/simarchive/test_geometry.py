"""Spherical geometry checked against independent astropy computations.

The reference for point-in-polygon is a TAN (gnomonic) WCS from astropy.wcs plus
a half-plane test in pixel space: TAN maps great circles to straight lines, so
for convex polygons that test is exact and shares no code with the module.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from obsharvest.simarchive.adql import geometry as g


def _tan_wcs(ra0: float, dec0: float) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [-1e-4, 1e-4]
    return w


def _reference_inside(vertices: list[tuple[float, float]], ra, dec, centre) -> np.ndarray:
    """Convex point-in-polygon via astropy's TAN projection and pixel half-planes."""
    w = _tan_wcs(*centre)
    vx, vy = w.all_world2pix(
        np.array([v[0] for v in vertices]), np.array([v[1] for v in vertices]), 0
    )
    px, py = w.all_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
    sides = []
    for i in range(len(vx)):
        j = (i + 1) % len(vx)
        sides.append((vx[j] - vx[i]) * (py - vy[i]) - (vy[j] - vy[i]) * (px - vx[i]))
    sides = np.array(sides)
    return (sides > 0).all(axis=0) | (sides < 0).all(axis=0)


def _rotated_square(ra0: float, dec0: float, half_diag: float, angle: float):
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    corners = centre.directional_offset_by(
        (angle + np.array([0, 90, 180, 270])) * u.deg, half_diag * u.deg
    )
    return [(float(c.ra.deg), float(c.dec.deg)) for c in corners]


def _contains_points(vertices, ra, dec) -> np.ndarray:
    poly = g.regions_from([g.make_polygon([v[0] for v in vertices], [v[1] for v in vertices])])
    result, null = g.contains(g.points(ra, dec), poly)
    assert not null.any()
    return result


@pytest.mark.parametrize("reverse", [False, True], ids=["ccw", "cw"])
def test_rotated_polygon_matches_wcs_reference(reverse: bool) -> None:
    verts = _rotated_square(150.0, -30.0, 0.2, 23.0)
    if reverse:
        verts = verts[::-1]
    rng = np.random.default_rng(42)
    ra = 150.0 + rng.uniform(-0.35, 0.35, 2000)
    dec = -30.0 + rng.uniform(-0.3, 0.3, 2000)
    expected = _reference_inside(verts, ra, dec, (150.0, -30.0))
    assert 200 < expected.sum() < 1800  # the sample really straddles the boundary
    np.testing.assert_array_equal(_contains_points(verts, ra, dec), expected)


def test_points_just_inside_and_outside_an_edge() -> None:
    verts = _rotated_square(80.0, 10.0, 0.3, 37.0)
    centre = SkyCoord(80.0 * u.deg, 10.0 * u.deg)
    a = SkyCoord(verts[0][0] * u.deg, verts[0][1] * u.deg)
    b = SkyCoord(verts[1][0] * u.deg, verts[1][1] * u.deg)
    mid_xyz = a.cartesian.xyz.value + b.cartesian.xyz.value
    mid = SkyCoord(*mid_xyz, representation_type="cartesian").spherical
    mid = SkyCoord(mid.lon, mid.lat)
    towards = mid.position_angle(centre)
    inner = mid.directional_offset_by(towards, 1e-5 * u.deg)
    outer = mid.directional_offset_by(towards + 180 * u.deg, 1e-5 * u.deg)
    ra = np.array([inner.ra.deg, outer.ra.deg])
    dec = np.array([inner.dec.deg, outer.dec.deg])
    np.testing.assert_array_equal(_contains_points(verts, ra, dec), [True, False])


def test_polygon_across_ra_zero() -> None:
    region = g.parse_region("POLYGON ICRS 359.9 -0.1 0.1 -0.1 0.1 0.1 359.9 0.1")
    ras = np.array([0.0, 359.95, 0.05, 359.85, 0.15, 180.0])
    decs = np.array([0.0, 0.05, -0.05, 0.0, 0.0, 0.0])
    got = _contains_points(region.vertices, ras, decs)
    np.testing.assert_array_equal(got, [True, True, True, False, False, False])
    circle = g.circles([359.99], [0.0], [0.05])
    hit, _ = g.intersects(circle, g.regions_from([region]))
    assert hit.tolist() == [True]


def test_polygon_around_the_pole_uses_great_circle_edges() -> None:
    verts = [(0.0, 89.9), (90.0, 89.9), (180.0, 89.9), (270.0, 89.9)]
    ra = np.array([0.0, 123.0, 45.0, 45.0, 10.0])
    dec = np.array([90.0, 89.95, 89.935, 89.92, 89.85])
    expected = _reference_inside(verts, ra, dec, (0.0, 90.0))
    # (45, 89.92) lies inside the Dec=89.9 parallel but outside the great-circle edge
    assert expected.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(_contains_points(verts, ra, dec), expected)


def test_circle_touching_an_edge_arc_from_outside() -> None:
    poly = g.regions_from([g.make_polygon([0.0, 20.0, 20.0, 0.0], [60.0, 60.0, 50.0, 50.0])])
    a = SkyCoord(0 * u.deg, 60 * u.deg).cartesian.xyz.value
    b = SkyCoord(20 * u.deg, 60 * u.deg).cartesian.xyz.value
    mid = SkyCoord(*(a + b), representation_type="cartesian").spherical
    closest = SkyCoord(mid.lon, mid.lat)
    centre = SkyCoord(10 * u.deg, 62 * u.deg)
    gap = centre.separation(closest).deg
    assert gap < 1.9  # the arc bulges north of the Dec=60 parallel (2 deg away)
    for radius, expected in [(gap + 1e-4, True), (gap - 1e-4, False)]:
        hit, _ = g.intersects(g.circles([10.0], [62.0], [radius]), poly)
        assert hit.tolist() == [expected]
        inside, _ = g.contains(g.points([10.0], [62.0]), poly)
        assert inside.tolist() == [False]


def test_circle_containing_the_whole_polygon() -> None:
    verts = _rotated_square(200.0, 45.0, 0.2, 10.0)
    poly = g.regions_from([g.make_polygon([v[0] for v in verts], [v[1] for v in verts])])
    big = g.circles([200.0], [45.0], [1.0])
    assert g.intersects(big, poly)[0].tolist() == [True]
    assert g.contains(poly, big)[0].tolist() == [True]
    assert g.contains(big, poly)[0].tolist() == [False]
    small = g.circles([200.0], [45.0], [0.05])
    assert g.contains(small, poly)[0].tolist() == [True]


def test_polygons_crossing_without_vertex_containment() -> None:
    # a plus sign: neither polygon has a vertex inside the other, only edges cross
    wide = g.make_polygon([9.0, 11.0, 11.0, 9.0], [-0.2, -0.2, 0.2, 0.2])
    tall = g.make_polygon([9.8, 10.2, 10.2, 9.8], [-1.0, -1.0, 1.0, 1.0])
    apart = g.make_polygon([12.0, 13.0, 13.0, 12.0], [-0.2, -0.2, 0.2, 0.2])
    regions = g.regions_from([wide, apart])
    hit, _ = g.intersects(g.regions_from([tall]), regions)
    assert hit.tolist() == [True, False]
    assert g.contains(g.regions_from([tall]), regions)[0].tolist() == [False, False]


def test_arcs_on_opposite_sides_of_the_sphere_do_not_cross() -> None:
    a, b = g.radec_to_xyz(-5.0, 0.0), g.radec_to_xyz(5.0, 0.0)
    c, d = g.radec_to_xyz(0.0, -5.0), g.radec_to_xyz(0.0, 5.0)
    far_c, far_d = g.radec_to_xyz(180.0, -5.0), g.radec_to_xyz(180.0, 5.0)
    assert bool(g.arcs_cross(a, b, c, d))
    assert not bool(g.arcs_cross(a, b, far_c, far_d))


def test_angular_separation_matches_skycoord() -> None:
    rng = np.random.default_rng(7)
    ra1, ra2 = rng.uniform(0, 360, (2, 500))
    dec1, dec2 = np.degrees(np.arcsin(rng.uniform(-1, 1, (2, 500))))
    expected = SkyCoord(ra1 * u.deg, dec1 * u.deg).separation(SkyCoord(ra2 * u.deg, dec2 * u.deg))
    np.testing.assert_allclose(g.angular_separation(ra1, dec1, ra2, dec2), expected.deg, atol=1e-10)


def test_parse_region_variants() -> None:
    poly = g.parse_region("Polygon ICRS 1 2 3 2 3 4 1 2")  # explicit closing vertex dropped
    assert poly == g.Polygon(((1.0, 2.0), (3.0, 2.0), (3.0, 4.0)))
    assert g.parse_region("CIRCLE 10 20 0.5") == g.Circle(10.0, 20.0, 0.5)
    assert g.parse_region("POINT ICRS -10 20") == g.Point(350.0, 20.0)
    assert g.parse_region(g.format_region(poly)) == poly


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("BLOB 1 2", "unknown region shape"),
        ("POLYGON ICRS 1 2 3 4", "even number"),
        ("POLYGON ICRS 1 2 3 4 5", "even number"),
        ("POLYGON GALACTIC 1 2 3 4 5 6", "GALACTIC"),
        ("CIRCLE ICRS 1 2", "3 numbers"),
        ("CIRCLE ICRS 1 2 -1", "radius"),
        ("POINT ICRS 1 abc", "non-numeric"),
        ("POINT ICRS 1 95", "declination"),
        ("POLYGON 1 2 1 2 1 2", "3 distinct"),
    ],
)
def test_malformed_region_strings(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        g.parse_region(text)


def test_parse_regions_marks_bad_and_missing_rows_null() -> None:
    regions = g.parse_regions(["POLYGON ICRS 1 2 3 2 3 4", "garbage", None, "CIRCLE 1 2 3"])
    assert regions.kind.tolist() == [g.POLYGON, g.NULL, g.NULL, g.CIRCLE]
    result, null = g.contains(g.points([2.5], [2.5]), regions)
    assert null.tolist() == [False, True, True, False]
    assert result.tolist() == [True, False, False, True]


def test_uniform_fast_path_matches_general_parser() -> None:
    rng = np.random.default_rng(3)
    texts = []
    for ra, dec in zip(rng.uniform(0, 360, 50), rng.uniform(-80, 80, 50), strict=True):
        verts = _rotated_square(ra, dec, 0.3, 15.0)
        texts.append("POLYGON ICRS " + " ".join(f"{a:.6f} {d:.6f}" for a, d in verts))
    fast = g.parse_regions(texts)
    slow = g.regions_from([g.parse_region(t) for t in texts])
    np.testing.assert_allclose(fast.vertices, slow.vertices, atol=1e-12)
    np.testing.assert_allclose(fast.center, slow.center, atol=1e-12)
    probe = g.points(rng.uniform(0, 360, 1), rng.uniform(-80, 80, 1))
    assert (g.contains(probe, fast)[0] == g.contains(probe, slow)[0]).all()
