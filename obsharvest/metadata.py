"""Metadata to Parquet: every ObsCore column plus what the harvest decided, per (target, image).

Every column of the archive's ObsCore reply is stored as it came (name, type, value),
archive-specific extras included; the harvest's own columns sit beside them under the
``obsh_`` prefix (see :data:`PREFIX`). Columns keep their VOTable units, descriptions,
UCDs and utypes twice: as Arrow field metadata (for pyarrow and tools built on it) and as
the YAML header astropy's Parquet reader looks for (``table_meta_yaml``), so
``Table.read`` gives columns with units.

The dataset lives under ``<output>/metadata/<subtype>/<band>/``, and it is append-only:
each write (a run, a shard, a compaction) adds files of its own, one per partition, named
``part-<UTC time>-<run id>-<random>.parquet``, and never rewrites or removes a file
another writer may be reading or writing. Any number of runs can therefore write into one
output at once, on a local disk or in object storage, and none loses a row. A file
appears whole or not at all: on object stores (S3, GCS, Azure) an object appears only when
its upload completes (a single PUT or a completed multipart upload; aborted on error);
elsewhere it is written under a hidden temporary name and renamed into place.

A (target, image) pair decided by several runs has several rows; the **current view**
(:func:`current`, what :meth:`MetadataStore.read` returns) keeps the newest of them: the
greatest ``obsh_harvested_at`` (when the run wrote its rows), then the greatest
``obsh_run_id``, then the file read last. Why the row's own time and not the order of
files: object stores have no rename and no reliable creation order across writers, and a
rule on row values is one that every reader (pyarrow, DuckDB, astropy) can apply and that
compaction preserves exactly. ``obsharvest compact`` (:meth:`MetadataStore.compact`)
rewrites each partition's current view into one fresh file and then removes the files it
read, and only those: the current view is the same before, during and after it, whatever
is written meanwhile. Files of older versions (``obscore.parquet``, one per partition)
are just more files.

Files written before the prefix (format 1) are read as if migrated, and rewritten in the
current format when a run next writes the dataset, or by ``obsharvest migrate <output>``;
see :func:`migrated`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from astropy.table import Column, Table
from astropy.table import meta as table_meta

from obsharvest.errors import MetadataFormatError
from obsharvest.runtime.crashpoints import crashpoint, rendezvous
from obsharvest.storage.output import METADATA_DIR, Output
from obsharvest.storage.store import DIRECT_WRITE_PROTOCOLS, mtime_of

log = logging.getLogger(__name__)

FILE_NAME = "obscore.parquet"  # the one file per partition of versions before part files
PARTITION_COLUMNS = ("dataproduct_subtype", "lsst_band")
_DIR_SAFE = re.compile(r"[^A-Za-z0-9._+-]")

PREFIX = "obsh_"
"""The namespace of every column obsharvest adds to ObsCore's.

