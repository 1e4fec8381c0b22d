"""Target lists: every format read back, column aliases, sexagesimal, units, and bad input.

Bad input is the point: each case asserts the one-line message names the file and the row
and column (or, for whole-file errors, the problem), because that line is all a user sees.
"""

from __future__ import annotations

import gzip
import random

import astropy.units as u
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from obsharvest.errors import TargetError
from obsharvest.models import Target
from obsharvest.targets import iau_names, read_targets, single_target

RA, DEC = 62.0, -37.0  # the seed tutorial's point


def _fits_bytes() -> bytes:
    """A small FITS image, as a user may pass by mistake."""
    import io

    from astropy.io import fits

    out = io.BytesIO()
    fits.PrimaryHDU(np.zeros((8, 8), dtype="f4")).writeto(out)
    return out.getvalue()


def _parquet_bytes() -> bytes:
    import io

    out = io.BytesIO()
    pq.write_table(pa.table({"name": ["a"], "ra": [1.0], "dec": [2.0]}), out)
    return out.getvalue()


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def small_table() -> Table:
    table = Table(
        {
            "name": ["M31", "seed", "0001"],
            "ra": [10.684708, RA, 180.0],
            "dec": [41.26875, DEC, -0.5],
            "radius": [0.1, 0.02, 0.5],
        }
    )
    table["ra"].unit = u.deg
    table["dec"].unit = u.deg
    table["radius"].unit = u.deg
    return table


EXPECTED = [
    Target("M31", 10.684708, 41.26875, 0.1, row=1),
    Target("seed", RA, DEC, 0.02, row=2),
    Target("0001", 180.0, -0.5, 0.5, row=3),
]


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("filename", "astropy_format"),
    [
        ("t.csv", "ascii.csv"),
        ("t.ecsv", "ascii.ecsv"),
        ("t.parquet", "parquet"),
        ("t.pq", "parquet"),
        ("t.xml", "votable"),
        ("t.vot", "votable"),
        ("t.votable", "votable"),
    ],
)
def test_round_trip_astropy_writers(tmp_path, filename, astropy_format):
    path = tmp_path / filename
    small_table().write(path, format=astropy_format)
    assert read_targets(str(path)) == EXPECTED


def test_round_trip_pyarrow_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table(
            {
                "name": ["M31", "seed", "0001"],
                "ra": [10.684708, RA, 180.0],
                "dec": [41.26875, DEC, -0.5],
                "radius": [0.1, 0.02, 0.5],
            }
        ),
        path,
    )
    assert read_targets(str(path)) == EXPECTED


def test_parquet_integer_ids_stay_exact(tmp_path):
    source_id = 4_295_806_720_123_456_789  # a Gaia DR3 source_id, beyond float64's 2**53
    path = tmp_path / "gaia.parquet"
    pq.write_table(pa.table({"ID": [source_id], "ra": [RA], "dec": [DEC]}), path)
    [target] = read_targets(str(path))
    assert target.name == str(source_id)


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("t.tsv", "name\tra\tdec\nseed\t62.0\t-37.0\n"),
        ("t.txt", "name,ra,dec\nseed,62.0,-37.0\n"),  # unknown extension: sniffed as CSV
        ("t.dat", "name\tra\tdec\nseed\t62.0\t-37.0\n"),  # sniffed as TSV
        ("t.csv", "\ufeffname,ra,dec\nseed,62.0,-37.0\n"),  # Excel's UTF-8 BOM
        ("t.csv", "# from the proposal\n# v2\nname,ra,dec\nseed,62.0,-37.0\n"),
        ("t.csv", "name,ra,dec\r\nseed,62.0,-37.0\r\n\r\n"),  # Windows line ends, blank line
    ],
)
def test_text_variants(tmp_path, filename, content):
    path = write(tmp_path, filename, content)
    assert read_targets(str(path)) == [Target("seed", RA, DEC, None, row=1)]


