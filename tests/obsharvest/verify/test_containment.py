"""Containment: s_region parsing, the header-WCS verdict, and header reads over HTTP.

The pure ``decide`` tests build their own headers (no network). The HTTP tests use their
own embedded archives (faults and URL lifetimes are changed per test, so the shared
session archive is left alone).
"""

from __future__ import annotations

import math
import pickle
import traceback

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from obsharvest.errors import (
    CorruptHeaderError,
    NotFoundError,
    NoWcsError,
    ReadError,
    SRegionError,
    TransientReadError,
    UrlExpiredError,
)
from obsharvest.models import Target, Verdict
from obsharvest.verify.containment import decide, parse_s_region, read_wcs_header, verify

TARGET_RA, TARGET_DEC = 62.0, -37.0  # the seed tutorial's point
NX, NY = 400, 300
SCALE = 2.0 / 3600  # deg per pixel


def tan_header(
    ra: float = TARGET_RA,
    dec: float = TARGET_DEC,
    *,
    rotation: float = 0.0,
    nx: int = NX,
    ny: int = NY,
    scale: float = SCALE,
    sip: dict[str, float] | None = None,
    frame: tuple[str, str] = ("RA---TAN", "DEC--TAN"),
) -> fits.Header:
    """An image header with a TAN (optionally TAN-SIP) WCS centred on (ra, dec)."""
    theta = math.radians(rotation)
    h = fits.Header()
    h["NAXIS"] = 2
    h["NAXIS1"], h["NAXIS2"] = nx, ny
    suffix = "-SIP" if sip else ""
    h["CTYPE1"], h["CTYPE2"] = frame[0] + suffix, frame[1] + suffix
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["CRPIX1"], h["CRPIX2"] = (nx + 1) / 2, (ny + 1) / 2
    h["CD1_1"] = -scale * math.cos(theta)
    h["CD1_2"] = scale * math.sin(theta)
    h["CD2_1"] = scale * math.sin(theta)
    h["CD2_2"] = scale * math.cos(theta)
    if sip:
        h["A_ORDER"] = h["B_ORDER"] = 3
        for key, value in sip.items():
            h[key] = value
    return h


def world_of(header: fits.Header, x: float, y: float) -> tuple[float, float]:
    ra, dec = WCS(header).all_pix2world([[x, y]], 0)[0]
    return float(ra) % 360.0, float(dec)


def point_at(header: fits.Header, x: float, y: float, name: str = "t", radius=None) -> Target:
    ra, dec = world_of(header, x, y)
    return Target(name, ra, dec, radius)


# -- parse_s_region -------------------------------------------------------------------


def test_parse_s_region_rubin_polygon():
    text = (
        "POLYGON ICRS 62.045708 -37.018191 62.177779 -36.787420 "
        "61.894356 -36.683272 61.761576 -36.913711"
    )
    vertices = parse_s_region(text)
    assert len(vertices) == 4
    assert vertices[0] == pytest.approx((62.045708, -37.018191))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POLYGON 1 2 3 4 5 6", [(1, 2), (3, 4), (5, 6)]),  # no frame token
        ("polygon icrs 1 2 3 4 5 6", [(1, 2), (3, 4), (5, 6)]),
        ("POLYGON ICRS 1 2 3 4 5 6 1 2", [(1, 2), (3, 4), (5, 6)]),  # closed ring
        ("POLYGON ICRS -0.5 1 360.5 2 3 4", [(359.5, 1), (0.5, 2), (3, 4)]),
        ("  POLYGON\tICRS 1e1 2 3 4 5 6\n", [(10, 2), (3, 4), (5, 6)]),
    ],
)
def test_parse_s_region_accepts(text, expected):
    assert parse_s_region(text) == [pytest.approx(v) for v in expected]


