"""Read and validate target lists: CSV, ECSV, Parquet or VOTable in, ``Target`` records out.

A harvest of thousands of targets fails late and expensively if one row is wrong, so the
whole file is checked up front and every problem becomes a ``TargetError`` whose text is
one line naming the file, the 1-based data row and the column -- the CLI prints it as is.
Problems are collected and reported together ("... (and 12 more problems)"), so a user
fixing a bulk list sees the size of the job at once; ``err.problems`` holds them all.

Parsing is delegated: ``fsspec`` opens any URL, pyarrow reads CSV and Parquet, astropy reads
ECSV and VOTable. CSV cells are read as text so that names like ``0001`` survive; the
numeric path is then vectorised, and only cells that are not plain numbers (sexagesimal
``04:08:00.0``, ``4h08m00s``) go through astropy's ``Angle`` one at a time.

Pure: no Prefect, no logging side effects beyond ``logging``; a task wraps ``read_targets``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import socket
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import astropy.units as u
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from astropy.coordinates import Angle
from astropy.table import Table
from astropy.table import meta as table_meta
from astropy.utils.exceptions import AstropyWarning

from obsharvest.errors import ConfigError, TargetError
from obsharvest.models import Target

__all__ = ["Problem", "TargetError", "iau_names", "read_targets", "single_target"]

log = logging.getLogger(__name__)

# Column aliases, compared after lower-casing, trimming, and turning runs of spaces and
# hyphens into "_" (so "Target Name" and "RA-deg" match too).
NAME_ALIASES = ("name", "target", "target_name", "id", "object", "objname", "source")
RA_ALIASES = ("ra", "ra_deg", "raj2000", "ra_icrs", "s_ra", "alpha", "ra_j2000")
DEC_ALIASES = ("dec", "dec_deg", "dej2000", "decj2000", "dec_icrs", "s_dec", "delta", "dec_j2000")
# Radius aliases with the factor that turns the column's numbers into degrees. A unit carried
# by the column itself (ECSV, VOTable, astropy-written Parquet) wins over the name's hint.
RADIUS_ALIASES = {
    "radius": 1.0,
    "radius_deg": 1.0,
    "r": 1.0,
    "search_radius": 1.0,
    "radius_arcmin": 1 / 60,
    "radius_arcsec": 1 / 3600,
}
MAX_RADIUS_DEG = 10.0  # beyond this an ObsCore cone query returns whole surveys
MAX_PROBLEMS_KEPT = 1000  # err.problems stays bounded for a million-row file of garbage

FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".ecsv": "ecsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xml": "votable",
    ".vot": "votable",
    ".votable": "votable",
}
FORMAT_LABELS = {
    "csv": "CSV",
    "tsv": "TSV",
    "ecsv": "ECSV",
    "parquet": "Parquet",
    "votable": "VOTable",
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
_UTF8_BOM = b"\xef\xbb\xbf"
# A sexagesimal RA is in hours unless it spells out degrees ("62d00m", "62°", "62.5deg").
_DEGREE_MARK = re.compile(r"[d°]", re.IGNORECASE)
_HOUR_MARK = re.compile(r"h", re.IGNORECASE)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a target list; ``row`` is the 1-based data row (header excluded)."""

    message: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        if self.row is not None and self.column is not None:
            return f"row {self.row}, column {self.column!r}: {self.message}"
        if self.row is not None:
            return f"row {self.row}: {self.message}"
        if self.column is not None:  # a single target's argument: "dec 95.0 is outside ..."
            return f"{self.column} {self.message}"
        return self.message


# --------------------------------------------------------------------------- public API