Why a prefix: ObsCore's own names (``target_name``, ``s_region``, ``obs_id``, ...) are
the archive's and must come back exactly as it sent them, and archives add columns of
their own (``lsst_band``, DaCHS' extras, ...) under names nobody can list in advance, so
the harvest's names have to live where neither the standard nor an archive goes. The
ObsCore 1.1 columns and the extras of the archives we know never start with ``obsh_``;
no prefix can be proven free for every archive, so :func:`with_harvest_columns` refuses
a reply that uses it rather than overwrite anything. The query already ties its rows to
targets with ``obsh_target`` (``adql.TARGET_COLUMN``): one namespace for everything
obsharvest adds.

Why not one struct column: flat columns are what every reader handles without help.
``astropy.table.Table.read`` cannot read a struct column at all, FITS/VOTable/ECSV
exports of the table have no structs, and in DuckDB, pandas or polars
``obsh_verdict = 'contains'`` beats unnesting. Lower case, letters and underscores only:
a valid ADQL and SQL identifier that needs no quoting.
"""

FORMAT_KEY = b"obsharvest.format"
"""Schema metadata key saying how a file names its columns. Format 1 (no key) had the
harvest's columns unprefixed and its target name in ``target_name``, where ObsCore's was
dropped; format 2 has them under :data:`PREFIX` and ObsCore's columns untouched."""
FORMAT = 2

# The columns obsharvest adds to ObsCore's, with what they mean.
HARVEST_FIELDS: list[tuple[str, pa.DataType, str, str | None]] = [
    ("obsh_target_name", pa.string(), "Name of the target this row was found for", None),
    ("obsh_target_ra", pa.float64(), "Target right ascension (ICRS)", "deg"),
    ("obsh_target_dec", pa.float64(), "Target declination (ICRS)", "deg"),
    ("obsh_target_radius", pa.float64(), "Target search radius; null for a point", "deg"),
    (
        "obsh_verdict",
        pa.string(),
        "Does the image's WCS pixel grid contain the target: contains, "
        "outside (s_region padding only), no_wcs, error, no_data (mask mode), "
        "or null when not checked",
        None,
    ),
    ("obsh_pixel_x", pa.float64(), "0-based pixel column of the target in the WCS HDU", "pix"),
    ("obsh_pixel_y", pa.float64(), "0-based pixel row of the target in the WCS HDU", "pix"),
    ("obsh_wcs_hdu", pa.int32(), "Index of the HDU whose celestial WCS decided", None),
    ("obsh_verdict_reason", pa.string(), "Why the verdict is no_wcs or error", None),
    ("obsh_stored", pa.bool_(), "The image is in object storage (this run or before)", None),
    ("obsh_storage_uri", pa.string(), "Where the FITS file is stored", None),
    ("obsh_file_size", pa.int64(), "Size of the stored file", "byte"),
    ("obsh_sha256", pa.string(), "SHA-256 of the stored file", None),
    ("obsh_failure", pa.string(), "Why this image could not be verified or stored", None),
    (
        "obsh_access_route",
        pa.string(),
        "How the file was reached: datalink (access_url), datalink-descriptor (the TAP "
        "result's service descriptor), direct (access_url is the file), or sniffed-datalink "
        "/ sniffed-direct when access_format did not say and the first reply decided",
        None,
    ),
    (
        "obsh_cutout_circle",
        pa.string(),
        "Cutout mode: the SODA CIRCLE asked (ra dec radius)",
        "deg",
    ),
    ("obsh_quicklook_uri", pa.string(), "Where the quicklook PNG is stored", None),
    ("obsh_service", pa.string(), "The service (as the run names it) that returned the row", None),
    (
        "obsh_services",
        pa.string(),
        "Every service of the run that serves this image, comma-separated (one stored "
        "object for all of them)",
        None,
    ),
    ("obsh_run_id", pa.string(), "The harvest run that decided this row", None),
    (
        "obsh_harvested_at",
        pa.timestamp("us", tz="UTC"),
        "When that run wrote this row; of a pair's rows the newest is current",
        None,
    ),
]
HARVEST_COLUMNS = [name for name, *_ in HARVEST_FIELDS]
TARGET_NAME = "obsh_target_name"  # the harvest's target (ObsCore's target_name is the archive's)
PAIR_KEY = (TARGET_NAME, "obs_publisher_did")


def _field_metadata(col) -> dict[bytes, bytes]:
    meta = {}
    if col.unit is not None:
        meta[b"unit"] = str(col.unit).encode()
    if col.description:
        meta[b"description"] = str(col.description).encode()
    for key in ("ucd", "utype", "xtype"):
        value = col.meta.get(key) if col.meta else None
        if value:
            meta[key.encode()] = str(value).encode()
    return meta


def _harvest_field(name: str, dtype: pa.DataType, description: str, unit: str | None):
    meta = {b"description": description.encode()}
    if unit:
        meta[b"unit"] = unit.encode()
    return pa.field(name, dtype, metadata=meta)


def _text_or_none(value, masked: bool) -> str | None:
    if masked or value is None or value is np.ma.masked:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _arrow_array(col) -> pa.Array:
    """One VOTable column as Arrow, values and type as the archive sent them: strings as
    strings, numbers in their own width, masked values as nulls, fixed-size arrays as
    fixed-size lists (masked elements null, the row never: astropy's Parquet reader cannot
    stack a null row) and variable-length arrays (e.g. a DALI ``polygon`` s_region) as
    lists of their element type.

    So ``s_region`` is kept as served, never rewritten: STC-S text in any dialect, a DALI
    array as ``list<double>`` whose field metadata keeps the ``xtype``, a NULL as null (or
    as ``""``, which is how VOTable TABLEDATA carries a NULL ``char``).
    ``obsharvest.verify.sregion.region_text`` turns any of them into STC-S."""
    data = np.ma.getdata(col)
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) else np.zeros(data.shape, bool)
    if data.ndim > 1 and data.dtype.kind not in "SUO":
        flat = np.ascontiguousarray(data).reshape(-1)
        flat_mask = mask.reshape(-1)
        values = pa.array(flat, mask=flat_mask if flat_mask.any() else None)
        return pa.FixedSizeListArray.from_arrays(values, int(np.prod(data.shape[1:])))
    if mask.ndim > 1:
        mask = np.asarray(mask.reshape(len(col), -1).all(axis=1))
    if data.dtype.kind in "SU":
        return pa.array(
            [_text_or_none(v, m) for v, m in zip(data, mask, strict=True)], type=pa.string()
        )
    if data.dtype.kind == "O":
        return _object_array(data, mask)
    return pa.array(data, mask=mask if mask.any() else None)