@pytest.mark.parametrize(
    "text",
    [
        "CIRCLE ICRS 62 -37 0.1",
        "Union ICRS (POLYGON 1 2 3 4 5 6 POLYGON 7 8 9 10 11 12)",
        "POLYGON ICRS 1 2 3 4 5 6 POLYGON ICRS 7 8 9 10 11 12",
        "POLYGON ICRS 1 2 3 4 5",  # odd count
        "POLYGON ICRS 1 2 3 4",  # two vertices
        "POLYGON ICRS 1 2 3 four 5 6",
        "POLYGON ICRS 1 2 3 NaN 5 6",
        "POLYGON ICRS 1 2 3 inf 5 6",
        "POLYGON ICRS 1 2 3 95 5 6",  # dec out of range
        "POLYGON GALACTIC 1 2 3 4 5 6",
        "POLYGON",
        "",
        None,
    ],
)
def test_parse_s_region_rejects(text):
    with pytest.raises(SRegionError) as info:
        parse_s_region(text)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_parse_s_region_error_quotes_truncated_text():
    text = "CIRCLE ICRS " + " ".join(["62.0"] * 500)
    with pytest.raises(SRegionError) as info:
        parse_s_region(text)
    message = str(info.value)
    assert "CIRCLE ICRS 62.0" in message and len(message) < 150


# -- decide: pure, on synthetic headers -----------------------------------------------


@pytest.mark.parametrize("rotation", [0.0, 30.0, 137.0])
def test_rotated_tan_matches_pixel_grid(rotation):
    header = tan_header(rotation=rotation)
    rng = np.random.default_rng(int(rotation))
    for x, y in rng.uniform([-60, -60], [NX + 60, NY + 60], size=(300, 2)):
        result = decide(header, (NX, NY), point_at(header, x, y))
        inside = -0.5 <= x < NX - 0.5 and -0.5 <= y < NY - 0.5
        assert result.verdict == (Verdict.CONTAINS if inside else Verdict.OUTSIDE), (x, y)
        assert result.x == pytest.approx(x, abs=1e-6)
        assert result.y == pytest.approx(y, abs=1e-6)


@pytest.mark.parametrize("rotation", [30.0, 137.0])
@pytest.mark.parametrize(
    ("x", "y", "verdict"),
    [
        (-0.5 + 1e-4, 150.0, Verdict.CONTAINS),
        (-0.5 - 1e-4, 150.0, Verdict.OUTSIDE),
        (NX - 0.5 - 1e-4, 150.0, Verdict.CONTAINS),
        (NX - 0.5 + 1e-4, 150.0, Verdict.OUTSIDE),
        (200.0, -0.5 + 1e-4, Verdict.CONTAINS),
        (200.0, -0.5 - 1e-4, Verdict.OUTSIDE),
        (200.0, NY - 0.5 - 1e-4, Verdict.CONTAINS),
        (200.0, NY - 0.5 + 1e-4, Verdict.OUTSIDE),
    ],
)
def test_edge_plus_minus_epsilon(rotation, x, y, verdict):
    header = tan_header(rotation=rotation)
    assert decide(header, (NX, NY), point_at(header, x, y)).verdict == verdict


def test_ra_wrap():
    header = tan_header(ra=0.0, dec=0.0)  # spans RA 359.8 .. 0.2
    for ra in (359.99, 0.01, 0.0):
        result = decide(header, (NX, NY), Target("t", ra, 0.0))
        assert result.verdict == Verdict.CONTAINS, ra
    assert decide(header, (NX, NY), Target("t", 359.7, 0.0)).verdict == Verdict.OUTSIDE
    assert decide(header, (NX, NY), Target("t", 0.3, 0.0)).verdict == Verdict.OUTSIDE
    # east is to the left: 0.01 deg lies at smaller x than 359.99 deg
    west = decide(header, (NX, NY), Target("t", 359.99, 0.0))
    east = decide(header, (NX, NY), Target("t", 0.01, 0.0))
    assert east.x < west.x


