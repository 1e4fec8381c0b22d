"""TAP_SCHEMA: the service describing its own tables, so clients can discover ObsCore.

The seed tutorial (§2) reads ``tap_schema.schemas``, ``tap_schema.tables`` and
``tap_schema.columns``; they are derived here from the astropy tables the archive serves
(column unit, description and VOTable hints in ``meta``), so they cannot drift from what
a query actually returns. Column order is alphabetical, as the RSP shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

_SCHEMA_DESCRIPTIONS = {
    "ivoa": "ObsCore v1.1 attributes in ObsTAP realization",
    "rr": "RegTAP 1.1: the resources this registry describes",
    "tap_schema": "A TAP-standard-mandated schema to describe tablesets in a TAP 1.1 service",
    "tap_upload": "Tables uploaded by the client with the query (TAP_UPLOAD)",
}
_SCHEMA_INDEX = {"ivoa": 2, "tap_schema": 100000}


@dataclass(frozen=True)
class PublishedTable:
    """A table as the service publishes it: its ADQL name, description and data."""

    schema: str
    name: str  # qualified, with the case the service displays, e.g. "ivoa.ObsCore"
    description: str
    data: Table
    index: int = 0

    @property
    def key(self) -> str:
        """The lookup key the ADQL engine uses: lower-case qualified name."""
        return self.name.lower()


def votable_datatype(column) -> str:
    """The VOTable datatype name TAP_SCHEMA and VOSI report for an astropy column."""
    hinted = column.meta.get("datatype")
    if hinted:
        return hinted
    kind, size = column.dtype.kind, column.dtype.itemsize
    if kind in "US":
        return "char"
    if kind == "b":
        return "boolean"
    if kind in "iu":
        return {1: "unsignedByte", 2: "short", 4: "int"}.get(size, "long")
    if kind == "f":
        return "float" if size == 4 else "double"
    return "char"


def _str_col(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=str) if values else np.array([], dtype="U1")


def _described(table: Table, descriptions: dict[str, str]) -> Table:
    for name, text in descriptions.items():
        table[name].description = text
        table[name].meta["datatype"] = votable_datatype(table[name])
    return table


def build_tap_schema(published: list[PublishedTable]) -> list[PublishedTable]:
    """Return the TAP_SCHEMA tables describing ``published`` and themselves."""
    names = ["schemas", "tables", "columns", "keys", "key_columns"]
    own = [
        PublishedTable("tap_schema", f"tap_schema.{n}", f"TAP_SCHEMA {n}", Table(), 100000 + i)
        for i, n in enumerate(names)
    ]
    everything = published + own

    schemas = sorted({t.schema for t in everything})
    schemas_t = Table(
        {
            "description": _str_col([_SCHEMA_DESCRIPTIONS.get(s, "") for s in schemas]),
            "schema_index": np.array([_SCHEMA_INDEX.get(s, 1) for s in schemas], dtype=np.int32),
            "schema_name": _str_col(schemas),
            "utype": _str_col(["" for _ in schemas]),
        }
    )
    _described(
        schemas_t,
        {
            "description": "Brief description of the schema",
            "schema_index": "Recommended sort order when listing schemas",
            "schema_name": "Fully qualified schema name",
            "utype": "UType if schema corresponds to a data model",
        },
    )

    tables_t = Table(
        {
            "description": _str_col([t.description for t in everything]),
            "schema_name": _str_col([t.schema for t in everything]),
            "table_index": np.array([t.index for t in everything], dtype=np.int32),
            "table_name": _str_col([t.name for t in everything]),
            "table_type": _str_col(["table" for _ in everything]),
            "utype": _str_col(["" for _ in everything]),
        }
    )
    _described(
        tables_t,
        {
            "description": "Brief description of the table",
            "schema_name": "Fully qualified schema name",
            "table_index": "Recommended sort order when listing tables",
            "table_name": "Fully qualified table name",
            "table_type": "One of: table or view",
            "utype": "UType if the table corresponds to a data model",
        },
    )

    rows: dict[str, list] = {
        k: []
        for k in (
            "arraysize",
            "column_index",
            "column_name",
            "datatype",
            "description",
            "indexed",
            "principal",
            "size",
            "std",
            "table_name",
            "ucd",
            "unit",
            "utype",
            "xtype",
        )
    }
    column_tables = [t for t in published]
    # the TAP_SCHEMA tables describe their own columns too, once they exist
    own_data = {"tap_schema.schemas": schemas_t, "tap_schema.tables": tables_t}
    for table in column_tables:
        _add_columns(rows, table.name, table.data)
    for name, data in own_data.items():
        _add_columns(rows, name, data)
    columns_t = Table(
        {
            "arraysize": _str_col(rows["arraysize"]),
            "column_index": np.array(rows["column_index"], dtype=np.int32),
            "column_name": _str_col(rows["column_name"]),
            "datatype": _str_col(rows["datatype"]),
            "description": _str_col(rows["description"]),
            "indexed": np.array(rows["indexed"], dtype=np.int32),
            "principal": np.array(rows["principal"], dtype=np.int32),
            "size": np.array(rows["size"], dtype=np.int32),
            "std": np.array(rows["std"], dtype=np.int32),
            "table_name": _str_col(rows["table_name"]),
            "ucd": _str_col(rows["ucd"]),
            "unit": _str_col(rows["unit"]),
            "utype": _str_col(rows["utype"]),
            "xtype": _str_col(rows["xtype"]),
        }
    )
    _described(
        columns_t,
        {
            "arraysize": "Array size in VOTable notation",
            "column_index": "Recommended sort order when listing columns",
            "column_name": "Column name",
            "datatype": "ADQL datatype as in section 2.5",
            "description": "Brief description of the column",
            "indexed": "An indexed column; 1 means true, 0 means false",
            "principal": "A principal column; 1 means true, 0 means false",
            "size": "Length of variable length datatypes (deprecated)",
            "std": "A standard column; 1 means true, 0 means false",
            "table_name": "Fully qualified table name",
            "ucd": "UCD of column if any",
            "unit": "Unit in VO standard format",
            "utype": "UType of column if any",
            "xtype": "A DALI or custom extended type annotation",
        },
    )
    keys_t = Table(
        {n: _str_col([]) for n in ("description", "from_table", "key_id", "target_table", "utype")}
    )
    key_columns_t = Table({n: _str_col([]) for n in ("from_column", "key_id", "target_column")})
    data = {
        "schemas": schemas_t,
        "tables": tables_t,
        "columns": columns_t,
        "keys": keys_t,
        "key_columns": key_columns_t,
    }
    return [
        PublishedTable(t.schema, t.name, t.description, data[t.name.split(".")[1]], t.index)
        for t in own
    ]


def _add_columns(rows: dict[str, list], table_name: str, data: Table) -> None:
    for i, name in enumerate(data.colnames):
        col = data[name]
        meta = col.meta
        datatype = votable_datatype(col)
        rows["arraysize"].append(meta.get("arraysize", "*" if datatype == "char" else ""))
        rows["column_index"].append(i)
        rows["column_name"].append(name)
        rows["datatype"].append(datatype)
        rows["description"].append(col.description or "")
        rows["indexed"].append(int(meta.get("indexed", 0)))
        rows["principal"].append(int(meta.get("principal", 0)))
        rows["size"].append(0)
        rows["std"].append(int(meta.get("std", 0)))
        rows["table_name"].append(table_name)
        rows["ucd"].append(meta.get("ucd", "") or "")
        rows["unit"].append(str(col.unit) if col.unit is not None else "")
        rows["utype"].append(meta.get("utype", "") or "")
        rows["xtype"].append(meta.get("xtype", "") or "")