@pytest.mark.parametrize(
    ("filename", "astropy_format"),
    [("t.bin", "parquet"), ("t.data", "votable"), ("t.list", "ascii.ecsv")],
)
def test_unknown_extension_is_sniffed(tmp_path, filename, astropy_format):
    real = tmp_path / (
        "real." + {"parquet": "parquet", "votable": "xml"}.get(astropy_format, "ecsv")
    )
    small_table().write(real, format=astropy_format)
    path = write(tmp_path, filename, real.read_bytes())
    assert read_targets(str(path)) == EXPECTED


def test_gzip_file_url_and_memory_filesystem(tmp_path):
    text = "name,ra,dec\nseed,62.0,-37.0\n"
    expected = [Target("seed", RA, DEC, None, row=1)]
    gz = write(tmp_path, "t.csv.gz", gzip.compress(text.encode()))
    assert read_targets(str(gz)) == expected
    plain = write(tmp_path, "t.csv", text)
    assert read_targets(plain.as_uri()) == expected  # file://
    with fsspec.open("memory://bucket/targets.csv", "w") as fh:
        fh.write(text)
    assert read_targets("memory://bucket/targets.csv", storage_options={}) == expected


# --------------------------------------------------------------------------- columns & values


@pytest.mark.parametrize(
    ("name_col", "ra_col", "dec_col"),
    [
        ("name", "ra", "dec"),
        ("Target", "RA_deg", "DEC_deg"),
        (" target_name ", " RAJ2000 ", " DEJ2000 "),
        ("ID", "ra_icrs", "dec_icrs"),
        ("object", "s_ra", "s_dec"),
        ("objname", "alpha", "delta"),
        ("Source", "RA_J2000", "DEC_J2000"),
        ("Target Name", "ra", "DECJ2000"),
    ],
)
def test_column_aliases(tmp_path, name_col, ra_col, dec_col):
    path = write(tmp_path, "t.csv", f'"{name_col}","{ra_col}","{dec_col}"\nseed,62,-37\n')
    assert read_targets(str(path)) == [Target("seed", RA, DEC, None, row=1)]


def test_name_column_priority(tmp_path):
    """A name is a label, so "id,name" is not ambiguous: the earlier alias wins."""
    path = write(tmp_path, "t.csv", "id,name,ra,dec\n17,seed,62,-37\n")
    assert read_targets(str(path))[0].name == "seed"


@pytest.mark.parametrize(
    ("ra", "dec", "want_ra", "want_dec"),
    [
        ("04:08:00.0", "-37:00:00", RA, DEC),
        ("4h08m00s", "-37d00m00s", RA, DEC),
        ("04 08 00.0", "-37 00 00", RA, DEC),
        ("62d00m00s", "-37.0", RA, DEC),  # an RA that says degrees is degrees
        ("00:42:44.3", "+41:16:09", 10.684583333, 41.269166667),
        ("62.0", "-00:30:00", RA, -0.5),  # the sign of a -00 degree survives
        ("24:00:00", "0", 0.0, 0.0),  # 24h is 360 deg, which is 0
        ("360", "90", 0.0, 90.0),
        (" 1e1 ", "-90", 10.0, -90.0),
    ],
)
def test_sexagesimal_and_decimal(tmp_path, ra, dec, want_ra, want_dec):
    path = write(tmp_path, "t.csv", f"name,ra,dec\nx,{ra},{dec}\n")
    [target] = read_targets(str(path))
    assert target.ra == pytest.approx(want_ra, abs=1e-8)
    assert target.dec == pytest.approx(want_dec, abs=1e-8)


@pytest.mark.parametrize(
    ("header", "value", "want"),
    [
        ("radius", "0.5", 0.5),
        ("radius_deg", "0.5", 0.5),
        ("r", "0.5", 0.5),
        ("search_radius", "0.5", 0.5),
        ("radius_arcmin", "3", 0.05),
        ("Radius_Arcsec", "36", 0.01),
        ("radius", "", None),  # no radius: the point itself must be on the pixels
        ("radius", "nan", None),
    ],
)
def test_radius_columns(tmp_path, header, value, want):
    path = write(tmp_path, "t.csv", f"name,ra,dec,{header}\nx,62,-37,{value}\n")
    [target] = read_targets(str(path))
    assert target.radius == (pytest.approx(want) if want is not None else None)