def test_near_the_pole():
    header = tan_header(ra=10.0, dec=89.9, scale=5.0 / 3600)  # 0.56 x 0.42 deg: covers the pole
    shape = (NX, NY)
    assert decide(header, shape, Target("pole", 123.0, 90.0)).verdict == Verdict.CONTAINS
    # across the pole from the image centre, 0.15 deg away: still on the pixels
    across = decide(header, shape, Target("across", 190.0, 89.95))
    assert across.verdict == Verdict.CONTAINS
    # same side-of-pole geometry but 0.35 deg past the pole: beyond the 0.21 deg half-height
    assert decide(header, shape, Target("far", 190.0, 89.65)).verdict == Verdict.OUTSIDE
    # pixel-generated points across the pole agree with the grid
    for x, y in [(10, 10), (390, 290), (-5, 150), (200, 305)]:
        result = decide(header, shape, point_at(header, x, y))
        inside = -0.5 <= x < NX - 0.5 and -0.5 <= y < NY - 0.5
        assert result.verdict == (Verdict.CONTAINS if inside else Verdict.OUTSIDE)


@pytest.mark.parametrize(("ra", "dec"), [(242.0, 37.0), (242.0, 20.0), (152.0, -37.0)])
def test_far_side_of_the_sky_is_outside_not_error(ra, dec):
    header = tan_header()
    result = decide(header, (NX, NY), Target("far", ra, dec))
    assert result.verdict == Verdict.OUTSIDE
    assert result.x is None and "deg from the image centre" in result.reason
    circle = decide(header, (NX, NY), Target("far", ra, dec, radius=10.0))
    assert circle.verdict == Verdict.OUTSIDE


def test_radius_circle_crossing_an_edge():
    header = tan_header(rotation=30.0)
    target = point_at(header, -20.0, 150.0)  # 19.5 px left of the grid edge
    assert decide(header, (NX, NY), target).verdict == Verdict.OUTSIDE
    near = Target("t", target.ra, target.dec, radius=21 * SCALE)
    result = decide(header, (NX, NY), near)
    assert result.verdict == Verdict.CONTAINS
    assert result.x == pytest.approx(-20.0, abs=1e-6)
    short = Target("t", target.ra, target.dec, radius=18 * SCALE)
    assert decide(header, (NX, NY), short).verdict == Verdict.OUTSIDE


def test_radius_near_a_corner_is_exact():
    """Centre diagonal to the corner, 9.5*sqrt(2) = 13.435 px from it."""
    header = tan_header(rotation=137.0)
    centre = point_at(header, -10.0, -10.0)
    for radius_px, verdict in [(13.3, Verdict.OUTSIDE), (13.6, Verdict.CONTAINS)]:
        target = Target("t", centre.ra, centre.dec, radius=radius_px * SCALE)
        assert decide(header, (NX, NY), target).verdict == verdict, radius_px


def test_image_entirely_inside_a_big_circle():
    header = tan_header()
    ra, dec = TARGET_RA, TARGET_DEC + 2.0  # 2 deg north; the image is 0.22 x 0.17 deg
    assert decide(header, (NX, NY), Target("t", ra, dec, radius=3.0)).verdict == Verdict.CONTAINS
    assert decide(header, (NX, NY), Target("t", ra, dec, radius=1.5)).verdict == Verdict.OUTSIDE
    # centre on the image, circle much larger than it
    big = decide(header, (NX, NY), Target("t", TARGET_RA, TARGET_DEC, radius=5.0))
    assert big.verdict == Verdict.CONTAINS


def test_radius_circle_inside_the_image():
    header = tan_header()
    assert decide(header, (NX, NY), point_at(header, 200, 150, radius=1e-3)).verdict == "contains"


def test_margin():
    header = tan_header(rotation=30.0)
    target = point_at(header, -3.0, 100.0)
    assert decide(header, (NX, NY), target).verdict == Verdict.OUTSIDE
    assert decide(header, (NX, NY), target, margin_px=5.0).verdict == Verdict.CONTAINS
    inner = point_at(header, 3.0, 100.0)
    assert decide(header, (NX, NY), inner, margin_px=-5.0).verdict == Verdict.OUTSIDE


