"""FROM and WHERE: single tables, inner joins and comma joins, without full cross products.

For inner joins the ON conditions and the WHERE clause are one conjunction, so
both are split into conjuncts; conjuncts touching a single table filter that
table first, and the rest become join conditions. A join step evaluates its
condition once per row of the smaller side, vectorized over the larger side:
for the typical TAP_UPLOAD query (a few thousand targets against ~100k
footprints) that costs thousands of numpy calls instead of a 10^8-row product.
"""

from __future__ import annotations

import numpy as np
from sqlglot import exp

from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.adql.evaluate import Evaluator
from obsharvest.simarchive.adql.scope import Frame, Scope, Source

MAX_CROSS_ROWS = 5_000_000


def conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    return [node]


def referenced_sources(node: exp.Expression, scope: Scope) -> frozenset[str]:
    return frozenset(
        scope.resolve(c)[0].name
        for c in node.find_all(exp.Column)
        if not isinstance(c.this, exp.Star)
    )


def join_conditions(select: exp.Select) -> list[exp.Expression]:
    """ON conditions of the joins, rejecting join kinds other than inner/cross."""
    conds: list[exp.Expression] = []
    for join in select.args.get("joins") or []:
        side = (join.args.get("side") or "").upper()
        kind = (join.args.get("kind") or "").upper()
        if side or kind not in ("", "INNER", "CROSS"):
            raise AdqlError(
                f"{' '.join(filter(None, [side, kind]))} JOIN is not supported; "
                "only inner joins are"
            )
        if join.args.get("using"):
            raise AdqlError("JOIN ... USING is not supported; use ON")
        if join.args.get("method"):
            raise AdqlError(f"{join.args['method']} JOIN is not supported")
        conds.extend(conjuncts(join.args.get("on")))
    return conds


def _apply(frame: Frame, scope: Scope, conds: list[exp.Expression]) -> Frame:
    if not conds:
        return frame
    ev = Evaluator(scope, frame)
    mask = np.ones(frame.n, dtype=bool)
    for cond in conds:
        mask &= ev.mask(cond)
    if mask.all():
        return frame
    return frame.take(np.flatnonzero(mask))


def filtered_frame(select: exp.Select, scope: Scope) -> Frame:
    """The rows surviving FROM, JOIN ... ON and WHERE."""
    pending = conjuncts(select.args["where"].this if select.args.get("where") else None)
    pending += join_conditions(select)
    refs = [referenced_sources(c, scope) for c in pending]
    used = [False] * len(pending)
    local: dict[str, Frame] = {}
    for src in scope.sources:
        own = [i for i, r in enumerate(refs) if r == {src.name}]
        for i in own:
            used[i] = True
        base = Frame([src], {src.name: None}, len(src.table))
        local[src.name] = _apply(base, scope, [pending[i] for i in own])
    first = scope.sources[0]
    current = local[first.name]
    current = Frame(list(scope.sources), dict(current.rows), current.n)
    joined = {first.name}
    for src in scope.sources[1:]:
        joined.add(src.name)
        step = [i for i, r in enumerate(refs) if not used[i] and r and r <= joined]
        for i in step:
            used[i] = True
        current = _join_step(current, src, local[src.name], scope, [pending[i] for i in step])
    return _apply(current, scope, [c for c, u in zip(pending, used, strict=True) if not u])


def _as_index(rows: np.ndarray | int | None, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n)
    return np.asarray(rows, dtype=np.intp)


def _join_step(
    current: Frame, src: Source, right: Frame, scope: Scope, conds: list[exp.Expression]
) -> Frame:
    right_rows = right.rows[src.name]
    k, m = current.n, right.n
    left_rows = {
        name: _as_index(r, len(scope.source(name).table))
        for name, r in current.rows.items()
        if name != src.name
    }
    if not conds:
        if k * m > MAX_CROSS_ROWS:
            raise AdqlError(
                f"join without a condition would produce {k * m} rows; add an ON or WHERE condition"
            )
        li = np.repeat(np.arange(k), m)
        ri = np.tile(np.arange(m), k)
    elif k <= m:  # iterate over the (smaller) joined-so-far side
        lis, ris = [], []
        for i in range(k):
            rows = {name: int(r[i]) for name, r in left_rows.items()}
            rows[src.name] = right_rows
            hits = _matches(Frame(current.sources, rows, m), scope, conds)
            lis.append(np.full(len(hits), i, dtype=np.intp))
            ris.append(hits)
        li, ri = _concat(lis), _concat(ris)
    else:  # iterate over the new (smaller) table
        right_index = _as_index(right_rows, len(src.table))
        lis, ris = [], []
        for j in range(m):
            rows: dict[str, np.ndarray | int | None] = dict(left_rows)
            rows[src.name] = int(right_index[j])
            hits = _matches(Frame(current.sources, rows, k), scope, conds)
            lis.append(hits)
            ris.append(np.full(len(hits), j, dtype=np.intp))
        li, ri = _concat(lis), _concat(ris)
        order = np.lexsort((ri, li))  # keep the left side's row order, as in the other branch
        li, ri = li[order], ri[order]
    rows_out: dict[str, np.ndarray | int | None] = {n: r[li] for n, r in left_rows.items()}
    rows_out[src.name] = _as_index(right_rows, len(src.table))[ri]
    return Frame(current.sources, rows_out, len(li))


def _matches(frame: Frame, scope: Scope, conds: list[exp.Expression]) -> np.ndarray:
    ev = Evaluator(scope, frame)
    mask = ev.mask(conds[0]).copy()
    for cond in conds[1:]:
        if not mask.any():
            break
        mask &= ev.mask(cond)
    return np.flatnonzero(mask)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)