@pytest.mark.parametrize(
    ("filename", "astropy_format", "unit", "value", "want"),
    [
        ("t.ecsv", "ascii.ecsv", u.arcsec, 36.0, 0.01),
        ("t.xml", "votable", u.arcmin, 3.0, 0.05),
        ("t.parquet", "parquet", u.arcsec, 360.0, 0.1),
        ("t.ecsv", "ascii.ecsv", u.deg, 0.2, 0.2),
    ],
)
def test_radius_unit_is_converted(tmp_path, filename, astropy_format, unit, value, want):
    table = Table({"name": ["x"], "ra": [RA], "dec": [DEC], "radius": [value]})
    table["radius"].unit = unit
    path = tmp_path / filename
    table.write(path, format=astropy_format)
    [target] = read_targets(str(path))
    assert target.radius == pytest.approx(want)


def test_declared_unit_wins_over_column_name(tmp_path):
    table = Table({"ra": [RA], "dec": [DEC], "radius_arcsec": [0.5]})
    table["radius_arcsec"].unit = u.deg  # the unit is explicit metadata; the name a guess
    path = tmp_path / "t.ecsv"
    table.write(path)
    assert read_targets(str(path))[0].radius == pytest.approx(0.5)


def test_ra_in_hourangle_unit(tmp_path):
    table = Table({"name": ["x"], "ra": [RA / 15], "dec": [DEC]})
    table["ra"].unit = u.hourangle
    path = tmp_path / "t.ecsv"
    table.write(path)
    assert read_targets(str(path))[0].ra == pytest.approx(RA)


def test_default_radius_fills_only_missing(tmp_path):
    path = write(tmp_path, "t.csv", "name,ra,dec,radius\na,1,2,\nb,3,4,0.3\n")
    targets = read_targets(str(path), default_radius=0.05)
    assert [t.radius for t in targets] == [0.05, 0.3]
    no_column = write(tmp_path, "u.csv", "name,ra,dec\na,1,2\n")
    assert read_targets(str(no_column), default_radius=0.05)[0].radius == 0.05


def test_bad_default_radius(tmp_path):
    path = write(tmp_path, "t.csv", "ra,dec\n1,2\n")
    with pytest.raises(TargetError, match=r"default_radius=20"):
        read_targets(str(path), default_radius=20)


@pytest.mark.parametrize(
    ("ra", "dec", "name"),
    [
        (RA, DEC, "J040800.00-370000.0"),
        (0.0, 0.0, "J000000.00+000000.0"),
        (10.684708, 41.26875, "J004244.32+411607.5"),
        (359.99999999, -89.99999999, "J235959.99-895959.9"),  # truncated, never rounded up
        (180.0, -0.5, "J120000.00-003000.0"),
    ],
)
def test_generated_names(tmp_path, ra, dec, name):
    assert iau_names(np.array([ra]), np.array([dec])) == [name]
    path = write(tmp_path, "t.csv", f"ra,dec\n{ra!r},{dec!r}\n")
    assert read_targets(str(path))[0].name == name
    assert read_targets(str(path))[0].row == 1


def test_rows_are_one_based_data_rows(tmp_path):
    path = write(tmp_path, "t.csv", "ra,dec\n1,1\n2,2\n3,3\n")
    assert [t.row for t in read_targets(str(path))] == [1, 2, 3]


# --------------------------------------------------------------------------- bad input

