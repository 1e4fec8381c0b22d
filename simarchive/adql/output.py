"""The select list: output columns, their names and metadata, DISTINCT and ORDER BY.

Plain column references are copied from the source astropy column (rows
gathered with numpy indexing), which keeps ``unit``, ``description``,
``format`` and ``meta`` (UCD, utype, VOTable datatype hints) and the NULL mask
intact for the VOTable writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Column, MaskedColumn, Table
from sqlglot import exp

from obsharvest.simarchive.adql.aggregate import combine_codes, value_codes
from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.adql.evaluate import AGGREGATES, Evaluator, materialize
from obsharvest.simarchive.adql.functions import function_name
from obsharvest.simarchive.adql.geom import format_regions
from obsharvest.simarchive.adql.scope import Scope, Source, identifier_matches
from obsharvest.simarchive.adql.values import ColumnRef, Geo, Val, column_data


@dataclass
class OutputItem:
    name: str
    node: exp.Expression | None  # None for columns expanded from * / t.*
    column: tuple[Source, str] | None = None


def expand_select(select: exp.Select, scope: Scope) -> list[OutputItem]:
    """Select-list items with *, t.* expanded and unique output names."""
    items: list[OutputItem] = []
    for pos, node in enumerate(select.expressions, start=1):
        if isinstance(node, exp.Star):
            for src in scope.sources:
                items.extend(OutputItem(c, None, (src, c)) for c in src.table.colnames)
        elif isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
            qualifier = [
                p
                for p in (node.args.get("catalog"), node.args.get("db"), node.args.get("table"))
                if p
            ]
            src = scope.qualified_sources(qualifier)[0]
            items.extend(OutputItem(c, None, (src, c)) for c in src.table.colnames)
        elif isinstance(node, exp.Alias):
            items.append(OutputItem(node.alias, node.this))
        else:
            items.append(OutputItem(_generated_name(node, scope, pos), node))
    _dedupe(items)
    return items


def _generated_name(node: exp.Expression, scope: Scope, pos: int) -> str:
    inner = node
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.Column):
        return scope.resolve(inner)[1]
    if isinstance(inner, exp.Func | exp.Mod):
        return function_name(inner).lower()
    return f"col{pos}"


def _dedupe(items: list[OutputItem]) -> None:
    """Make names unique case-insensitively (t.*, o.* often share column names)."""
    taken: set[str] = set()
    for item in items:
        name, k = item.name, 1
        while name.lower() in taken:
            k += 1
            name = f"{item.name}_{k}"
        item.name = name
        taken.add(name.lower())


def item_value(item: OutputItem, ev: Evaluator) -> Val | Geo:
    if item.node is not None:
        return ev.eval(item.node)
    source, name = item.column
    rows = _star_rows(item, ev)
    data, null = column_data(source.table[name], rows)
    return Val(data, null, ColumnRef(source, name, rows))


def _star_rows(item: OutputItem, ev: Evaluator) -> np.ndarray | int | None:
    source, name = item.column
    if ev.group_columns is not None and (source.name, name) not in ev.group_columns:
        raise AdqlError(
            f"column '{name}' must appear in GROUP BY or be used in an aggregate function"
        )
    return ev.frame.rows[source.name]


def _codes(value: Val | Geo, n: int) -> np.ndarray:
    if isinstance(value, Geo):
        texts, null = format_regions(value.regions, n)
        value = Val(texts, null)
    return value_codes(value, n)


def distinct_rows(items: list[OutputItem], ev: Evaluator) -> np.ndarray:
    """Frame rows to keep for SELECT DISTINCT: the first occurrence of each output row."""
    n = ev.frame.n
    codes = [_codes(item_value(item, ev), n) for item in items]
    _, first = combine_codes(codes, n)
    return np.sort(first)


def sort_permutation(order: exp.Order, items: list[OutputItem], ev: Evaluator) -> np.ndarray:
    """Row permutation for ORDER BY keys (position, output name or expression).

    NULLs sort after all values ascending (and first descending), as in PostgreSQL.
    """
    n = ev.frame.n
    keys = []
    by_name = {item.name.lower(): item for item in items}
    for ordered in order.expressions:
        node = ordered.this
        item = _order_item(node, items, by_name)
        value = item_value(item, ev) if item is not None else ev.eval(node)
        codes = _codes(value, n)
        keys.append(-codes if ordered.args.get("desc") else codes)
    if not keys or n == 0:
        return np.arange(n)
    return np.lexsort(keys[::-1])


def _order_item(
    node: exp.Expression, items: list[OutputItem], by_name: dict[str, OutputItem]
) -> OutputItem | None:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            pos = int(node.this)
        except ValueError:
            raise AdqlError(f"ORDER BY position must be an integer, got {node.this}") from None
        if not 1 <= pos <= len(items):
            raise AdqlError(f"ORDER BY position {pos} is out of range (1..{len(items)})")
        return items[pos - 1]
    if isinstance(node, exp.Column) and not node.args.get("table"):
        name = identifier_matches(node.this, list(by_name))
        if name is not None and by_name[name].node is not None:
            return by_name[name]
    return None


def output_aliases(items: list[OutputItem]) -> dict[str, exp.Expression]:
    return {item.name.lower(): item.node for item in items if item.node is not None}


def build_table(items: list[OutputItem], ev: Evaluator) -> Table:
    columns = [_output_column(item, ev) for item in items]
    return Table(columns, copy=False)


def _output_column(item: OutputItem, ev: Evaluator) -> Column:
    n = ev.frame.n
    if item.column is not None:
        return _gather(item.name, *item.column, _star_rows(item, ev), n)
    value = item_value(item, ev)
    if isinstance(value, Geo):
        texts, null = format_regions(value.regions, n)
        return _plain_column(item.name, texts, null)
    inner = item.node
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.Column) and value.ref is not None:
        return _gather(item.name, value.ref.source, value.ref.column, value.ref.rows, n)
    data, null = materialize(value, n)
    out = _plain_column(item.name, data, null)
    unit = _aggregate_unit(item, ev)
    if unit is not None:
        out.unit = unit
    return out


def _gather(
    out_name: str, source: Source, name: str, rows: np.ndarray | int | None, n: int
) -> Column:
    col = source.table[name]
    if rows is None:
        out = col.copy()
    elif isinstance(rows, np.ndarray):
        out = col[rows]
    else:
        out = col[np.full(n, rows, dtype=np.intp)]
    out.name = out_name
    return out


def _plain_column(name: str, data: np.ndarray, null: np.ndarray) -> Column:
    data = np.array(data)  # own, writable copy (inputs may be broadcast views)
    if null.any():
        return MaskedColumn(data, name=name, mask=np.array(null))
    return Column(data, name=name)


def _aggregate_unit(item: OutputItem, ev: Evaluator):
    """MIN/MAX/SUM/AVG of a plain column keep that column's unit."""
    node = item.node
    if not isinstance(node, AGGREGATES) or isinstance(node, exp.Count):
        return None
    arg = node.this
    if isinstance(arg, exp.Column) and not isinstance(arg.this, exp.Star):
        source, name = ev.scope.resolve(arg)
        return source.table[name].unit
    return None
