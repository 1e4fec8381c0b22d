"""The plain header walk (``verify/cards.py``): the same HDU, grid and verdicts as
astropy's reading, from the card images alone; and None, never a guess, where it cannot
be sure (then astropy's reading decides)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from obsharvest.models import Target, Verdict
from obsharvest.verify import cards, containment

from .test_containment import NX, NY, point_at, tan_header

SIP = {"A_2_0": 2e-6, "A_0_2": -1e-6, "B_1_1": 3e-6, "B_2_1": 1e-9, "A_3_0": 5e-10}


def fits_bytes(*hdus) -> bytes:
    out = io.BytesIO()
    fits.HDUList(list(hdus)).writeto(out)
    return out.getvalue()


def calexp(header: fits.Header | None = None) -> bytes:
    """A DP0.2 calexp's layout: empty primary, IMAGE with the WCS, MASK, VARIANCE."""
    header = header if header is not None else tan_header()
    image = fits.ImageHDU(np.zeros((NY, NX), np.float32), header=header, name="IMAGE")
    mask = fits.ImageHDU(np.zeros((NY, NX), np.int32), header=header, name="MASK")
    return fits_bytes(fits.PrimaryHDU(), image, mask)


def test_finds_the_calexp_image_header_with_its_grid():
    data = calexp()
    found = cards.first_celestial(io.BytesIO(data))
    assert found is not None
    assert (found.hdu, found.shape) == (1, (NX, NY))
    header = fits.Header.fromstring(found.text.decode("ascii"))
    assert header["EXTNAME"] == "IMAGE" and header["CTYPE1"] == "RA---TAN"
    assert found.text.endswith(b"END" + b" " * 77)


def test_skips_data_before_the_celestial_header():
    """A primary HDU with pixels and no WCS, a table, then the image: the data sizes
    (BITPIX x NAXISn, PCOUNT/GCOUNT of a table) place each next header."""
    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.arange(7.0))])
    raw = fits_bytes(
        fits.PrimaryHDU(np.zeros((5, 7), np.int16)),
        table,
        fits.ImageHDU(np.zeros((NY, NX), np.float64), header=tan_header()),
    )
    found = cards.first_celestial(io.BytesIO(raw))
    assert found is not None and (found.hdu, found.shape) == (2, (NX, NY))


def test_tile_compressed_image_reports_its_image_grid():
    image = fits.CompImageHDU(np.zeros((NY, NX), np.float32), header=tan_header())
    found = cards.first_celestial(io.BytesIO(fits_bytes(fits.PrimaryHDU(), image)))
    assert found is not None and (found.hdu, found.shape) == (1, (NX, NY))
    assert b"ZIMAGE  =                    T" in found.text


def test_alternate_celestial_axes_count():
    header = tan_header(frame=("LINEAR", "LINEAR"))
    header["CTYPE1A"], header["CTYPE2A"] = "RA---TAN", "DEC--TAN"
    found = cards.first_celestial(
        io.BytesIO(
            fits_bytes(
                fits.PrimaryHDU(), fits.ImageHDU(np.zeros((NY, NX), np.float32), header=header)
            )
        )
    )
    assert found is not None and found.hdu == 1


@pytest.mark.parametrize(
    "case",
    ["not fits", "truncated header", "no grid", "random groups", "no celestial axis"],
)
def test_none_where_it_cannot_be_sure(case):
    if case == "not fits":
        data = b"<html>error</html>" * 400
    elif case == "truncated header":
        data = calexp()[: 2880 + 800]  # the IMAGE header stops before its END
    elif case == "no grid":
        header = tan_header()
        data = fits_bytes(fits.PrimaryHDU(header=header))  # celestial, NAXIS = 0
    elif case == "random groups":
        primary = fits.Header.fromstring(
            "".join(
                f"{k:8}= {v:>20}".ljust(80)
                for k, v in [
                    ("SIMPLE", "T"),
                    ("BITPIX", -32),
                    ("NAXIS", 2),
                    ("NAXIS1", 0),
                    ("NAXIS2", 3),
                    ("GROUPS", "T"),
                    ("PCOUNT", 1),
                    ("GCOUNT", 2),
                ]
            )
            + "END".ljust(80)
        )
        groups = primary.tostring().encode() + bytes(2880)  # 2 x (1 + 3) floats, padded
        data = (
            groups
            + fits.ImageHDU(np.zeros((NY, NX)), header=tan_header()).header.tostring().encode()
        )
    else:
        data = fits_bytes(fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 3))))
    assert cards.first_celestial(io.BytesIO(data)) is None


def icrs_point_at(header: fits.Header, x: float, y: float, name: str, radius=None) -> Target:
    """A target at a pixel of a galactic header, in ICRS as every Target is."""
    galactic = point_at(header, x, y, name)
    icrs = SkyCoord(galactic.ra, galactic.dec, unit="deg", frame="galactic").icrs
    return Target(name, float(icrs.ra.deg), float(icrs.dec.deg), radius)