# (file name, content, max_rows, substrings the one-line message must contain)
BAD_INPUTS = [
    pytest.param(
        "t.csv",
        "name,ra,foo\na,1,2\n",
        None,
        ["no 'dec' column", "found columns 'name', 'ra', 'foo'"],
        id="missing-dec",
    ),
    pytest.param(
        "t.csv",
        "name,x,y\na,1,2\n",
        None,
        ["no 'ra' or 'dec' column", "'x', 'y'"],
        id="missing-both",
    ),
    pytest.param(
        "t.csv",
        "62.0,-37.0\n10,20\n",
        None,
        ["no 'ra' or 'dec' column", "first line looks like data"],
        id="no-header",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,1,2\nb,abc,2\n",
        None,
        ["row 2, column 'ra'", "'abc' is not a number or a sexagesimal angle"],
        id="non-numeric",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,04:61:00,2\n",
        None,
        ["row 1, column 'ra'", "'04:61:00' is not a number"],
        id="bad-sexagesimal",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,1,2\nb,2,3\nc,3,3\nd,4,3\ne,5,3\nf,6,3\ng,7,95.0\n",
        None,
        ["row 7, column 'dec': 95.0 is outside [-90, 90]"],
        id="dec-out-of-range",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,1,-95:00:00\n",
        None,
        ["row 1, column 'dec'", "'-95:00:00' (= -95 deg) is outside [-90, 90]"],
        id="sexagesimal-dec-out-of-range",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,361,2\n",
        None,
        ["row 1, column 'ra': 361.0 is outside [0, 360]"],
        id="ra-too-big",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,-0.5,2\n",
        None,
        ["row 1, column 'ra': -0.5 is outside [0, 360]"],
        id="ra-negative",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,1,NaN\n",
        None,
        ["row 1, column 'dec'", "nan is not a finite number"],
        id="nan",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,inf,1\n",
        None,
        ["row 1, column 'ra'", "inf is not a finite number"],
        id="inf",
    ),
    pytest.param(
        "t.csv", "name,ra,dec\na,,1\n", None, ["row 1, column 'ra': is empty"], id="empty-cell"
    ),
    pytest.param("t.csv", "", None, ["file is empty"], id="empty-file"),
    pytest.param("t.csv", "  \n\n", None, ["file is empty"], id="blank-file"),
    pytest.param("t.txt", "", None, ["file is empty"], id="empty-unknown-extension"),
    pytest.param("t.csv", "name,ra,dec\n", None, ["no data rows"], id="header-only"),
    pytest.param("t.csv", "name,ra,dec", None, ["no data rows"], id="header-only-no-newline"),
    pytest.param(
        "t.csv",
        "name,ra,dec\nM31,1,2\nseed,2,3\nM31,3,4\n",
        None,
        ["row 3, column 'name'", "'M31' repeats row 1"],
        id="duplicate-names",
    ),
    pytest.param(
        "t.csv",
        "ra,dec\n1,2\n3,4\n1.0,2.00\n",
        None,
        ["row 3, column 'ra'", "same position as row 1", "J000400.00+020000.0"],
        id="duplicate-positions",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\nseed,1,2\n   ,2,3\n",
        None,
        ["row 2, column 'name': is empty or blank"],
        id="blank-name",
    ),
    pytest.param(
        "t.csv",
        'name,ra,dec\nseed,1,2\n"",2,3\n',
        None,
        ["row 2, column 'name': is empty or blank"],
        id="empty-name",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\nseed,1,2\nNGC 253 Sculpteur é,2,3\n".encode("latin-1"),
        None,
        ["row 2, column 'name'", "not UTF-8", "byte 0xe9 at offset 39", "line 3"],
        id="latin-1",
    ),
    pytest.param(
        "t.csv",
        "ra,dec\n" + "".join(f"{i},1\n" for i in range(6)),
        5,
        ["6 data rows, more than max_rows=5"],
        id="too-many-rows",
    ),
    pytest.param(
        "t.csv",
        "name,ra,RA_deg,dec\na,1,1,2\n",
        None,
        ["columns 'ra' and 'RA_deg' are both ra columns"],
        id="ambiguous-ra",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec,radius,radius_arcsec\na,1,2,3,4\n",
        None,
        ["columns 'radius' and 'radius_arcsec' are both radius columns"],
        id="ambiguous-radius",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec,radius\na,1,2,0\n",
        None,
        ["row 1, column 'radius': 0.0 is not a radius in (0, 10] deg"],
        id="zero-radius",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec,radius\na,1,2,-1\n",
        None,
        ["row 1, column 'radius': -1.0 is not a radius"],
        id="negative-radius",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec,radius_arcmin\na,1,2,601\n",
        None,
        ["row 1, column 'radius_arcmin'", "not a radius in (0, 10] deg"],
        id="huge-radius-arcmin",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec,radius\na,1,2,wide\n",
        None,
        ["row 1, column 'radius'", "'wide' is not a number"],
        id="non-numeric-radius",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,1,2\nb,3\nc,4,5\n",
        None,
        ["row 2: expected 3 fields, found 2 (line 3 of the file)"],
        id="ragged-row",
    ),
    pytest.param(
        "t.csv",
        random.Random(7).randbytes(2000),
        None,
        ["is binary (not text), not a CSV"],
        id="garbage-binary-csv",
    ),
    pytest.param(
        "t.bin",
        b"\x00\x01garbage\xff" * 50,
        None,
        ["is binary (not text), not a target list (expected CSV"],
        id="garbage-binary-unknown",
    ),
    pytest.param(
        "image.csv",
        _fits_bytes(),
        None,
        ["is a FITS file, not a CSV"],  # not "re-save the file as UTF-8"
        id="fits-named-csv",
    ),
    pytest.param("image.parquet", _fits_bytes(), None, ["is a FITS file, not a Parquet file"]),
    pytest.param("image.xml", _fits_bytes(), None, ["is a FITS file, not a VOTable"]),
    pytest.param("image", _fits_bytes(), None, ["is a FITS file, not a target list"]),
    pytest.param("t.csv", _parquet_bytes(), None, ["is a Parquet file, not a CSV"]),
    pytest.param(
        "t.csv",
        gzip.compress(b"name,ra,dec\na,1,2\n", mtime=0),
        None,
        ["gzip-compressed"],
        id="gzip-csv",
    ),
    pytest.param(
        "t.csv",
        "name,ra,dec\na,1,2\n".encode("utf-16"),  # Excel's "Unicode text"
        None,
        ["is UTF-16 text, not UTF-8: re-save the file as UTF-8"],
        id="utf-16-csv",
    ),
    pytest.param(
        "t.parquet",
        b"name,ra,dec\na,1,2\n",
        None,
        ["cannot read as Parquet"],
        id="not-parquet",
    ),
    pytest.param(
        "t.xml",
        b"<VOTABLE><RESOURCE><TABLE><broken",
        None,
        ["cannot read as VOTable"],
        id="broken-votable",
    ),
]