def test_tan_sip_converges_and_agrees_with_astropy():
    """DP1-style headers: TAN-SIP with distortion of a few pixels."""
    sip = {"A_2_0": 2e-6, "A_0_2": -1e-6, "B_1_1": 3e-6, "A_3_0": 1e-9, "B_0_3": -1e-9}
    header = tan_header(rotation=30.0, sip=sip)
    for x, y in [(0.0, 0.0), (399.4, 299.4), (-0.6, 10.0), (200.0, 299.6)]:
        result = decide(header, (NX, NY), point_at(header, x, y))
        inside = -0.5 <= x < NX - 0.5 and -0.5 <= y < NY - 0.5
        assert result.verdict == (Verdict.CONTAINS if inside else Verdict.OUTSIDE)
        assert result.x == pytest.approx(x, abs=1e-3) and result.y == pytest.approx(y, abs=1e-3)


def test_sip_not_converging_is_error_not_outside():
    sip = {"A_2_0": 5e-2, "B_0_2": 5e-2, "A_1_1": 3e-2, "B_1_1": -3e-2}
    header = tan_header(scale=20.0 / 3600, sip=sip)
    target = Target("t", 62.05, -36.95)
    result = decide(header, (NX, NY), target)
    assert result.verdict == Verdict.ERROR
    assert "NoConvergence" in result.reason
    # the trap this avoids: astropy's footprint_contains says "outside"
    assert not WCS(header).footprint_contains(SkyCoord(62.05, -36.95, unit="deg"))


def test_singular_matrix_is_error():
    header = tan_header()
    # rank 1 (an all-zero CD would be replaced by the identity by astropy's cdfix)
    header["CD1_1"] = header["CD1_2"] = header["CD2_1"] = header["CD2_2"] = SCALE
    result = decide(header, (NX, NY), Target("t", TARGET_RA, TARGET_DEC))
    assert result.verdict == Verdict.ERROR and result.reason


def test_header_without_wcs_raises_no_wcs():
    header = fits.Header({"NAXIS": 2, "NAXIS1": NX, "NAXIS2": NY, "EXPTIME": 30.0})
    with pytest.raises(NoWcsError):
        decide(header, (NX, NY), Target("t", TARGET_RA, TARGET_DEC))


def test_swapped_axes_and_galactic_frame():
    swapped = tan_header(frame=("DEC--TAN", "RA---TAN"))
    swapped["CRVAL1"], swapped["CRVAL2"] = TARGET_DEC, TARGET_RA
    ra, dec = WCS(swapped).all_pix2world([[50.0, 60.0]], 0)[0][::-1]
    assert decide(swapped, (NX, NY), Target("t", ra, dec)).verdict == Verdict.CONTAINS
    galactic = tan_header(ra=240.0, dec=-50.0, frame=("GLON-TAN", "GLAT-TAN"))
    for x, verdict in [(50.0, Verdict.CONTAINS), (-2.0, Verdict.OUTSIDE)]:
        lon, lat = WCS(galactic).all_pix2world([[x, 60.0]], 0)[0]
        icrs = SkyCoord(lon, lat, unit="deg", frame="galactic").icrs
        result = decide(galactic, (NX, NY), Target("t", icrs.ra.deg, icrs.dec.deg))
        assert result.verdict == verdict
        assert result.x == pytest.approx(x, abs=1e-6)


# -- reading headers from files (local paths go through fsspec too) -------------------


def write(path, *hdus) -> str:
    fits.HDUList(list(hdus)).writeto(path)
    return str(path)


def test_read_wcs_header_local_calexp_and_raw_layouts(tmp_path):
    image = fits.ImageHDU(np.zeros((NY, NX), np.float32), header=tan_header(), name="IMAGE")
    calexp = write(tmp_path / "calexp.fits", fits.PrimaryHDU(), image, fits.ImageHDU(name="MASK"))
    index, header, shape = read_wcs_header(calexp)
    assert (index, shape, header["CTYPE1"]) == (1, (NX, NY), "RA---TAN")
    raw = write(tmp_path / "raw.fits", fits.PrimaryHDU(np.zeros((NY, NX)), header=tan_header()))
    assert read_wcs_header(raw)[0] == 0


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # the broken HDU
def test_no_wcs_and_corrupt_files(tmp_path):
    plain = write(tmp_path / "plain.fits", fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 3))))
    with pytest.raises(NoWcsError):
        read_wcs_header(plain)
    targets = [Target("a", 1.0, 2.0), Target("b", 3.0, 4.0)]
    assert {v.verdict for v in verify(plain, targets).values()} == {Verdict.NO_WCS}

    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"this is not FITS" * 400)
    with pytest.raises(CorruptHeaderError):
        read_wcs_header(str(garbage))
    assert {v.verdict for v in verify(str(garbage), targets).values()} == {Verdict.ERROR}

    # a good primary header followed by a broken one: corrupt, not "no WCS"
    broken = tmp_path / "broken.fits"
    broken.write_bytes(fits.PrimaryHDU().header.tostring().encode() + b"XTENSION= junk" * 300)
    with pytest.raises(CorruptHeaderError):
        read_wcs_header(str(broken))

    with pytest.raises(NotFoundError):
        read_wcs_header(str(tmp_path / "missing.fits"))