def read_targets(
    path: str,
    *,
    storage_options: dict | None = None,
    default_radius: float | None = None,
    max_rows: int = 1_000_000,
) -> list[Target]:
    """Read a target list from any fsspec URL and return validated ``Target`` records.

    The format follows the extension (``.csv``, ``.tsv``, ``.ecsv``, ``.parquet``/``.pq``,
    ``.xml``/``.vot``/``.votable``, optionally compressed, e.g. ``.csv.gz``) and is sniffed
    from the content otherwise. ``default_radius`` (deg) fills rows without a radius.
    Raises ``TargetError`` for anything wrong with the file; other exceptions are bugs or
    transient I/O (network) errors, which a caller may retry.
    """
    source = str(path)
    if default_radius is not None:
        _check_default_radius(source, default_radius)
    data, inner_name = _read_bytes(source, storage_options)
    fmt = _detect_format(source, inner_name, data)
    columns, nrows = _parse(source, fmt, data)
    if nrows == 0:
        raise TargetError(source, [Problem("no data rows (only a header)")])
    if nrows > max_rows:
        raise TargetError(
            source,
            [Problem(f"{nrows:,} data rows, more than max_rows={max_rows:,}; split the file")],
        )
    return _validate(source, _resolve_columns(source, columns), nrows, default_radius)


def in_sky_order(targets: Sequence[Target], zone_deg: float = 1.0) -> list[Target]:
    """``targets`` in Dec zones of ``zone_deg``, by RA within each: a run in shards then
    keeps neighbours (which share images) in one shard, so few images are verified twice."""
    return sorted(targets, key=lambda t: (math.floor((t.dec + 90.0) / zone_deg), t.ra, t.name))


def targets_for(
    path: str | None,
    *,
    ra: float | str | None = None,
    dec: float | str | None = None,
    radius: float | None = None,
    name: str | None = None,
) -> list[Target]:
    """The run's targets: the list at ``path`` (``radius`` fills rows without one), or
    the one position ``ra``, ``dec``."""
    if path:
        return read_targets(path, default_radius=radius)
    if ra is None or dec is None:
        raise ConfigError("give a target list, or one position with both ra and dec")
    return [single_target(ra, dec, radius, name)]


def single_target(
    ra: float | str,
    dec: float | str,
    radius: float | None = None,
    name: str | None = None,
) -> Target:
    """One target from CLI-style arguments, validated exactly like a row of a file.

    ``ra`` and ``dec`` take decimal degrees or sexagesimal strings (a ':'-separated RA is in
    hours); without ``name`` an IAU-style name such as ``J040800.00-370000.0`` is made.
    """
    source = "target"
    columns = {
        "ra": _Column("ra", _object_array([ra]), _missing_of([ra]), None),
        "dec": _Column("dec", _object_array([dec]), _missing_of([dec]), None),
    }
    if radius is not None:
        columns["radius"] = _Column("radius", _object_array([radius]), _missing_of([radius]), None)
    if name is not None:
        columns["name"] = _Column("name", _object_array([name]), _missing_of([name]), None)
    [target] = _validate(source, columns, 1, None, argument_style=True)
    return replace(target, row=None)  # not from a file


# --------------------------------------------------------------------------- bytes & format


def _read_bytes(source: str, storage_options: dict | None) -> tuple[bytes, str]:
    """Fetch the whole file (target lists are small next to the images they ask for).

    Returns the bytes and the file name with any compression suffix removed, whose
    extension then names the format ("targets.csv.gz" is CSV).
    """
    try:
        with fsspec.open(source, "rb", compression="infer", **(storage_options or {})) as fh:
            data = fh.read()
    except FileNotFoundError as err:
        raise TargetError(source, [Problem(_not_fetched(err))]) from None
    except IsADirectoryError:
        raise TargetError(source, [Problem("is a directory, not a target list")]) from None
    except PermissionError:
        raise TargetError(source, [Problem("permission denied")]) from None
    inner = source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    for suffix in _COMPRESSION_SUFFIXES:
        if inner.lower().endswith(suffix):
            inner = inner[: -len(suffix)]
            break
    return data, inner


