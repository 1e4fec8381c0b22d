"""Vectorized SQL values: numpy data plus a NULL mask, and their type rules.

A value is either 0-d (a literal, or a column of a table that a join is iterating
row by row) or 1-d over the rows of the current frame; numpy broadcasting makes
both combine without materializing repeated copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.adql.geometry import RegionArray


@dataclass(frozen=True)
class ColumnRef:
    """Where a plain column value came from: lets output keep metadata, geometry use the cache."""

    source: object  # adql_scope.Source (untyped here to avoid an import cycle)
    column: str
    rows: np.ndarray | int | None


@dataclass
class Val:
    data: np.ndarray
    null: np.ndarray | None = None  # bool, same leading shape as data; None means no NULLs
    ref: ColumnRef | None = None

    @property
    def kind(self) -> str:
        return type_kind(self.data)

    def null_mask(self) -> np.ndarray:
        if self.null is None:
            return np.zeros(self.data.shape[:1] or (), dtype=bool)
        return self.null


@dataclass
class Geo:
    """A geometry value: one region (broadcast) or one per frame row."""

    regions: RegionArray


def type_kind(data: np.ndarray) -> str:
    k = data.dtype.kind
    if k in "iuf":
        return "num"
    if k == "b":
        return "bool"
    if k in "US":
        return "str"
    return "other"


def literal(value: object) -> Val:
    return Val(np.asarray(value))


def null_literal() -> Val:
    return Val(np.asarray(np.nan), np.asarray(True))


def merge_null(*vals: Val) -> np.ndarray | None:
    masks = [v.null for v in vals if v.null is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out | m
    return out


def require(val: Val | Geo, kinds: str, what: str) -> Val:
    """Type check an operand: ``kinds`` is a string of accepted kinds, e.g. "num bool"."""
    if isinstance(val, Geo):
        raise AdqlError(f"{what} does not accept a geometry value")
    if val.kind not in kinds.split():
        expected = " or ".join(
            "number" if k == "num" else "string" if k == "str" else k for k in kinds.split()
        )
        raise AdqlError(f"{what} expects {expected}, got {describe_kind(val.kind)}")
    return val


def describe_kind(kind: str) -> str:
    return {"num": "a number", "str": "a string", "bool": "a boolean"}.get(
        kind, "an unsupported type"
    )


def as_bool3(val: Val | Geo, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(true, false) masks of a boolean value under SQL three-valued logic."""
    v = require(val, "bool num", what)
    data = v.data.astype(bool)
    null = v.null_mask()
    return data & ~null, ~data & ~null


def from_bool3(true: np.ndarray, false: np.ndarray) -> Val:
    null = ~(true | false)
    return Val(true, null if null.any() else None)


def broadcast(val: Val, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Data and null mask expanded to n rows (views, no copies where possible)."""
    data = val.data
    if data.ndim == 0 or data.shape[0] != n:
        data = np.broadcast_to(data.reshape(-1)[:1] if data.ndim else data, (n,))
    null = np.broadcast_to(val.null_mask(), (n,)) if val.null is not None else np.zeros(n, bool)
    return data, null


def column_data(column, rows: np.ndarray | int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw data and NULL mask of an astropy column at the given rows (None = all rows).

    Byte strings are decoded so that comparisons with str literals work; only the
    selected rows are decoded.
    """
    data = np.asarray(column)
    mask = getattr(column, "mask", None)
    null = None
    if mask is not None and mask is not np.ma.nomask:
        mask = np.ma.getmaskarray(column)
        if mask.any():
            null = mask if rows is None else np.asarray(mask[rows])
    if rows is not None:
        data = np.asarray(data[rows])
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", "replace")
    elif data.dtype.kind == "O":
        data = _object_to_str(data)
    return data, null


def _object_to_str(data: np.ndarray) -> np.ndarray:
    flat = data.reshape(-1)
    if all(isinstance(x, str) or x is None for x in flat):
        return np.array(["" if x is None else x for x in flat], dtype=str).reshape(data.shape)
    return data