def test_errors_pickle_with_url_and_status():
    error = UrlExpiredError("HTTP 403", url="http://h/p.fits?Signature=abc", status=403)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.url, copy.status) == (
        UrlExpiredError,
        "HTTP 403",
        "http://h/p.fits",
        403,
    )


# -- over HTTP, against the embedded archive -----------------------------------------


@pytest.fixture(scope="module")
def small_archive():
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings(n_visits=24)) as running:
        yield running


def file_urls(archive, where: str, limit: int = 1000) -> list[tuple[str, str, int]]:
    """``(obs_publisher_did, signed #this URL, content_length)`` for ObsCore rows."""
    import pyvo

    rows = pyvo.dal.TAPService(archive.tap_url).search(
        f"SELECT TOP {limit} obs_publisher_did, access_url FROM ivoa.ObsCore WHERE {where}"
    )
    out = []
    for row in rows:
        links = pyvo.dal.adhoc.DatalinkResults.from_result_url(row["access_url"])
        this = next(link for link in links if link["semantics"] == "#this")
        out.append((row["obs_publisher_did"], this["access_url"], int(this["content_length"])))
    return out


def assert_no_secret(error: BaseException) -> None:
    """Nor in the message, nor in a chained exception that a traceback would print."""
    assert error.__cause__ is None and error.__suppress_context__
    text = str(error) + repr(error) + "".join(traceback.format_exception_only(error))
    assert "Signature=" not in text and "Expires=" not in text
    if isinstance(error, ReadError) and error.url:
        assert "?" not in error.url


def test_verdicts_equal_archive_truth(small_archive):
    where = (
        f"CONTAINS(POINT('ICRS', {TARGET_RA}, {TARGET_DEC}), s_region) = 1 "
        "AND dataproduct_subtype = 'lsst.calexp'"
    )
    images = file_urls(small_archive, where)
    assert len(images) > 5
    target = Target("seed", TARGET_RA, TARGET_DEC)
    contains = {
        did for did, url, _ in images if verify(url, [target])["seed"].verdict == Verdict.CONTAINS
    }
    truth = small_archive.truth(TARGET_RA, TARGET_DEC) & {did for did, _, _ in images}
    assert contains == truth
    assert len(contains) < len(images)  # the padded s_region returned some misses


def test_one_header_read_for_many_targets(small_archive):
    _, url, _ = file_urls(small_archive, "dataproduct_subtype = 'lsst.calexp'", limit=1)[0]
    index, header, shape = read_wcs_header(url)
    ra, dec = world_of(header, 10.0, 10.0)
    targets = [Target(f"t{i}", ra, dec + i * 1e-3) for i in range(5)]
    small_archive.reset_stats()
    result = verify(url, targets)
    files = small_archive.stats()["files"]
    assert set(result) == {t.name for t in targets}
    assert files["requests"] <= 2  # HEAD for the size, one range GET
    assert result["t0"].verdict == Verdict.CONTAINS and result["t0"].hdu == index


def test_raw_has_wcs_in_primary(small_archive):
    raws = file_urls(small_archive, "calib_level = 1", limit=1)
    if not raws:
        pytest.skip("archive serves no raws")
    assert read_wcs_header(raws[0][1])[0] == 0