def _not_fetched(err: FileNotFoundError) -> str:
    """What "not found" really was. fsspec's HTTP file system turns every failure to fetch
    a URL into ``FileNotFoundError(url)`` with the cause chained: a host that DNS does not
    know, a refused connection and an HTTP error each get their own words, so a user does
    not look for a typo in a URL whose server is down."""
    import aiohttp  # fsspec's HTTP file system runs on it

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, aiohttp.ClientResponseError):
            reason = f" {cause.message}" if cause.message else ""
            return f"HTTP {cause.status}{reason}"
        if isinstance(cause, socket.gaierror | aiohttp.ClientConnectorDNSError):
            host = getattr(cause, "host", None)
            return f"host {host + ' ' if host else ''}not found (DNS: {_strerror(cause)})"
        if isinstance(cause, aiohttp.ClientConnectorError):
            where, why = f"{cause.host}:{cause.port}", getattr(cause, "os_error", None)
            if isinstance(why, ConnectionRefusedError):
                return f"connection refused by {where}"
            text = getattr(why, "strerror", None) or " ".join(str(why or cause).split())
            return f"cannot connect to {where} ({text})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError):
            return "no reply (timed out)"
        if isinstance(cause, aiohttp.ClientError):
            return f"cannot fetch: {' '.join(str(cause).split()) or type(cause).__name__}"
        cause = cause.__cause__ or cause.__context__
    return "no such file"


def _strerror(err: BaseException) -> str:
    """The OS's words for a resolver error ("Name or service not known")."""
    while err.__cause__ is not None and not isinstance(err, socket.gaierror):
        err = err.__cause__
    return getattr(err, "strerror", None) or str(err)


# File types a target list is mistaken for, by their first bytes.
_MAGIC = (
    (b"SIMPLE  =", "a FITS file"),
    (b"PAR1", "a Parquet file"),
    (b"\x1f\x8b", "gzip-compressed (name it .gz)"),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx is one)"),
    (b"\xd0\xcf\x11\xe0", "an MS Office file (e.g. Excel .xls)"),
    (b"%PDF", "a PDF file"),
    (b"\x89PNG", "a PNG image"),
    (b"\x89HDF", "an HDF5 file"),
)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF16 = "UTF-16 text"
# control characters no text file holds (tab, newline, CR, form feed and escape allowed)
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r\x0c\x1b") + b"\x7f"


