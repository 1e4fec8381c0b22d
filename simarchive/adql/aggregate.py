"""GROUP BY and aggregate functions (COUNT, SUM, MIN, MAX, AVG).

Aggregates are computed once per query for all groups with numpy group-wise
reductions (bincount, lexsort); the query then continues on a *group frame*
with one row per group, so HAVING, ORDER BY and the select list evaluate with
the ordinary expression evaluator.
"""

from __future__ import annotations

import numpy as np
from sqlglot import exp

from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.adql.evaluate import AGGREGATES, Evaluator, materialize
from obsharvest.simarchive.adql.functions import function_name
from obsharvest.simarchive.adql.scope import Frame, Scope
from obsharvest.simarchive.adql.values import Geo, Val


def is_aggregate_query(select: exp.Select) -> bool:
    if select.args.get("group"):
        return True
    nodes = list(select.expressions) + [select.args.get("having")]
    return any(n is not None and n.find(*AGGREGATES) is not None for n in nodes)


def value_codes(val: Val, n: int) -> np.ndarray:
    """Dense integer codes with equal codes for equal values; NULLs share their own code."""
    data, null = materialize(val, n)
    if data.ndim > 1:
        data = (
            np.ascontiguousarray(data.reshape(n, -1))
            .view(np.dtype((np.void, data.dtype.itemsize * int(np.prod(data.shape[1:])))))
            .reshape(n)
        )
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    _, codes = np.unique(data, return_inverse=True)
    codes = codes.reshape(n)
    if null.any():
        codes = np.where(null, codes.max() + 1, codes)
    return codes


def combine_codes(code_lists: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(group id per row, first row of each group) for several key code arrays."""
    if not code_lists or n == 0:
        return np.zeros(n, dtype=np.intp), np.zeros(min(n, 1), dtype=np.intp)
    stacked = np.stack(code_lists, axis=1)
    _, first, groups = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
    return groups.reshape(n), first


def group_frame(
    select: exp.Select, scope: Scope, frame: Frame, output_aliases: dict[str, exp.Expression]
) -> tuple[Frame, Evaluator]:
    """Group the rows of ``frame``; return the group frame and an evaluator over it."""
    row_eval = Evaluator(scope, frame)
    keys = []
    group_columns: set[tuple[str, str]] = set()
    group = select.args.get("group")
    for item in group.expressions if group else []:
        item = _group_item(item, scope, output_aliases, select)
        for col in item.find_all(exp.Column):
            source, name = scope.resolve(col)
            group_columns.add((source.name, name))
        keys.append(value_codes(row_eval.value(item), frame.n))
    codes, first = combine_codes(keys, frame.n)
    count = len(first) if group else 1
    if group is None:
        codes = np.zeros(frame.n, dtype=np.intp)
        first = np.zeros(1, dtype=np.intp)
    rep_rows = {}
    for name, rows in frame.rows.items():
        if frame.n == 0:
            rep_rows[name] = np.zeros(len(first), dtype=np.intp)
        elif rows is None:
            rep_rows[name] = first
        elif isinstance(rows, np.ndarray):
            rep_rows[name] = rows[first]
        else:
            rep_rows[name] = rows
    gframe = Frame(frame.sources, rep_rows, count, np.arange(count), count)
    aggregates: dict[int, Val] = {}
    for node in _aggregate_nodes(select):
        aggregates[id(node)] = compute_aggregate(node, row_eval, codes, count, frame.n)
    return gframe, Evaluator(scope, gframe, aggregates, group_columns)


def _group_item(
    item: exp.Expression, scope: Scope, aliases: dict[str, exp.Expression], select: exp.Select
) -> exp.Expression:
    """GROUP BY accepts columns, expressions, output aliases and 1-based positions."""
    if isinstance(item, exp.Literal) and not item.is_string:
        pos = int(item.this)
        if not 1 <= pos <= len(select.expressions):
            raise AdqlError(f"GROUP BY position {pos} is out of range")
        target = select.expressions[pos - 1]
        return target.this if isinstance(target, exp.Alias) else target
    if isinstance(item, exp.Column) and not item.args.get("table"):
        try:
            scope.resolve(item)
        except AdqlError:
            alias = aliases.get(item.name.lower())
            if alias is None:
                raise
            return alias
    return item


def _aggregate_nodes(select: exp.Select) -> list[exp.Expression]:
    roots = list(select.expressions)
    for key in ("having", "order"):
        if select.args.get(key) is not None:
            roots.append(select.args[key])
    found = []
    for root in roots:
        for node in root.find_all(*AGGREGATES):
            inner = [a for a in node.find_all(*AGGREGATES) if a is not node]
            if inner:
                raise AdqlError("aggregate functions cannot be nested")
            found.append(node)
    return found


def compute_aggregate(
    node: exp.Expression, row_eval: Evaluator, codes: np.ndarray, count: int, n: int
) -> Val:
    name = function_name(node)
    arg = node.this
    if isinstance(node, exp.Count) and isinstance(arg, exp.Star):
        return Val(np.bincount(codes, minlength=count).astype(np.int64))
    distinct = isinstance(arg, exp.Distinct)
    if distinct:
        if len(arg.expressions) != 1:
            raise AdqlError(f"{name}(DISTINCT ...) takes exactly one expression")
        arg = arg.expressions[0]
    if arg is None:
        raise AdqlError(f"{name} needs an argument")
    value = row_eval.eval(arg)
    if isinstance(value, Geo):
        raise AdqlError(f"{name} does not accept a geometry argument")
    data, null = materialize(value, n)
    keep = ~null
    data, gcodes = data[keep], codes[keep]
    if distinct and len(data):
        pairs = np.stack([gcodes, value_codes(Val(data), len(data))], axis=1)
        _, first = np.unique(pairs, axis=0, return_index=True)
        data, gcodes = data[first], gcodes[first]
    counts = np.bincount(gcodes, minlength=count)
    empty = counts == 0
    if name == "COUNT":
        return Val(counts.astype(np.int64))
    kind = value.kind
    if name in ("SUM", "AVG") and kind not in ("num", "bool"):
        raise AdqlError(f"{name} expects a numeric argument")
    if name == "SUM":
        if data.dtype.kind in "iub":
            out = np.zeros(count, dtype=np.int64)
            np.add.at(out, gcodes, data.astype(np.int64))
        else:
            out = np.bincount(gcodes, weights=data.astype(float), minlength=count)
        return Val(out, empty if empty.any() else None)
    if name == "AVG":
        sums = np.bincount(gcodes, weights=data.astype(float), minlength=count)
        with np.errstate(all="ignore"):
            return Val(sums / np.maximum(counts, 1), empty if empty.any() else None)
    # MIN / MAX: sort by (group, value); the first/last entry of each group run wins
    order = np.lexsort((data, gcodes))
    sorted_codes = gcodes[order]
    if name == "MIN":
        pick = (
            np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
            if len(order)
            else np.zeros(0, dtype=np.intp)
        )
    else:
        pick = (
            np.flatnonzero(np.r_[sorted_codes[1:] != sorted_codes[:-1], True])
            if len(order)
            else np.zeros(0, dtype=np.intp)
        )
    out = np.zeros(count, dtype=data.dtype)
    out[sorted_codes[pick]] = data[order[pick]]
    return Val(out, empty if empty.any() else None)