def test_expired_and_tampered_urls(small_archive):
    _, url, _ = file_urls(small_archive, "dataproduct_subtype = 'lsst.calexp'", limit=1)[0]
    tampered = url.replace("Signature=", "Signature=AAAA")
    signer = small_archive.signer
    path = url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
    lifetime, signer.lifetime = signer.lifetime, -60.0
    try:
        from urllib.parse import unquote

        expired = signer.sign(small_archive.signed_base_url, "/" + unquote(path))
    finally:
        signer.lifetime = lifetime
    for bad in (tampered, expired):
        with pytest.raises(UrlExpiredError) as info:
            read_wcs_header(bad)
        assert info.value.status == 403
        assert_no_secret(info.value)
        with pytest.raises(UrlExpiredError):
            verify(bad, [Target("t", TARGET_RA, TARGET_DEC)])


def test_not_found(small_archive):
    url = small_archive.signer.sign(small_archive.signed_base_url, "/files/dp02/nope.fits")
    with pytest.raises(NotFoundError) as info:
        read_wcs_header(url)
    assert info.value.status == 404
    assert_no_secret(info.value)


@pytest.mark.parametrize("kind", ["drop", "unavailable", "truncate"])
def test_transient_failures(small_archive, kind):
    from obsharvest.simarchive.faults import FaultPlan, FaultSpec

    _, url, _ = file_urls(small_archive, "dataproduct_subtype = 'lsst.calexp'", limit=1)[0]
    small_archive.set_faults(FaultPlan({"files": FaultSpec(**{kind: 1.0})}))
    try:
        with pytest.raises(TransientReadError) as info:
            read_wcs_header(url)
        with pytest.raises(TransientReadError):
            verify(url, [Target("t", TARGET_RA, TARGET_DEC)])
    finally:
        small_archive.set_faults(FaultPlan())
    assert_no_secret(info.value)
    assert read_wcs_header(url)[0] == 1  # and it works again


def test_connection_refused_is_transient():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientReadError) as info:
        read_wcs_header(f"http://127.0.0.1:{port}/x.fits?Signature=abc&Expires=1")
    assert_no_secret(info.value)


def test_full_size_calexp_header_read_fetches_under_a_thousandth():
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings(n_visits=1, binning=1)) as archive:
        import pyvo

        row = pyvo.dal.TAPService(archive.tap_url).search(
            "SELECT TOP 1 access_url FROM ivoa.ObsCore WHERE dataproduct_subtype = 'lsst.calexp'"
        )[0]
        links = pyvo.dal.adhoc.DatalinkResults.from_result_url(row["access_url"])
        this = next(link for link in links if link["semantics"] == "#this")
        size = int(this["content_length"])
        archive.reset_stats()
        index, header, shape = read_wcs_header(this["access_url"])
        fetched = archive.stats()["files"]["bytes"]
    assert size > 150e6
    assert (index, shape) == (1, (4072, 4000))
    assert fetched < 0.001 * size, fetched


def test_one_wcs_is_built_per_verified_header(monkeypatch, tmp_path):
    """Building a WCS is the largest cost of a verdict: the HDU found celestial is the one
    the footprint uses (one build), and an HDU whose CTYPEs name no celestial axis (a
    primary header with none) costs none."""
    import io

    from astropy.io import fits
    from astropy.wcs import WCS as AstropyWCS

    from obsharvest.verify import containment

    image = fits.ImageHDU(data=np.zeros((20, 30), dtype=np.float32))
    for key, value in {
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CRVAL1": 62.0,
        "CRVAL2": -37.0,
        "CRPIX1": 15.5,
        "CRPIX2": 10.5,
        "CD1_1": -1e-4,
        "CD2_2": 1e-4,
    }.items():
        image.header[key] = value
    data = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), image]).writeto(data)
    built = []

    def counting(header, *args, **kwargs):
        built.append(header)
        return AstropyWCS(header, *args, **kwargs)

    monkeypatch.setattr(containment, "WCS", counting)
    verdicts = containment.verify(
        "file:///x.fits",
        [Target("on", 62.0, -37.0), Target("off", 63.0, -37.0)],
        opened=io.BytesIO(data.getvalue()),
    )
    assert verdicts["on"].verdict == Verdict.CONTAINS
    assert verdicts["off"].verdict == Verdict.OUTSIDE
    assert len(built) == 1