def _object_array(data: np.ndarray, mask: np.ndarray) -> pa.Array:
    """Object columns hold text (VOTable ``char`` with arraysize ``*``) or variable-length
    arrays (numbers with arraysize ``*``); which one, the values say."""
    values = [None if m else v for v, m in zip(data, mask, strict=True)]
    arrays = [v for v in values if isinstance(v, np.ndarray)]
    if not arrays:
        return pa.array([_text_or_none(v, False) for v in values], type=pa.string())
    element = pa.from_numpy_dtype(np.result_type(*(np.ma.getdata(a).dtype for a in arrays)))
    rows = [None if v is None else _element_values(v, element) for v in values]
    return pa.array(rows, type=pa.list_(element))


def _element_values(value: np.ndarray, element: pa.DataType) -> list:
    mask = np.ma.getmaskarray(value).ravel()
    array = pa.array(np.ma.getdata(value).ravel(), mask=mask if mask.any() else None)
    return array.cast(element).to_pylist()


def obscore_to_arrow(rows: Table, drop: Iterable[str] = ()) -> pa.Table:
    """An astropy table of ObsCore rows as Arrow, with VOTable metadata on each field."""
    skip = set(drop)
    arrays, fields = [], []
    for name in rows.colnames:
        if name in skip:
            continue
        col = rows[name]
        array = _arrow_array(col)
        arrays.append(array)
        fields.append(
            pa.field(name, array.type, nullable=True, metadata=_field_metadata(col) or None)
        )
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def check_obscore_columns(names: Iterable[str], *, ignore: Iterable[str] = ()) -> None:
    """Refuse an archive reply with a column in obsharvest's namespace: writing the
    harvest's columns would overwrite or shadow it. (ADQL, DuckDB and PostgreSQL fold
    case, so ``OBSH_X`` collides too.)"""
    skip = {n.lower() for n in ignore}
    for name in names:
        if name.lower().startswith(PREFIX) and name.lower() not in skip:
            raise MetadataFormatError(
                f"the archive's ObsCore reply has a column {name!r} in obsharvest's own "
                f"{PREFIX}* namespace; refusing to overwrite it (report this to obsharvest)"
            )


def with_harvest_columns(obscore: pa.Table, values: Mapping[str, list]) -> pa.Table:
    """Append obsharvest's columns (all of HARVEST_FIELDS, in order) to ObsCore's, which
    are kept as they are: an ObsCore column in the harvest's namespace is refused."""
    check_obscore_columns(obscore.column_names)
    unknown = set(values) - set(HARVEST_COLUMNS)
    if unknown:
        raise ValueError(f"not harvest columns: {', '.join(sorted(unknown))}")
    table = obscore
    for name, dtype, description, unit in HARVEST_FIELDS:
        data = values.get(name, [None] * obscore.num_rows)
        if len(data) != obscore.num_rows:
            raise ValueError(f"column {name}: {len(data)} values for {obscore.num_rows} rows")
        table = table.append_column(
            _harvest_field(name, dtype, description, unit), pa.array(data, type=dtype)
        )
    return table


def file_format(schema: pa.Schema) -> int | None:
    """Which format a file is in (1: before the prefix), or None if it is not ours."""
    marker = (schema.metadata or {}).get(FORMAT_KEY)
    if marker is not None:
        try:
            return int(marker)
        except ValueError:
            return None
    if any(n.startswith(PREFIX) for n in schema.names):
        return None
    legacy = {"target_name", "verdict", "stored", "run_id", "obs_publisher_did"}
    return 1 if legacy <= set(schema.names) else None