@pytest.mark.parametrize(("filename", "content", "max_rows", "expected"), BAD_INPUTS)
def test_bad_input_is_one_clear_line(tmp_path, filename, content, max_rows, expected):
    path = write(tmp_path, filename, content)
    kwargs = {} if max_rows is None else {"max_rows": max_rows}
    with pytest.raises(TargetError) as info:
        read_targets(str(path), **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(TargetError, match=r"nope\.csv: no such file$"):
        read_targets(str(tmp_path / "nope.csv"))


@pytest.fixture(scope="module")
def http_404():
    """A server that answers 404 to everything."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_url_that_answers_404_is_named_as_such(http_404):
    url = f"{http_404}/lists/targets.csv"
    with pytest.raises(TargetError) as info:
        read_targets(url)
    assert str(info.value) == f"{url}: HTTP 404 Not Found"


def test_a_url_whose_port_refuses_is_named_as_such():
    import socket

    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        url = f"http://127.0.0.1:{port}/targets.csv"
        with pytest.raises(TargetError) as info:
            read_targets(url)
    assert str(info.value) == f"{url}: connection refused by 127.0.0.1:{port}"


def test_a_url_whose_host_does_not_resolve_is_named_as_such():
    url = "http://no-such-host.invalid/targets.csv"  # .invalid never resolves (RFC 2606)
    with pytest.raises(TargetError) as info:
        read_targets(url)
    assert str(info.value).startswith(f"{url}: host no-such-host.invalid not found (DNS: ")


def test_problems_are_collected_in_row_order(tmp_path):
    path = write(tmp_path, "t.csv", 'name,ra,dec\na,1,2\nb,x,2\nc,1,99\nd,,\n"",1,2\n')
    with pytest.raises(TargetError) as info:
        read_targets(str(path))
    err = info.value
    assert str(err) == (
        f"{path}: row 2, column 'ra': 'x' is not a number or a sexagesimal angle"
        " (and 4 more problems)"
    )
    assert err.count == 5
    assert [(p.row, p.column) for p in err.problems] == [
        (2, "ra"),
        (3, "dec"),
        (4, "ra"),
        (4, "dec"),
        (5, "name"),
    ]
    assert (err.row, err.column) == (2, "ra")


@pytest.mark.parametrize(
    ("filename", "astropy_format"), [("t.ecsv", "ascii.ecsv"), ("t.xml", "votable")]
)
def test_bad_values_in_typed_formats(tmp_path, filename, astropy_format):
    table = Table({"name": ["a", "b"], "ra": [1.0, 2.0], "dec": [2.0, -91.0]})
    path = tmp_path / filename
    table.write(path, format=astropy_format)
    with pytest.raises(TargetError, match=r"row 2, column 'dec': -91\.0 is outside \[-90, 90\]$"):
        read_targets(str(path))


def test_masked_value_in_votable_is_empty(tmp_path):
    table = Table(
        {
            "name": ["a", "b"],
            "ra": np.ma.masked_array([1.0, 2.0], mask=[False, True]),
            "dec": [1.0, 2.0],
        }
    )
    path = tmp_path / "t.xml"
    table.write(path, format="votable")
    with pytest.raises(TargetError, match=r"row 2, column 'ra': is empty$"):
        read_targets(str(path))


def test_radius_with_non_angular_unit(tmp_path):
    table = Table({"ra": [RA], "dec": [DEC], "radius": [3.0]})
    table["radius"].unit = u.m
    path = tmp_path / "t.ecsv"
    table.write(path)
    with pytest.raises(TargetError, match=r"t\.ecsv: radius unit 'm' is not an angle$"):
        read_targets(str(path))


# --------------------------------------------------------------------------- single target


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((RA, DEC), Target("J040800.00-370000.0", RA, DEC)),
        (("04:08:00", "-37:00:00"), Target("J040800.00-370000.0", RA, DEC)),
        (("4h08m00s", "-37d", 0.1, " seed "), Target("seed", RA, DEC, 0.1)),
        (("360", 0), Target("J000000.00+000000.0", 0.0, 0.0)),
    ],
)
def test_single_target(args, expected):
    assert single_target(*args) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((RA, 95.0), "target: dec 95.0 is outside [-90, 90]"),
        (("abc", DEC), "target: ra 'abc' is not a number or a sexagesimal angle"),
        ((RA, DEC, 0.0), "target: radius 0.0 is not a radius in (0, 10] deg"),
        ((RA, DEC, None, "  "), "target: name is empty or blank"),
        ((float("nan"), DEC), "target: ra nan is not a finite number"),
        (("", DEC), "target: ra is empty"),
    ],
)
def test_single_target_errors(args, expected):
    with pytest.raises(TargetError) as info:
        single_target(*args)
    assert str(info.value) == expected


# --------------------------------------------------------------------------- scale


def test_hundred_thousand_rows(tmp_path):
    """A smoke test of the vectorised path (it should take a fraction of a second)."""
    n = 100_000
    rng = np.random.default_rng(1)
    ra = rng.uniform(0, 360, n)
    dec = rng.uniform(-90, 90, n)
    lines = ["name,ra,dec,radius"] + [
        f"t{i},{r:.8f},{d:.8f},0.01" for i, (r, d) in enumerate(zip(ra, dec, strict=True))
    ]
    path = write(tmp_path, "big.csv", "\n".join(lines) + "\n")
    targets = read_targets(str(path))
    assert len(targets) == n
    assert targets[-1].row == n and targets[-1].name == f"t{n - 1}"
    assert targets[-1].ra == pytest.approx(ra[-1], abs=1e-7)