def _content_kind(data: bytes) -> str | None:
    """What a file is when it is not text: a known type by its magic bytes, "UTF-16 text",
    or "binary (not text)" (a NUL, or control characters text does not have, in its first
    8 KB); None for text. Legacy 8-bit text (Windows-1252) is text: its bytes above 127
    are not controls, and it gets "re-save as UTF-8" from the decoder instead."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data.startswith(_UTF16_BOMS):
        return _UTF16
    head = data[:8192]
    if b"\x00" in head or len(head.translate(None, delete=_CONTROL)) < 0.99 * len(head):
        return "binary (not text)"
    return None


def _is_not(kind: str, expected: str) -> str:
    if kind == _UTF16:  # text after all, in an encoding the readers do not take
        return f"is {kind}, not UTF-8: re-save the file as UTF-8"
    return f"is {kind}, not {expected}"


_NOT_A = {"csv": "a CSV", "tsv": "a TSV", "ecsv": "an ECSV", "parquet": "a Parquet file"}


def _detect_format(source: str, inner_name: str, data: bytes) -> str:
    """The extension decides; an unknown one is sniffed from the first bytes."""
    lower = inner_name.lower()
    for suffix, fmt in FORMATS_BY_SUFFIX.items():
        if lower.endswith(suffix):
            return fmt
    if not data.strip():
        raise TargetError(source, [Problem("file is empty")])
    if data.startswith(b"PAR1"):
        return "parquet"
    head = data[:4096].removeprefix(_UTF8_BOM).lstrip()
    if head.startswith(b"<"):
        return "votable"
    if head.startswith(b"# %ECSV"):
        return "ecsv"
    kind = _content_kind(data)
    if kind:
        raise TargetError(
            source,
            [Problem(_is_not(kind, "a target list (expected CSV, ECSV, Parquet or VOTable)"))],
        )
    first_line = head.split(b"\n", 1)[0]
    return "tsv" if b"\t" in first_line and b"," not in first_line else "csv"


def _decode_text(source: str, fmt: str, data: bytes) -> str:
    """UTF-8 or a clear error saying where it is not (Excel's "CSV" is often Windows-1252).
    Binary files were refused by :func:`_parse` already."""
    try:
        return data.removeprefix(_UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + (len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0)
        line_no = data.count(b"\n", 0, offset) + 1
        what = (
            f"not UTF-8 (byte 0x{data[offset]:02x} at offset {offset}, line {line_no} of the file)"
        )
        row, column = (
            _row_and_column_at(data, offset, fmt) if fmt in ("csv", "tsv") else (None, None)
        )
        raise TargetError(
            source, [Problem(f"{what}; re-save the file as UTF-8", row, column)]
        ) from None


def _row_and_column_at(data: bytes, offset: int, fmt: str) -> tuple[int | None, str | None]:
    """Map a byte offset of a CSV to (data row, header name) -- cheap, and right unless
    quoted cells span lines or blank/comment lines precede it."""
    delimiter = "\t" if fmt == "tsv" else ","
    lines = data[:offset].split(b"\n")
    header = lines[0].removeprefix(_UTF8_BOM).decode("utf-8", "replace")
    if len(lines) < 2:
        return None, None
    try:
        names = next(csv.reader([header], delimiter=delimiter))
        before = next(csv.reader([lines[-1].decode("utf-8", "replace") + "x"], delimiter=delimiter))
    except (csv.Error, StopIteration):
        return len(lines) - 1, None
    index = len(before) - 1
    return len(lines) - 1, names[index].strip() if index < len(names) else None


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Column:
    """A column as read: numbers as float64, anything else as an object array of str."""

    header: str  # as written in the file
    values: np.ndarray  # int64 or float64 (numeric columns), or object (str, stripped)
    missing: np.ndarray  # bool: null, masked or empty cell
    unit: u.UnitBase | None  # declared by the file (ECSV, VOTable, astropy Parquet)


def _parse(source: str, fmt: str, data: bytes) -> tuple[list[_Column], int]:
    label = FORMAT_LABELS[fmt]
    if not data.strip():
        raise TargetError(source, [Problem("file is empty")])
    kind = _content_kind(data)
    if fmt == "parquet" and kind not in {k for _, k in _MAGIC} - {"a Parquet file"}:
        kind = None  # Parquet is binary: only another known type is worth naming
    if kind:
        # a FITS file named .csv is no text to re-save as UTF-8: say what it is
        raise TargetError(source, [Problem(_is_not(kind, _NOT_A.get(fmt, "a " + label)))])
    try:
        if fmt in ("csv", "tsv"):
            return _parse_csv(
                source, _decode_text(source, fmt, data), "\t" if fmt == "tsv" else ","
            )
        if fmt == "ecsv":
            text = _decode_text(source, fmt, data)
            return _from_astropy(Table.read(text.splitlines(), format="ascii.ecsv"))
        if fmt == "votable":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyWarning)  # W-codes: legal but sloppy
                table = Table.read(io.BytesIO(data), format="votable")
            return _from_astropy(table)
        return _parse_parquet(data)
    except TargetError:
        raise
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        OSError,
        csv.Error,
        pa.ArrowException,
    ) as err:
        # The parser's complaint about a malformed file: a user error, kept to one line.
        reason = " ".join(str(err).split()) or type(err).__name__
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise TargetError(source, [Problem(f"cannot read as {label}: {reason}")]) from None


def _parse_csv(source: str, text: str, delimiter: str) -> tuple[list[_Column], int]:
    """pyarrow's CSV reader with every column as text: "0001" stays a name, not 1."""
    # Leading "# ..." lines are a common way to annotate a list; CSV itself has no comments.
    lines = text.split("\n", 64)
    skip = 0
    while skip < len(lines) - 1 and lines[skip].lstrip().startswith("#"):
        skip += 1
    body = text if skip == 0 else text.split("\n", skip)[-1]
    if not body.strip():
        raise TargetError(source, [Problem("file is empty")])
    if not body.endswith("\n"):
        body += "\n"  # pyarrow sees a header with no line end as an empty file
    header = next(csv.reader(io.StringIO(body), delimiter=delimiter))
    ragged: list[Problem] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        # pyarrow numbers lines from the header (1); data rows are numbered from 1 after it,
        # as in every other message (the file's line is added for editors)
        found = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        if row.number is not None:
            found += f" (line {row.number + skip} of the file)"
        ragged.append(Problem(found, row.number - 1 if row.number is not None else None))
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(body.encode("utf-8")),
        read_options=pacsv.ReadOptions(use_threads=False),  # line numbers in ragged rows
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid_row),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header}, strings_can_be_null=False
        ),
    )
    if ragged:
        # Rows were dropped, so later row numbers would be off: stop here.
        raise TargetError(source, ragged[:MAX_PROBLEMS_KEPT], len(ragged))
    return _from_arrow(table), table.num_rows