def migrated(table: pa.Table, where: str = "") -> pa.Table:
    """A file's rows in the current format, refusing what cannot be made current.

    Format 1 wrote the harvest's target name in ``target_name`` and dropped ObsCore's, so
    the archive's value is lost for those rows: the column becomes ``obsh_target_name``
    and ObsCore's ``target_name`` is null until a run queries the pair again (its new row
    replaces the old one).
    """
    version = file_format(table.schema)
    if version == FORMAT:
        return table
    where = where or "a metadata file"
    if version is None:
        raise MetadataFormatError(
            f"{where}: not obsharvest's Parquet (neither its {PREFIX}* columns nor the old "
            "ones); move it out of the output's metadata/"
        )
    if version > FORMAT:
        raise MetadataFormatError(
            f"{where}: written by a newer obsharvest (format {version}, this one writes "
            f"{FORMAT}); upgrade obsharvest to harvest into this output"
        )
    fields = {name: _harvest_field(name, *rest) for name, *rest in HARVEST_FIELDS}
    columns, schema = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        name = PREFIX + field.name if PREFIX + field.name in fields else field.name
        if name == HARVEST_COLUMNS[0]:  # ObsCore's target_name goes just before ours
            columns.append(pa.nulls(table.num_rows, pa.string()))
            schema.append(pa.field("target_name", pa.string()))
        columns.append(column)
        schema.append(fields[name].with_type(field.type) if name in fields else field)
    return pa.Table.from_arrays(columns, schema=pa.schema(schema))


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Rows of several tables under one schema; the last table's field metadata wins (the
    newest reply describes its columns best)."""
    table = pa.concat_tables(tables, promote_options="permissive")
    newest = tables[-1].schema
    fields = [
        f.with_metadata(newest.field(f.name).metadata or f.metadata)
        if f.name in newest.names
        else f
        for f in table.schema
    ]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields))


# ------------------------------------------------------------ what astropy's reader needs


def _skeleton_column(field: pa.Field) -> Column:
    """A one-row astropy column of the field's type, carrying its unit, description and
    VOTable attributes, for astropy's own header serialisation."""
    meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
    t = field.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        data = np.empty(1, dtype=object)
        data[0] = np.zeros(0, dtype=_numpy_dtype(t.value_type))
    elif pa.types.is_fixed_size_list(t):
        data = np.zeros((1, t.list_size), dtype=_numpy_dtype(t.value_type))
    else:
        data = np.zeros(1, dtype=_numpy_dtype(t))
    return Column(
        data,
        name=field.name,
        unit=meta.get("unit") or None,
        description=meta.get("description") or None,
        meta={k: meta[k] for k in ("ucd", "utype", "xtype") if meta.get(k)},
    )


