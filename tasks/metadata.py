"""Metadata to Parquet: every ObsCore column plus what the harvest decided, per (target, image).

Columns keep their VOTable units, descriptions, UCDs and utypes as Arrow field metadata,
so the Parquet explains itself. The dataset lives under ``<output>/metadata/`` split by
subtype and band (one file each); a rerun merges into it, replacing the rows of the pairs
it touched, so each (target, image) pair has exactly one current row. A crash leaves the old
file or the new one: on object stores (S3, GCS, Azure) an object appears only when its
upload completes, so the file is written in place and the upload aborted on error; elsewhere
it is written under a temporary name and moved into place (a rename).
"""

from __future__ import annotations

import logging
import posixpath
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.table import Table

from .crashpoints import crashpoint
from .storage import DIRECT_WRITE_PROTOCOLS, with_timeouts
from .storage_http import DEFAULT_TIMEOUT

log = logging.getLogger(__name__)

METADATA_DIR = "metadata"
FILE_NAME = "obscore.parquet"
PAIR_KEY = ("target_name", "obs_publisher_did")
PARTITION_COLUMNS = ("dataproduct_subtype", "lsst_band")
_DIR_SAFE = re.compile(r"[^A-Za-z0-9._+-]")

# The columns obsharvest adds to ObsCore's, with what they mean.
HARVEST_FIELDS: list[tuple[str, pa.DataType, str, str | None]] = [
    ("target_name", pa.string(), "Name of the target this row was found for", None),
    ("target_ra", pa.float64(), "Target right ascension (ICRS)", "deg"),
    ("target_dec", pa.float64(), "Target declination (ICRS)", "deg"),
    ("target_radius", pa.float64(), "Target search radius; null for a point", "deg"),
    (
        "verdict",
        pa.string(),
        "Does the image's WCS pixel grid contain the target: contains, "
        "outside (s_region padding only), no_wcs, error, or null when not checked",
        None,
    ),
    ("pixel_x", pa.float64(), "0-based pixel column of the target in the WCS HDU", "pix"),
    ("pixel_y", pa.float64(), "0-based pixel row of the target in the WCS HDU", "pix"),
    ("wcs_hdu", pa.int32(), "Index of the HDU whose celestial WCS decided", None),
    ("verdict_reason", pa.string(), "Why the verdict is no_wcs or error", None),
    ("stored", pa.bool_(), "The image is in object storage (this run or before)", None),
    ("storage_uri", pa.string(), "Where the FITS file is stored", None),
    ("file_size", pa.int64(), "Size of the stored file", "byte"),
    ("sha256", pa.string(), "SHA-256 of the stored file", None),
    ("failure", pa.string(), "Why this image could not be verified or stored", None),
    (
        "access_route",
        pa.string(),
        "How the file was reached: datalink (access_url), datalink-descriptor (the TAP "
        "result's service descriptor), direct (access_url is the file), or sniffed-datalink "
        "/ sniffed-direct when access_format did not say and the first reply decided",
        None,
    ),
    ("cutout_circle", pa.string(), "Cutout mode: the SODA CIRCLE asked (ra dec radius)", "deg"),
    ("quicklook_uri", pa.string(), "Where the quicklook PNG is stored", None),
    ("run_id", pa.string(), "The harvest run that last decided this row", None),
    ("harvested_at", pa.timestamp("us", tz="UTC"), "When that run decided this row", None),
]
HARVEST_COLUMNS = [name for name, *_ in HARVEST_FIELDS]


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


def _arrow_array(col) -> pa.Array:
    data = np.asarray(col)
    mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool)
    if mask.ndim == 0:
        mask = np.full(len(col), bool(mask))
    if data.dtype.kind in "SUO":
        values = [
            None if m else (v.decode() if isinstance(v, bytes) else str(v))
            for v, m in zip(data, mask, strict=True)
        ]
        return pa.array(values, type=pa.string())
    if data.dtype.kind == "b":
        return pa.array(data, type=pa.bool_(), mask=mask if mask.any() else None)
    return pa.array(data, mask=mask if mask.any() else None)


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


