"""TAP_UPLOAD: client tables sent with a query, queryable as ``TAP_UPLOAD.<name>``.

One query joining an uploaded target list against ObsCore serves many targets at once,
which is how a harvester avoids one query per target. Tables arrive inline (a multipart
part named by ``param:<part>``) or by URL, as VOTable; astropy parses them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping

import numpy as np
from astropy.io.votable import parse_single_table
from astropy.table import Column, MaskedColumn, Table

from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.httpcore import Upload

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # the RSP's documented limit
MAX_UPLOAD_ROWS = 1_000_000


def parse_upload_param(value: str) -> list[tuple[str, str]]:
    """``"t1,param:part1;t2,http://host/t.xml"`` → ``[("t1", "param:part1"), ...]``."""
    pairs = []
    for item in value.split(";"):
        if not item.strip():
            continue
        name, sep, uri = item.partition(",")
        name, uri = name.strip(), uri.strip()
        if not sep or not uri:
            raise AdqlError(f"UPLOAD item {item!r} is not 'tablename,URI'")
        if not _NAME.match(name):
            raise AdqlError(f"UPLOAD table name {name!r} is not a valid ADQL identifier")
        pairs.append((name, uri))
    return pairs


def _normalise(table: Table, name: str) -> Table:
    """Lower-case column names (ADQL matches them case-insensitively) and plain dtypes."""
    out = Table()
    seen: set[str] = set()
    for colname in table.colnames:
        key = colname.lower()
        if key in seen:
            raise AdqlError(f"uploaded table {name!r} has two columns named {colname!r}")
        seen.add(key)
        col = table[colname]
        data = np.asarray(col)
        if data.dtype == object:  # variable-length char → fixed-width str for numpy ops
            data = np.array(["" if v is None else str(v) for v in data], dtype=str)
        mask = getattr(col, "mask", None)
        kwargs = {"unit": col.unit, "description": col.description, "meta": dict(col.meta)}
        if mask is not None and np.any(mask):
            out[key] = MaskedColumn(data, mask=np.asarray(mask), **kwargs)
        else:
            out[key] = Column(data, **kwargs)
    return out


def load_uploads(
    upload_values: list[str],
    files: Mapping[str, Upload],
    fetch: Callable[[str], bytes],
) -> dict[str, Table]:
    """Parse every UPLOAD parameter into tables keyed ``tap_upload.<name>`` (lower case)."""
    tables: dict[str, Table] = {}
    for value in upload_values:
        for name, uri in parse_upload_param(value):
            if uri.startswith("param:"):
                part = uri[len("param:") :]
                if part not in files:
                    raise AdqlError(
                        f"UPLOAD {name}: no multipart part named {part!r} in the request"
                    )
                data = files[part].data
            elif uri.startswith(("http://", "https://")):
                data = fetch(uri)
            else:
                raise AdqlError(f"UPLOAD {name}: URI {uri!r} is neither param:<part> nor http(s)")
            if len(data) > MAX_UPLOAD_BYTES:
                raise AdqlError(
                    f"UPLOAD {name}: {len(data)} bytes is over the {MAX_UPLOAD_BYTES}-byte limit"
                )
            try:
                table = parse_single_table(io.BytesIO(data)).to_table()
            except Exception as exc:  # astropy raises many kinds for bad VOTable
                raise AdqlError(f"UPLOAD {name}: not a readable VOTable ({exc})") from None
            if len(table) > MAX_UPLOAD_ROWS:
                raise AdqlError(
                    f"UPLOAD {name}: {len(table)} rows is over the {MAX_UPLOAD_ROWS}-row limit"
                )
            tables[f"tap_upload.{name.lower()}"] = _normalise(table, name)
    return tables