def _numpy_dtype(t: pa.DataType) -> np.dtype:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return np.dtype("U1")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return np.dtype("S1")
    if pa.types.is_timestamp(t):
        return np.dtype(f"datetime64[{t.unit}]")
    try:
        return np.dtype(t.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return np.dtype("U1")


def _string_lengths(table: pa.Table) -> dict[str, int]:
    """The longest value of each string column (of list elements for list columns):
    astropy's reader sizes its numpy strings from ``table::len::<name>``."""
    out = {}
    for field, column in zip(table.schema, table.columns, strict=True):
        t, values = field.type, column
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            t = t.value_type
            values = (
                pa.chunked_array([c.flatten() for c in column.chunks], type=t)
                if column.num_chunks
                else pa.chunked_array([], type=t)
            )
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            longest = pc.max(pc.utf8_length(values)).as_py() if len(values) else None
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            longest = pc.max(pc.binary_length(values)).as_py() if len(values) else None
        else:
            continue
        out[field.name] = max(1, longest or 0)
    return out


def file_metadata(table: pa.Table) -> dict[bytes, bytes]:
    """Schema metadata of a file: the format marker, and astropy's Parquet header.

    astropy's ``write_table_parquet`` stores the table's column attributes as an ECSV-style
    YAML header under ``table_meta_yaml`` and string widths under ``table::len::<name>``;
    ``read_table_parquet`` puts unit, description and meta (ucd, utype, xtype) back on
    each column from it, and fails on a column the header does not list. The header is
    made by astropy's own serialiser (``meta.get_yaml_from_table``) from one-row
    skeleton columns of the same names and types, so it matches what astropy would write.
    """
    metadata = {FORMAT_KEY: str(FORMAT).encode(), b"table_meta_yaml": _meta_yaml(table.schema)}
    for name, length in _string_lengths(table).items():
        metadata[f"table::len::{name}".encode()] = str(length).encode()
    return metadata


_YAML_BY_SCHEMA: dict[tuple, bytes] = {}


def _meta_yaml(schema: pa.Schema) -> bytes:
    """astropy's YAML header for a schema. A run writes many files of one schema and
    astropy's serialiser costs ~10 ms a time, so it is made once per schema; the key holds
    each field's metadata (unit, ucd...), which ``pa.Schema`` equality ignores."""
    key = tuple((f.name, str(f.type), tuple(sorted((f.metadata or {}).items()))) for f in schema)
    made = _YAML_BY_SCHEMA.get(key)
    if made is None:
        skeleton = Table([_skeleton_column(f) for f in schema])
        made = "\n".join(table_meta.get_yaml_from_table(skeleton)).encode()
        if len(_YAML_BY_SCHEMA) >= 64:  # a long-lived process meets few schemas; stay bounded
            _YAML_BY_SCHEMA.clear()
        _YAML_BY_SCHEMA[key] = made
    return made


def _dir_part(value) -> str:
    text = "none" if value is None else str(value)
    text = _DIR_SAFE.sub("_", text).lstrip(".") or "none"
    return text[:100]


# ------------------------------------------------------------ the current view


ORDER = ("obsh_harvested_at", "obsh_run_id")
"""What makes one row of a pair newer than another (then: the row read later)."""


def current(table: pa.Table) -> pa.Table:
    """The current view of ``table``: for each (target, image) pair its newest row.

    Newest means the greatest ``obsh_harvested_at``, then the greatest ``obsh_run_id``,
    then the row that comes later in ``table`` (rows without a time or a run id rank
    oldest). Rows keep their order. A table without the pair's columns is returned as it
    is. The same rule in SQL (DuckDB)::

        QUALIFY row_number() OVER (PARTITION BY obsh_target_name, obs_publisher_did
            ORDER BY obsh_harvested_at DESC NULLS LAST, obsh_run_id DESC NULLS LAST) = 1
    """
    n = table.num_rows
    if n < 2 or any(k not in table.column_names for k in PAIR_KEY):
        return table
    at, run = ORDER
    when = (
        pc.cast(table.column(at), pa.int64())
        if at in table.column_names and not pa.types.is_null(table.schema.field(at).type)
        else pa.nulls(n, pa.int64())
    )
    runs = (
        pc.cast(table.column(run), pa.string())
        if run in table.column_names
        else pa.nulls(n, pa.string())
    )
    order = pa.table(
        {
            "t": table.column(PAIR_KEY[0]),
            "d": table.column(PAIR_KEY[1]),
            "at": when,
            "run": runs,
            "i": pa.array(np.arange(n, dtype=np.int64)),
        }
    )
    # nulls sort last whatever the order: in a descending key, last is oldest
    order = order.sort_by(
        [
            ("t", "ascending"),
            ("d", "ascending"),
            ("at", "descending"),
            ("run", "descending"),
            ("i", "descending"),
        ]
    )
    first = order.group_by(["t", "d"], use_threads=False).aggregate([("i", "first")])
    if first.num_rows == n:
        return table
    return table.take(pa.array(np.sort(first.column("i_first").to_numpy())))


# ------------------------------------------------------------ the dataset

PART_PREFIX = "part-"
SUFFIX = ".parquet"
TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 3600.0  # a temporary file older than this belongs to a dead writer
_HOST = _DIR_SAFE.sub("_", socket.gethostname()).replace(".", "_").replace("-", "_")[:64]


def _temp_name(name: str) -> str:
    """A hidden temporary beside ``name`` that says who writes it (process and host), so a
    later writer can tell a dead writer's leftover from a live one's work in progress."""
    return f".{name}.{uuid.uuid4().hex[:8]}.{os.getpid()}-{_HOST or 'host'}{TEMP_SUFFIX}"


def _orphaned(name: str, mtime: float | None, older_than: float) -> bool:
    """Is ``name`` a temporary whose writer is gone: a process of this host that no longer
    exists (the name says which), or, from any host, older than ``older_than`` seconds? A
    temporary of a live process, or of another host and younger, may still be renamed into
    place and is left alone (a reused process id only keeps a leftover a little longer)."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return False
    writer = name.removesuffix(TEMP_SUFFIX).rsplit(".", 1)[-1]
    pid, _, host = writer.partition("-")
    if host == (_HOST or "host") and pid.isdigit() and not _process_exists(int(pid)):
        return True
    return mtime is not None and time.time() - mtime >= older_than


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


READ_ATTEMPTS = 5  # listings tried when a file vanishes under a read (compaction, migration)
READ_WORKERS = 8  # files read at once (object stores: one request each)


def part_name(tag: str | None = None) -> str:
    """A file name no other writer will use: UTC time (so a listing is in write order),
    the writer's tag (its run id) and 48 random bits."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    tag = _dir_part(tag)[:64] if tag else "x"
    return f"{PART_PREFIX}{stamp}-{tag}-{uuid.uuid4().hex[:12]}{SUFFIX}"


def _is_data_file(path: str) -> bool:
    name = posixpath.basename(path)
    return name.endswith(SUFFIX) and not name.startswith((".", "_"))


@dataclass(frozen=True)
class Compaction:
    """What :meth:`MetadataStore.compact` did."""

    files_before: int
    files_after: int
    rows_before: int  # rows in the files it rewrote
    rows_after: int  # ... and in the files it wrote instead: the superseded ones are gone
    removed: tuple[str, ...] = ()
    written: tuple[str, ...] = ()
    temps_removed: tuple[str, ...] = ()


@dataclass(frozen=True, init=False)
class MetadataStore:
    """The Parquet dataset of one harvest output (local path or any fsspec URL).

    Append-only (see the module's docstring): :meth:`append` adds files, :meth:`read`
    gives the current view, :meth:`compact` drops superseded rows. Nothing here holds a
    lock or assumes it is the only writer. It works on the output's file system as the
    run opened it (:class:`~obsharvest.storage.output.Output`); a plain URL is an output
    with no storage options.
    """

    output: Output

    def __init__(self, output: Output | str) -> None:
        object.__setattr__(self, "output", Output.of(output))

    @property
    def fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The output's file system and the dataset's directory in it."""
        return self.output.fs, self.output.path(METADATA_DIR)

    def files(self) -> list[str]:
        """The dataset's Parquet files (hidden temporaries left out), by path: partition by
        partition, and in each the files of earlier versions (``obscore.parquet``) before
        the part files, which sort by the time they were written."""
        fs, root = self.fs_root
        forget_listings(fs, root)  # another process may have written or removed files
        try:
            found = fs.find(root)
        except FileNotFoundError:
            return []
        return sorted(p for p in found if _is_data_file(p))

    def _read_file(
        self,
        fs: fsspec.AbstractFileSystem,
        path: str,
        columns: Iterable[str] | None = None,
        targets: Iterable[str] | None = None,
    ) -> pa.Table:
        """One file's rows in the current format (older formats renamed in memory); only
        ``columns`` (when given) and rows of ``targets`` (when given, filtered in the read)."""
        with fs.open(path, "rb") as fh:
            schema = pq.read_schema(fh)
            fh.seek(0)
            if file_format(schema) == FORMAT:
                names = None if columns is None else [n for n in schema.names if n in columns]
                where = None if targets is None else pc.field(TARGET_NAME).isin(targets)
                return pq.read_table(fh, columns=names, filters=where)
            table = pq.read_table(fh)
        table = migrated(table, where=fs.unstrip_protocol(path))  # refuses what is not ours
        if targets is not None:
            table = table.filter(pc.field(TARGET_NAME).isin(targets))
        if columns is not None:
            table = table.select([n for n in table.column_names if n in columns])
        return table

    def _read_all(
        self,
        columns: Iterable[str] | None = None,
        targets: Iterable[str] | None = None,
        exclude_run: str | None = None,
    ) -> list[pa.Table]:
        """Every file's rows. A file that vanishes between the listing and its read was
        replaced by a compaction or a migration, which wrote its rows into a new file
        before removing it: list again and read again."""
        fs, _ = self.fs_root
        wanted = None if columns is None else {*columns, *PAIR_KEY, *ORDER}
        names = None if targets is None else pa.array(sorted(set(targets)), pa.string())
        skip = f"-{_dir_part(exclude_run)[:64]}-" if exclude_run else None
        for attempt in range(1, READ_ATTEMPTS + 1):
            paths = [p for p in self.files() if not (skip and skip in posixpath.basename(p))]
            if not paths:
                return []
            try:
                with ThreadPoolExecutor(min(READ_WORKERS, len(paths))) as pool:
                    return list(pool.map(lambda p: self._read_file(fs, p, wanted, names), paths))
            except FileNotFoundError as exc:
                if attempt == READ_ATTEMPTS:
                    raise
                log.info("a metadata file was replaced while it was read (%s); reading again", exc)
        return []  # unreachable

    def read(
        self,
        *,
        columns: Iterable[str] | None = None,
        targets: Iterable[str] | None = None,
        exclude_run: str | None = None,
    ) -> pa.Table | None:
        """The current view (:func:`current`): one row per (target, image) pair, the newest;
        None before the first harvest. Files in an older format are read as if migrated
        (nothing is written).

        ``columns``: only these (and the pair's key and ``obsh_harvested_at``/``obsh_run_id``,
        which the view is made from). ``targets``: only rows of these target names, filtered
        as each file is read -- the target is part of the pair's key, so the view of a
        subset is exactly the subset of the view. ``exclude_run``: not the files this run
        wrote (a run in shards asks once per shard, and its own shards' targets differ).
        """
        tables = self._read_all(columns, targets, exclude_run)
        if not tables:
            return None
        return current(_concat(tables))

    def migrate(self, *, every_file: bool = True) -> list[str]:
        """Rewrite the files of an older format in the current one; returns their paths.

        Each is read, its rows are written as a new part file, and only then is it removed:
        a crash in between leaves the same rows twice, which the current view shows once,
        and the next call (or run) finishes the job. Two runs migrating at once each write
        a copy; one of them removes the old file. A file that is not obsharvest's, or is of
        a newer format, is refused (:class:`MetadataFormatError`). ``every_file=False``
        looks only at the files an older obsharvest can have written (``obscore.parquet``):
        what a run does before it appends, to save a request per part file.
        """
        fs, _ = self.fs_root
        done = []
        for path in self.files():
            if not every_file and posixpath.basename(path) != FILE_NAME:
                continue
            try:
                with fs.open(path, "rb") as fh:
                    if file_format(pq.read_schema(fh)) == FORMAT:
                        continue
                table = self._read_file(fs, path)  # refuses what is not ours or is newer
            except FileNotFoundError:
                continue  # another writer migrated it meanwhile
            self._publish(fs, posixpath.join(posixpath.dirname(path), part_name("migrated")), table)
            _remove(fs, path)
            done.append(path)
        if done:
            log.warning(
                "migrated %d metadata files to the %s* harvest columns (ObsCore's "
                "target_name was not kept by the old format: null until re-queried)",
                len(done),
                PREFIX,
            )
        return done

    def append(self, new: pa.Table, run_id: str | None = None) -> list[str]:
        """Add ``new``'s rows to the dataset: one new file per partition (subtype, band),
        named after ``run_id`` (:func:`part_name`). Returns the paths written.

        Nothing is read back or replaced: rows of pairs already in the dataset supersede
        the older ones when read (:func:`current`). Files of an older format are migrated
        first, so the dataset is never a mix of two namings.
        """
        if new.num_rows == 0:
            return []
        self.migrate(every_file=False)
        fs, root = self.fs_root
        parts: dict[tuple[str, ...], list[int]] = {}
        columns = {
            c: new.column(c).to_pylist() if c in new.column_names else [None] * new.num_rows
            for c in PARTITION_COLUMNS
        }
        for i in range(new.num_rows):
            key = tuple(_dir_part(columns[c][i]) for c in PARTITION_COLUMNS)
            parts.setdefault(key, []).append(i)
        written = []
        for key, index in parts.items():
            path = posixpath.join(root, *key, part_name(run_id))
            self._publish(fs, path, new.take(pa.array(index, type=pa.int64())))
            written.append(path)
            self._remove_orphans(posixpath.dirname(path))  # a killed run's, never a live one's
        return written

    def compact(self, *, stale_temp_seconds: float = STALE_TEMP_SECONDS) -> Compaction:
        """Rewrite each partition's current view into one fresh file; remove what it replaces.

        Safe while runs write into the output: only files listed and read here are removed,
        and only after the file holding their current rows is complete. A row written
        meanwhile is in a file this call never saw, so it stays and is read as before; a
        superseded row is dropped only in favour of a newer row of the same files, which
        would win in any larger set of files too. The current view is therefore the same
        before, during and after (a reader that meets a removed file lists again). Two
        compactions at once can leave the same rows in two files: harmless, and the next
        compaction merges them. Also removes temporaries of writers that died
        (:func:`_orphaned`: from another host once ``stale_temp_seconds`` old) and migrates
        files of an older format.
        """
        self.migrate()
        fs, _ = self.fs_root
        files = self.files()
        by_dir: dict[str, list[str]] = {}
        for path in files:
            by_dir.setdefault(posixpath.dirname(path), []).append(path)
        removed, written, rows_before, rows_after = [], [], 0, 0
        for directory, paths in sorted(by_dir.items()):
            if len(paths) < 2:
                continue  # a file holds each pair once: nothing to drop
            tables, read = [], []
            for path in paths:
                try:
                    tables.append(self._read_file(fs, path))
                except FileNotFoundError:
                    continue  # another compaction took it; its rows are in the file it wrote
                read.append(path)
            if len(read) < 2:
                continue
            view = current(_concat(tables))
            view = view.sort_by([(k, "ascending") for k in PAIR_KEY])  # target filters skip groups
            path = posixpath.join(directory, part_name("compact"))
            self._publish(fs, path, view)
            written.append(path)
            for old in read:
                _remove(fs, old)
            removed += read
            rows_before += sum(t.num_rows for t in tables)
            rows_after += view.num_rows
        temps = self._remove_orphans(self.fs_root[1], stale_temp_seconds, recursive=True)
        return Compaction(
            files_before=len(files),
            files_after=len(files) - len(removed) + len(written),
            rows_before=rows_before,
            rows_after=rows_after,
            removed=tuple(removed),
            written=tuple(written),
            temps_removed=tuple(temps),
        )

    def _remove_orphans(
        self,
        directory: str,
        older_than: float = STALE_TEMP_SECONDS,
        *,
        recursive: bool = False,
    ) -> list[str]:
        """Remove the temporaries in ``directory`` that writers killed before their rename
        left (:func:`_orphaned`); never one a live writer may still rename. Local and
        similar file systems only: object stores have no temporaries."""
        fs, _ = self.fs_root
        if direct_write(fs):
            return []
        try:
            if recursive:
                found = fs.find(directory, detail=True)
            else:
                found = {i["name"]: i for i in fs.ls(directory, detail=True)}
        except FileNotFoundError:
            return []
        removed = []
        for path, info in found.items():
            if _orphaned(posixpath.basename(path), mtime_of(info), older_than):
                _remove(fs, path)
                removed.append(path)
        return removed

    def _publish(self, fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
        """Write ``table`` (and its astropy header) as the new file ``path``, which appears
        whole or not at all. ``path`` is unique to this write (:func:`part_name`), so no
        other writer's file is ever replaced, and no other writer's temporary is touched."""
        table = table.replace_schema_metadata(file_metadata(table))
        if direct_write(fs):
            _write_object(fs, path, table)
            return
        directory, name = posixpath.split(path)
        fs.makedirs(directory, exist_ok=True)
        tmp = posixpath.join(directory, _temp_name(name))
        try:
            with fs.open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
            rendezvous("parquet")  # tests: concurrent runs all hold a written temporary here
            crashpoint("parquet")
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)


def forget_listings(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Drop the file system's cached listings of ``root`` and everything below it.

    s3fs (like other object-store back ends) caches directory listings, and its ``find``
    keeps a subdirectory's cached listing instead of the fresh one; opening a file then
    looks it up in that stale listing and raises FileNotFoundError for a file another
    process wrote since. ``invalidate_cache(root)`` drops only ``root`` and its parents."""
    fs.invalidate_cache(root)
    cache = getattr(fs, "dircache", None)
    if cache is None:
        return
    below = root.rstrip("/") + "/"
    for key in [k for k in list(cache) if k.startswith(below)]:
        cache.pop(key, None)


def _remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove a file another writer may have removed already."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def direct_write(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` publishes an object only once its upload completes (S3, GCS, Azure),
    so a write may go straight to its final key; elsewhere a temporary name and a rename."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & DIRECT_WRITE_PROTOCOLS)


def _write_object(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
    """Write Parquet straight to an object store key: it appears only if ``close()`` completes
    the upload. On error the upload is discarded (``close()`` would publish a partial file)."""
    handle = fs.open(path, "wb")
    try:
        pq.write_table(table, handle, compression="zstd")
        rendezvous("parquet")  # tests: concurrent runs all have an upload open here
        crashpoint("parquet")  # written, not yet published: nothing may appear
    except BaseException:
        discard = getattr(handle, "discard", None)
        try:
            if discard is not None:
                discard()
        except Exception as exc:  # the write's own error is the one to report
            log.warning("discarding the upload of %s failed: %s", path, exc)
        handle.closed = True  # keep __del__ from committing what was buffered
        raise
    handle.close()