def with_harvest_columns(obscore: pa.Table, values: Mapping[str, list]) -> pa.Table:
    """Append obsharvest's columns (all of HARVEST_FIELDS, in order) to ObsCore's."""
    table = obscore
    for name, dtype, description, unit in HARVEST_FIELDS:
        meta = {b"description": description.encode()}
        if unit:
            meta[b"unit"] = unit.encode()
        data = values.get(name, [None] * obscore.num_rows)
        if len(data) != obscore.num_rows:
            raise ValueError(f"column {name}: {len(data)} values for {obscore.num_rows} rows")
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(
            pa.field(name, dtype, metadata=meta), pa.array(data, type=dtype)
        )
    return table


def _dir_part(value) -> str:
    text = "none" if value is None else str(value)
    text = _DIR_SAFE.sub("_", text).lstrip(".") or "none"
    return text[:100]


@dataclass(frozen=True)
class MetadataStore:
    """The Parquet dataset of one harvest output (local path or any fsspec URL)."""

    output_url: str
    storage_options: Mapping | None = None
    # connect, read seconds for object stores, where the options set none (with_timeouts)
    timeout: tuple[float, float] | None = DEFAULT_TIMEOUT

    @property
    def fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        options = with_timeouts(self.output_url, self.storage_options, self.timeout)
        fs, root = fsspec.core.url_to_fs(self.output_url, **options)
        return fs, posixpath.join(root.rstrip("/"), METADATA_DIR)

    def _files(self) -> list[str]:
        fs, root = self.fs_root
        fs.invalidate_cache(root)  # s3fs caches listings; another process may have written
        if not fs.exists(root):
            return []
        return sorted(p for p in fs.find(root) if p.endswith("/" + FILE_NAME))

    def read(self) -> pa.Table | None:
        """All current rows, or None before the first harvest."""
        fs, _ = self.fs_root
        tables = []
        for path in self._files():
            with fs.open(path, "rb") as fh:
                tables.append(pq.read_table(fh))
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    def merge(self, new: pa.Table) -> list[str]:
        """Write ``new`` into the dataset, replacing rows of the same (target, image) pairs.

        Returns the paths written. Each partition file is replaced atomically (write a
        temporary file, then move it over the old one).
        """
        if new.num_rows == 0:
            return []
        fs, root = self.fs_root
        parts = {}
        columns = {
            c: new.column(c).to_pylist() if c in new.column_names else [None] * new.num_rows
            for c in PARTITION_COLUMNS
        }
        for i in range(new.num_rows):
            key = tuple(_dir_part(columns[c][i]) for c in PARTITION_COLUMNS)
            parts.setdefault(key, []).append(i)
        written = []
        for key, index in parts.items():
            chunk = new.take(pa.array(index))
            directory = posixpath.join(root, *key)
            path = posixpath.join(directory, FILE_NAME)
            fs.invalidate_cache(path)
            if fs.exists(path):
                with fs.open(path, "rb") as fh:
                    old = pq.read_table(fh)
                replaced = set(zip(*(chunk.column(c).to_pylist() for c in PAIR_KEY), strict=True))
                keep = [
                    i
                    for i, pair in enumerate(
                        zip(*(old.column(c).to_pylist() for c in PAIR_KEY), strict=True)
                    )
                    if pair not in replaced
                ]
                chunk = pa.concat_tables(
                    [old.take(pa.array(keep, type=pa.int64())), chunk], promote_options="permissive"
                )
            if _direct_write(fs):
                _write_object(fs, path, chunk)
            else:
                fs.makedirs(directory, exist_ok=True)
                # temporaries of a writer that was killed: one writer per output, so any
                # left here are orphans (a run's merge is a single, short step)
                for orphan in fs.glob(posixpath.join(directory, f".{FILE_NAME}.*.tmp")):
                    fs.rm(orphan)
                tmp = posixpath.join(directory, f".{FILE_NAME}.{uuid.uuid4().hex}.tmp")
                try:
                    with fs.open(tmp, "wb") as fh:
                        pq.write_table(chunk, fh, compression="zstd")
                    crashpoint("parquet")
                    fs.mv(tmp, path)
                finally:
                    if fs.exists(tmp):
                        fs.rm(tmp)
            written.append(path)
        return written


def _direct_write(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & DIRECT_WRITE_PROTOCOLS)


def _write_object(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
    """Write Parquet straight to an object store key: it appears only if ``close()`` completes
    the upload. On error the upload is discarded (``close()`` would publish a partial file)."""
    handle = fs.open(path, "wb")
    try:
        pq.write_table(table, handle, compression="zstd")
        crashpoint("parquet")  # written, not yet published: the old file must survive
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