def _parse_parquet(data: bytes) -> tuple[list[_Column], int]:
    """pyarrow reads it; units come from astropy's ``table_meta_yaml`` or a field's "unit"."""
    table = pq.read_table(pa.BufferReader(data))
    units: dict[str, str] = {}
    metadata = table.schema.metadata or {}
    if b"table_meta_yaml" in metadata:
        header = table_meta.get_header_from_yaml(
            metadata[b"table_meta_yaml"].decode("utf-8").split("\n")
        )
        units = {c["name"]: c["unit"] for c in header.get("datatype", []) if c.get("unit")}
    for field in table.schema:
        if field.metadata and b"unit" in field.metadata:
            units.setdefault(field.name, field.metadata[b"unit"].decode("utf-8"))
    parsed = {name: _parse_unit(text) for name, text in units.items()}
    return _from_arrow(table, parsed), table.num_rows


def _parse_unit(text: str | u.UnitBase | None) -> u.UnitBase | None:
    if text is None:
        return None
    try:
        return u.Unit(text, parse_strict="silent")
    except ValueError:
        return None


def _from_arrow(
    table: pa.Table, units: dict[str, u.UnitBase | None] | None = None
) -> list[_Column]:
    columns = []
    for name, chunked in zip(table.column_names, table.columns, strict=True):
        missing = chunked.is_null().to_numpy(zero_copy_only=False)
        kind = chunked.type
        if pa.types.is_integer(kind):  # int64 kept exact: a Gaia source_id may be the name
            values = pc.cast(chunked, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            values = (
                pc.cast(chunked, pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
            )
        else:
            if not pa.types.is_string(kind) and not pa.types.is_large_string(kind):
                chunked = pc.cast(chunked, pa.string())
            chunked = pc.utf8_trim_whitespace(chunked.fill_null(""))
            values = np.array(chunked.to_pylist(), dtype=object)
            missing = missing | (values == "")
        columns.append(_Column(name, values, np.asarray(missing, bool), (units or {}).get(name)))
    return columns


def _from_astropy(table: Table) -> tuple[list[_Column], int]:
    columns = []
    for name in table.colnames:
        col = table[name]
        missing = np.ma.getmaskarray(col).reshape(len(col), -1).any(axis=1)
        raw = col.filled() if hasattr(col, "filled") and np.ma.is_masked(col) else col
        raw = np.asarray(raw)
        if raw.dtype.kind in "iu" and raw.ndim == 1:
            values = raw.astype(np.int64)
        elif raw.dtype.kind == "f" and raw.ndim == 1:
            values = raw.astype(np.float64)
            values[missing] = math.nan
        else:
            if raw.dtype.kind == "S":
                raw = np.char.decode(raw, "utf-8", "replace")
            values = np.array([str(v).strip() for v in raw.tolist()], dtype=object)
            missing = missing | (values == "")
        columns.append(_Column(name, values, np.asarray(missing, bool), _parse_unit(col.unit)))
    return columns, len(table)


# --------------------------------------------------------------------------- columns


def _normalise_header(header: str) -> str:
    return re.sub(r"[\s\-]+", "_", header.strip().lower())


def _pick(
    source: str,
    columns: Iterable[_Column],
    aliases: Sequence[str],
    role: str,
    *,
    by_priority: bool = False,
) -> _Column | None:
    """The one column whose header is an alias of ``role``.

    Two candidates for a coordinate or radius are an error: guessing wrong moves the
    target. For the name, a label, the earlier alias wins ("id,name,ra,dec" is common).
    """
    wanted = list(aliases)
    found = [c for c in columns if _normalise_header(c.header) in wanted]
    if by_priority and found:
        return min(found, key=lambda c: wanted.index(_normalise_header(c.header)))
    if len(found) > 1:
        names = " and ".join(repr(c.header) for c in found)
        raise TargetError(
            source,
            [Problem(f"columns {names} are both {role} columns; keep one or rename the others")],
        )
    return found[0] if found else None


def _resolve_columns(source: str, columns: list[_Column]) -> dict[str, _Column]:
    picked = {
        "name": _pick(source, columns, NAME_ALIASES, "name", by_priority=True),
        "ra": _pick(source, columns, RA_ALIASES, "ra"),
        "dec": _pick(source, columns, DEC_ALIASES, "dec"),
        "radius": _pick(source, columns, tuple(RADIUS_ALIASES), "radius"),
    }
    lacking = [role for role in ("ra", "dec") if picked[role] is None]
    if lacking:
        found = ", ".join(repr(c.header) for c in columns) or "none"
        wanted = " or ".join(f"{role!r}" for role in lacking)
        hint = ""
        if columns and all(_is_plain_number(c.header) for c in columns):
            hint = "; the first line looks like data: add a header line such as 'name,ra,dec'"
        else:
            accepted = "; ".join(
                f"{role} may be {'/'.join(RA_ALIASES if role == 'ra' else DEC_ALIASES)}"
                for role in lacking
            )
            hint = f" ({accepted}, any case)"
        raise TargetError(source, [Problem(f"no {wanted} column; found columns {found}{hint}")])
    return {role: col for role, col in picked.items() if col is not None}


def _is_plain_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- values


class _Problems:
    """Collects problems with their rows; keeps a bounded sample and the full count."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.count = 0

    def add(self, problem: Problem) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS_KEPT * 4:
            self.items.append(problem)

    def raise_if_any(self, source: str) -> None:
        if self.count:
            ordered = sorted(self.items, key=lambda p: p.row or 0)
            raise TargetError(source, ordered[:MAX_PROBLEMS_KEPT], self.count)


def _angle_unit_factor(source: str, col: _Column) -> float | None:
    """Degrees per unit of the column's declared unit; None when there is none."""
    unit = col.unit
    if unit is None or isinstance(unit, u.UnrecognizedUnit) or unit == u.dimensionless_unscaled:
        if isinstance(unit, u.UnrecognizedUnit):
            log.warning(
                "%s: column %r: unit %r not understood, ignored", source, col.header, str(unit)
            )
        return None
    try:
        return float(unit.to(u.deg))
    except u.UnitConversionError:
        raise TargetError(
            source,
            [Problem(f"unit {unit.to_string()!r} is not an angle", column=col.header)],
        ) from None


def _numbers(
    col: _Column,
    *,
    hours: bool,
    factor: float,
    problems: _Problems,
    label: Callable[[int], tuple[int | None, str | None]],
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Degrees for each cell: (values, ok mask, raw text shown in range errors).

    Plain numbers are converted in one vectorised step and scaled by ``factor``; anything
    else is handed to astropy's ``Angle`` (sexagesimal; RA in hours unless it says 'd').
    """
    n = len(col.values)
    shown: list[str | None] = [None] * n
    if col.values.dtype != object:
        values = col.values.astype(np.float64) * factor
        values[col.missing] = math.nan
        return values, ~col.missing, shown
    out = np.full(n, math.nan)
    present = np.flatnonzero(~col.missing)
    try:
        out[present] = col.values[present].astype(np.float64) * factor
        return out, ~col.missing, shown
    except (ValueError, TypeError):
        pass
    ok = ~col.missing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)  # e.g. 60 s read as +1 min
        for i in present:
            text = col.values[i]
            try:
                out[i] = float(text) * factor
                continue
            except (ValueError, TypeError):
                pass
            try:
                out[i] = _sexagesimal(text, hours)
                shown[i] = text
            except (ValueError, TypeError, u.UnitsError, ArithmeticError):
                row, column = label(int(i))
                problems.add(
                    Problem(f"{text!r} is not a number or a sexagesimal angle", row, column)
                )
                ok[i] = False
    return out, ok, shown


def _sexagesimal(text: str, hours: bool) -> float:
    if hours and _HOUR_MARK.search(text):
        unit = None  # "4h08m00s" says hours itself
    elif hours and not _DEGREE_MARK.search(text):
        unit = u.hourangle
    else:
        unit = u.deg
    return float(Angle(text, unit=unit).degree)


def _show(value: float, text: str | None) -> str:
    return repr(float(value)) if text is None else f"{text!r} (= {value:.6g} deg)"


_Label = Callable[[int], tuple[int | None, str | None]]


def _labeller(col: _Column, argument_style: bool) -> _Label:
    """How a cell is named in a problem: its 1-based data row and column, or only the
    column when the values came as arguments (there are no rows to point at)."""
    if argument_style:
        return lambda i: (None, col.header)
    return lambda i: (i + 1, col.header)


def _report(
    problems: _Problems, label: _Label, bad: np.ndarray, message: Callable[[int], str]
) -> None:
    """One problem per flagged cell, in row order."""
    for i in np.flatnonzero(bad):
        row, column = label(int(i))
        problems.add(Problem(message(int(i)), row, column))


def _coordinate(
    source: str,
    col: _Column,
    *,
    hours: bool,
    low: float,
    high: float,
    problems: _Problems,
    label: _Label,
) -> np.ndarray:
    """RA or Dec in degrees; empty, non-finite and out-of-range cells become problems."""
    factor = _angle_unit_factor(source, col) or 1.0
    values, ok, shown = _numbers(col, hours=hours, factor=factor, problems=problems, label=label)
    _report(problems, label, col.missing, lambda i: "is empty")
    finite = np.isfinite(values)
    _report(problems, label, ok & ~finite, lambda i: f"{float(values[i])!r} is not a finite number")
    with np.errstate(invalid="ignore"):
        outside = ok & finite & ((values < low) | (values > high))
    _report(
        problems,
        label,
        outside,
        lambda i: f"{_show(values[i], shown[i])} is outside [{low:g}, {high:g}]",
    )
    return values


def _radii(
    source: str,
    col: _Column,
    radius: np.ndarray,
    has_radius: np.ndarray,
    *,
    problems: _Problems,
    label: _Label,
) -> tuple[np.ndarray, np.ndarray]:
    """``(radius, has_radius)`` with the radius column's cells over the defaults.

    A unit the column declares wins over its name's hint; an empty or NaN cell keeps
    the default, and a radius outside (0, ``MAX_RADIUS_DEG``] is a problem.
    """
    declared = _angle_unit_factor(source, col)
    factor = (
        declared if declared is not None else RADIUS_ALIASES.get(_normalise_header(col.header), 1.0)
    )
    values, ok, shown = _numbers(col, hours=False, factor=factor, problems=problems, label=label)
    given = ok & ~np.isnan(values)  # empty or NaN radius: use the default
    with np.errstate(invalid="ignore"):
        bad = given & ~((values > 0) & (values <= MAX_RADIUS_DEG))
    _report(
        problems,
        label,
        bad,
        lambda i: f"{_show(values[i], shown[i])} is not a radius in (0, {MAX_RADIUS_DEG:g}] deg",
    )
    return np.where(given, values, radius), has_radius | given


def _given_names(col: _Column, *, problems: _Problems, label: _Label) -> list[str]:
    """The name column as text; empty names and repeats (naming the first row) are problems."""
    if col.values.dtype == object:  # text, already stripped
        names = col.values.tolist()
    else:
        names = [_name_text(v) for v in col.values.tolist()]
    empty = col.missing | np.array([not n for n in names], bool)
    _report(problems, label, empty, lambda i: "is empty or blank")
    first_seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name or empty[i]:
            continue
        j = first_seen.setdefault(name, i)
        if j != i:
            row, column = label(i)
            problems.add(Problem(f"name {name!r} repeats row {j + 1}", row, column))
    return names


def _generated_names(
    source: str, ra: np.ndarray, dec: np.ndarray, ra_header: str, problems: _Problems
) -> list[str]:
    """IAU names from the positions, once the coordinates are known good (names made from
    bad ones would be noise); two rows at one position would share a name, a problem."""
    problems.raise_if_any(source)
    names = iau_names(ra, dec)
    first_seen: dict[str, int] = {}
    for i, name in enumerate(names):
        j = first_seen.setdefault(name, i)
        if j != i:
            problems.add(
                Problem(
                    f"same position as row {j + 1} (generated name {name}); "
                    "remove one or add a name column",
                    row=i + 1,
                    column=ra_header,
                )
            )
    return names


def _targets(
    names: list[str], ra: np.ndarray, dec: np.ndarray, radius: np.ndarray, has_radius: np.ndarray
) -> list[Target]:
    """The checked columns as ``Target`` records, rows numbered from 1."""
    radii = [
        float(r) if h else None for r, h in zip(radius.tolist(), has_radius.tolist(), strict=True)
    ]
    return [
        Target(name=n, ra=r, dec=d, radius=rad, row=i + 1)
        for i, (n, r, d, rad) in enumerate(
            zip(names, ra.tolist(), dec.tolist(), radii, strict=True)
        )
    ]


def _validate(
    source: str,
    columns: dict[str, _Column],
    nrows: int,
    default_radius: float | None,
    *,
    argument_style: bool = False,
) -> list[Target]:
    """All value checks, vectorised; only failing cells are visited one by one."""
    problems = _Problems()
    coords: dict[str, np.ndarray] = {}
    for role, hours, low, high in (("ra", True, 0.0, 360.0), ("dec", False, -90.0, 90.0)):
        col = columns[role]
        coords[role] = _coordinate(
            source,
            col,
            hours=hours,
            low=low,
            high=high,
            problems=problems,
            label=_labeller(col, argument_style),
        )
    # 360 -> 0 (and 24h, which comes back from hours as 359.99999999999994); -0.0 -> 0.0
    ra = np.where(coords["ra"] > 360.0 - 1e-9, 0.0, coords["ra"]) + 0.0
    dec = coords["dec"]

    radius = np.full(nrows, math.nan if default_radius is None else float(default_radius))
    has_radius = np.full(nrows, default_radius is not None)
    if "radius" in columns:
        col = columns["radius"]
        radius, has_radius = _radii(
            source,
            col,
            radius,
            has_radius,
            problems=problems,
            label=_labeller(col, argument_style),
        )

    if "name" in columns:
        col = columns["name"]
        names = _given_names(col, problems=problems, label=_labeller(col, argument_style))
    else:
        names = _generated_names(source, ra, dec, columns["ra"].header, problems)

    problems.raise_if_any(source)
    return _targets(names, ra, dec, radius, has_radius)


def _name_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # an integer id column read as float
    return str(value).strip()


def iau_names(ra: np.ndarray, dec: np.ndarray) -> list[str]:
    """IAU-style ``Jhhmmss.ss+ddmmss.s`` names; truncated, not rounded, as the IAU asks.

    A tiny epsilon keeps exact values (62.0 deg = 04h08m00s) from truncating to ...59.99.
    """
    ra_cs = np.floor(np.mod(np.asarray(ra, float), 360.0) * 24_000 + 1e-6).astype(np.int64)
    ra_cs %= 24 * 360_000  # in 0.01 s of time
    dec_ds = np.floor(np.abs(np.asarray(dec, float)) * 36_000 + 1e-6).astype(np.int64)  # 0.1"
    names = []
    for cs, ds, negative in zip(
        ra_cs.tolist(), dec_ds.tolist(), (np.asarray(dec) < 0).tolist(), strict=True
    ):
        h, rest = divmod(cs, 360_000)
        m, rest = divmod(rest, 6000)
        s, frac = divmod(rest, 100)
        d, rest_d = divmod(ds, 36_000)
        dm, rest_d = divmod(rest_d, 600)
        dsec, dfrac = divmod(rest_d, 10)
        sign = "-" if negative else "+"
        names.append(f"J{h:02d}{m:02d}{s:02d}.{frac:02d}{sign}{d:02d}{dm:02d}{dsec:02d}.{dfrac:d}")
    return names


def _check_default_radius(source: str, value: float) -> None:
    try:
        ok = math.isfinite(float(value)) and 0 < float(value) <= MAX_RADIUS_DEG
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise TargetError(
            source,
            [Problem(f"default_radius={value!r} is not a radius in (0, {MAX_RADIUS_DEG:g}] deg")],
        )


def _object_array(values: list[object]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v.strip() if isinstance(v, str) else ("" if v is None else str(v))
    return out


def _missing_of(values: list[object]) -> np.ndarray:
    return np.array([v is None or (isinstance(v, str) and not v.strip()) for v in values], bool)