def _mixed_targets(header: fits.Header) -> list[Target]:
    """In, out, on either side of an edge, circles over an edge, beyond the gate (near
    and on the far side of the sky), and a target with no finite position."""
    targets = [
        point_at(header, 10.0, 20.0, "in"),
        point_at(header, NX - 0.4, 100.0, "edge-out"),
        point_at(header, NX - 0.6, 100.0, "edge-in"),
        point_at(header, -30.0, -40.0, "out"),
        point_at(header, -30.0, 150.0, "circle-over-edge", radius=40 * SCALE),
        point_at(header, 200.0, 150.0, "circle-inside", radius=5 * SCALE),
        point_at(header, 3 * NX, 2 * NY, "beyond-the-gate"),
        Target("far-side", (TARGET_RA + 180.0) % 360.0, -TARGET_DEC),
        Target("nan", float("nan"), TARGET_DEC),
    ]
    return targets + [
        point_at(header, x, y, f"grid-{x}-{y}") for x in (0.0, 133.3, 399.4) for y in (0, 299.4)
    ]


@pytest.mark.parametrize(
    "sip", [None, {"A_2_0": 2e-6, "A_0_2": -1e-6, "B_1_1": 3e-6}], ids=["tan", "tan-sip"]
)
def test_all_targets_of_an_image_at_once_decide_as_one_at_a_time(sip, monkeypatch):
    """decide_all finds every target's pixel in one transform; each verdict, position and
    reason is decide's for that target alone."""
    from obsharvest.verify.containment import _Footprint

    header = tan_header(rotation=20.0, sip=sip)
    footprint = _Footprint.build(header, (NX, NY), 0.0, 1)
    targets = _mixed_targets(header)
    one_at_a_time = []
    real = _Footprint._pixel
    monkeypatch.setattr(
        _Footprint, "_pixel", lambda self, *a: one_at_a_time.append(a) or real(self, *a)
    )
    together = footprint.decide_all(targets)
    assert one_at_a_time == []  # every position came from the vectorised transforms
    alone = [footprint.decide(t) for t in targets]
    for t, a, b in zip(targets, together, alone, strict=True):
        assert (a.verdict, a.reason, a.hdu, a.grid) == (b.verdict, b.reason, b.hdu, b.grid), t.name
        for got, want in ((a.x, b.x), (a.y, b.y)):
            assert (got is None) == (want is None), t.name
            assert got is None or got == pytest.approx(want, abs=1e-9), t.name
    verdicts = {t.name: c.verdict for t, c in zip(targets, together, strict=True)}
    assert verdicts["in"] == verdicts["edge-in"] == verdicts["circle-over-edge"] == Verdict.CONTAINS
    assert verdicts["edge-out"] == verdicts["out"] == verdicts["far-side"] == Verdict.OUTSIDE
    assert verdicts["nan"] == Verdict.ERROR


def test_a_group_that_does_not_converge_is_decided_one_target_at_a_time():
    """A SIP that diverges for one target: the vectorised transform raises for the group,
    and each target gets decide's own verdict (the diverging one ERROR, in its words)."""
    from obsharvest.verify.containment import _Footprint

    sip = {"A_2_0": 5e-2, "B_0_2": 5e-2, "A_1_1": 3e-2, "B_1_1": -3e-2}
    header = tan_header(scale=20.0 / 3600, sip=sip)
    footprint = _Footprint.build(header, (NX, NY), 0.0, None)
    targets = [Target("t", 62.05, -36.95), point_at(header, 1.0, 1.0, "corner")]
    together = footprint.decide_all(targets)
    alone = [footprint.decide(t) for t in targets]
    assert [(c.verdict, c.reason, c.x, c.y) for c in together] == [
        (c.verdict, c.reason, c.x, c.y) for c in alone
    ]
    assert together[0].verdict == Verdict.ERROR and "NoConvergence" in together[0].reason