def test_quoted_strings_with_embedded_quotes_and_comments():
    assert cards._string(b"'RA---TAN'           / the axis") == b"RA---TAN"
    assert cards._string(b"'O''HARA '") == b"O'HARA "
    assert cards._string(b"42") is None
    assert cards._string(b"'unterminated") is None


@pytest.mark.parametrize("sip", [None, SIP], ids=["tan", "tan-sip"])
@pytest.mark.parametrize("frame", [("RA---TAN", "DEC--TAN"), ("GLON-TAN", "GLAT-TAN")])
def test_verdicts_from_card_images_equal_astropy_header_verdicts(sip, frame):
    """verify() reads the card images (no astropy Header) and decides as the astropy
    header decides, target by target, pixel for pixel."""
    header = tan_header(sip=sip, frame=frame)
    data = calexp(header)
    index, text, shape = containment.read_celestial("http://x/c.fits", opened=io.BytesIO(data))
    assert isinstance(text, bytes)  # the plain walk answered
    astropy_header = fits.open(io.BytesIO(data))[1].header
    at = point_at if frame[0].startswith("RA") else icrs_point_at
    targets = [
        at(header, 10.0, 20.0, "in"),
        at(header, NX - 0.4, 100.0, "edge-out"),
        at(header, NX - 0.6, 100.0, "edge-in"),
        at(header, -30.0, -40.0, "out"),
        at(header, -30.0, 150.0, "circle", radius=40 * 2.0 / 3600),
    ]
    got = containment.verify("http://x/c.fits", targets, opened=io.BytesIO(data))
    for t in targets:
        expected = containment.decide(astropy_header, shape, t, hdu=index)
        assert got[t.name].verdict == expected.verdict, t.name
        assert got[t.name].x == pytest.approx(expected.x, abs=1e-9)
        assert got[t.name].y == pytest.approx(expected.y, abs=1e-9)
    verdicts = {n: c.verdict for n, c in got.items()}
    assert verdicts == {
        "in": Verdict.CONTAINS,
        "edge-out": Verdict.OUTSIDE,
        "edge-in": Verdict.CONTAINS,
        "out": Verdict.OUTSIDE,
        "circle": Verdict.CONTAINS,
    }


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # the odd byte
def test_astropy_decides_what_the_plain_walk_cannot(monkeypatch):
    """A header wcslib cannot read from its text (here: a byte outside ASCII) goes back to
    astropy's reading from the start of the stream, which words the verdict."""
    data = bytearray(calexp())
    at = data.index(b"EXTNAME =")
    data[at + 20] = 0xE9  # inside the EXTNAME value: astropy copes, the text decode does not
    walked = []
    real = cards.first_celestial
    monkeypatch.setattr(cards, "first_celestial", lambda s: walked.append(1) or real(s))
    index, header, shape = containment.read_celestial(
        "http://x/c.fits", opened=io.BytesIO(bytes(data))
    )
    assert walked == [1]
    assert isinstance(header, fits.Header)  # astropy's reading answered
    assert (index, shape) == (1, (NX, NY))


def _header_text(header: fits.Header) -> bytes:
    return header.tostring().encode("ascii")


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
@pytest.mark.parametrize(
    "header",
    [
        tan_header(),
        tan_header(rotation=33.0, frame=("GLON-TAN", "GLAT-TAN")),
        fits.Header({**tan_header(), "RADESYS": "FK5", "EQUINOX": 1950.0, "MJD-OBS": 60000.5}),
        fits.Header({**tan_header(), "CTYPE1": "RA---ZEA", "CTYPE2": "DEC--ZEA"}),
    ],
    ids=["tan", "galactic-rotated", "fk5-b1950", "zea"],
)
def test_wcslib_builds_the_same_wcs_as_astropy_from_plain_card_images(header):
    """Where astropy would add nothing to wcslib (no SIP, lookup tables or PV), the WCS
    built straight from the text is astropy's, keyword for keyword, pixel for pixel."""
    from astropy.wcs import WCS

    text = _header_text(header)
    direct, reference = containment._wcslib_wcs(text), WCS(header)
    assert direct is not None
    assert direct.wcs.to_header() == reference.wcs.to_header()
    pixels = np.random.default_rng(7).uniform(-50, 250, size=(40, 2))
    world = reference.all_pix2world(pixels, 0)
    assert np.array_equal(direct.all_pix2world(pixels, 0), world)
    assert np.array_equal(direct.all_world2pix(world, 0), reference.all_world2pix(world, 0))


@pytest.mark.parametrize(
    "extra",
    [{"A_ORDER": 2, "A_2_0": 1e-6}, {"CPDIS1": "LOOKUP"}, {"PV2_1": 0.1}, {"D2IMDIS1": "LOOKUP"}],
    ids=["sip", "lookup-table", "pv", "d2im"],
)
def test_cards_astropy_reads_itself_go_to_astropy(extra):
    header = fits.Header({**tan_header(), **extra})
    assert containment._wcslib_wcs(_header_text(header)) is None
    sip = tan_header(sip=SIP)
    assert containment._wcslib_wcs(_header_text(sip)) is None
