"""Vectorized evaluation of ADQL expressions (sqlglot trees) over a row frame.

Each node evaluates to a :class:`Val` (numpy data + NULL mask) or a :class:`Geo`
for the whole frame at once; nothing loops over rows in Python. NULL follows SQL
three-valued logic, so a comparison with NULL is neither true nor false and a
WHERE clause drops the row.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from sqlglot import exp

from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.adql.functions import (
    SCALAR_FUNCTIONS,
    call_scalar,
    function_args,
    function_name,
)
from obsharvest.simarchive.adql.geom import GEOMETRY_FUNCTIONS, call_geometry
from obsharvest.simarchive.adql.scope import Frame, Scope
from obsharvest.simarchive.adql.values import (
    ColumnRef,
    Geo,
    Val,
    as_bool3,
    broadcast,
    column_data,
    describe_kind,
    from_bool3,
    literal,
    merge_null,
    null_literal,
    require,
)

AGGREGATES = (exp.Count, exp.Sum, exp.Min, exp.Max, exp.Avg)

_COMPARISONS: dict[type, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    exp.EQ: np.equal,
    exp.NEQ: np.not_equal,
    exp.LT: np.less,
    exp.LTE: np.less_equal,
    exp.GT: np.greater,
    exp.GTE: np.greater_equal,
}
_ARITHMETIC: dict[type, tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = {
    exp.Add: ("+", np.add),
    exp.Sub: ("-", np.subtract),
    exp.Mul: ("*", np.multiply),
    exp.Div: ("/", np.true_divide),
}


class Evaluator:
    """Evaluates expressions over ``frame``.

    In aggregate queries the frame holds one row per group; ``aggregates`` maps
    each aggregate call node to its per-group values, and ``group_columns`` lists
    the columns that may appear outside aggregates (those in GROUP BY).
    """

    def __init__(
        self,
        scope: Scope,
        frame: Frame,
        aggregates: dict[int, Val] | None = None,
        group_columns: set[tuple[str, str]] | None = None,
    ) -> None:
        self.scope = scope
        self.frame = frame
        self.aggregates = aggregates
        self.group_columns = group_columns

    def with_frame(self, frame: Frame) -> Evaluator:
        return Evaluator(self.scope, frame, self.aggregates, self.group_columns)

    # -- entry points -------------------------------------------------------

    def eval(self, node: exp.Expression) -> Val | Geo:
        handler = _HANDLERS.get(type(node))
        if handler is not None:
            result = handler(self, node)
            if node.args.get("negate"):  # sqlglot marks e.g. NOT LIKE with a negate flag
                true, false = as_bool3(result, "NOT")
                return from_bool3(false, true)
            return result
        if isinstance(node, AGGREGATES):
            return self._aggregate(node)
        if isinstance(node, exp.Func):
            return self._function(node)
        raise AdqlError(f"unsupported expression: {_sql(node)}")

    def mask(self, node: exp.Expression) -> np.ndarray:
        """Rows where a condition is TRUE (NULL and FALSE both drop the row)."""
        value = self.eval(node)
        try:
            true, _ = as_bool3(value, "a condition")
        except AdqlError as exc:  # format the SQL text only on error: this runs per join row
            raise AdqlError(f"{exc} in {_sql(node)}") from None
        return np.broadcast_to(true, (self.frame.n,))

    def value(self, node: exp.Expression) -> Val:
        """A non-geometry value (geometry is only valid as a function argument)."""
        v = self.eval(node)
        if isinstance(v, Geo):
            raise AdqlError(f"geometry value not allowed here: {_sql(node)}")
        return v

    # -- leaves ---------------------------------------------------------------

    def _column(self, node: exp.Column) -> Val:
        source, name = self.scope.resolve(node)
        if self.group_columns is not None and (source.name, name) not in self.group_columns:
            raise AdqlError(
                f"column '{name}' must appear in GROUP BY or be used in an aggregate function"
            )
        if source.name not in self.frame.rows:
            raise AdqlError(f"column '{name}' cannot be used here")
        rows = self.frame.rows[source.name]
        data, null = column_data(source.table[name], rows)
        return Val(data, null, ColumnRef(source, name, rows))

    def _literal(self, node: exp.Literal) -> Val:
        if node.is_string:
            return literal(str(node.this))
        text = str(node.this)
        try:
            return literal(int(text))
        except ValueError:
            try:
                return literal(float(text))
            except ValueError:
                raise AdqlError(f"invalid number {text!r}") from None

    # -- operators --------------------------------------------------------------

    def _arith(self, node: exp.Binary) -> Val:
        symbol, fn = _ARITHMETIC[type(node)]
        a = require(self.eval(node.this), "num", f"operator {symbol}")
        b = require(self.eval(node.expression), "num", f"operator {symbol}")
        null = merge_null(a, b)
        with np.errstate(all="ignore"):
            data = np.asarray(fn(a.data, b.data))
        if isinstance(node, exp.Div):
            zero = b.data == 0
            if np.any(zero):  # SQL has no infinities: x / 0 is NULL here
                zero = np.broadcast_to(zero, data.shape)
                null = zero if null is None else null | zero
        return Val(data, null)

    def _neg(self, node: exp.Neg) -> Val:
        v = require(self.eval(node.this), "num", "unary minus")
        return Val(np.negative(v.data), v.null)

    def _concat(self, node: exp.DPipe) -> Val:
        a, b = self.value(node.this), self.value(node.expression)
        if a.kind != "str" and b.kind != "str":
            raise AdqlError("operator || expects strings")
        data = np.char.add(a.data.astype(str), b.data.astype(str))
        return Val(np.asarray(data), merge_null(a, b))

    def _compare(self, node: exp.Binary) -> Val:
        return compare(type(node), self.value(node.this), self.value(node.expression), node)

    def _and(self, node: exp.And) -> Val:
        at, af = as_bool3(self.eval(node.this), "AND")
        bt, bf = as_bool3(self.eval(node.expression), "AND")
        return from_bool3(at & bt, af | bf)

    def _or(self, node: exp.Or) -> Val:
        at, af = as_bool3(self.eval(node.this), "OR")
        bt, bf = as_bool3(self.eval(node.expression), "OR")
        return from_bool3(at | bt, af & bf)

    def _not(self, node: exp.Not) -> Val:
        true, false = as_bool3(self.eval(node.this), "NOT")
        return from_bool3(false, true)

    def _is(self, node: exp.Is) -> Val:
        if not isinstance(node.expression, exp.Null):
            raise AdqlError(f"unsupported IS test: {_sql(node)}")
        v = self.eval(node.this)
        if isinstance(v, Geo):
            return Val(v.regions.kind == 0)
        return Val(np.asarray(v.null_mask()).copy())

    def _in(self, node: exp.In) -> Val:
        if node.args.get("query") is not None or node.args.get("unnest") is not None:
            raise AdqlError("subqueries are not supported")
        left = self.value(node.this)
        true = np.zeros((), dtype=bool)
        null = np.zeros((), dtype=bool)
        for item in node.expressions:
            eq = compare(exp.EQ, left, self.value(item), node)
            t, f = as_bool3(eq, "IN")
            true = true | t
            null = null | ~(t | f)
        return from_bool3(true, ~true & ~null)

    def _between(self, node: exp.Between) -> Val:
        v = self.value(node.this)
        lo = compare(exp.GTE, v, self.value(node.args["low"]), node)
        hi = compare(exp.LTE, v, self.value(node.args["high"]), node)
        lt, lf = as_bool3(lo, "BETWEEN")
        ht, hf = as_bool3(hi, "BETWEEN")
        return from_bool3(lt & ht, lf | hf)

    def _like(self, node: exp.Like | exp.ILike) -> Val:
        v = require(self.eval(node.this), "str", "LIKE")
        pat = node.expression
        if not (isinstance(pat, exp.Literal) and pat.is_string):
            raise AdqlError("LIKE patterns must be string literals")
        insensitive = isinstance(node, exp.ILike)
        return Val(like(v.data, str(pat.this), insensitive), v.null)

    def _paren(self, node: exp.Paren) -> Val | Geo:
        return self.eval(node.this)

    def _boolean(self, node: exp.Boolean) -> Val:
        return literal(bool(node.this))

    def _null(self, node: exp.Null) -> Val:
        return null_literal()

    # -- functions --------------------------------------------------------------

    def _function(self, node: exp.Expression) -> Val | Geo:
        name = function_name(node)
        if name in GEOMETRY_FUNCTIONS:
            return call_geometry(name, [self._geometry_arg(a) for a in function_args(node)])
        args = [self.eval(a) for a in function_args(node)]
        if name in SCALAR_FUNCTIONS:
            vals = []
            for a in args:
                if isinstance(a, Geo):
                    raise AdqlError(f"{name} does not accept a geometry argument")
                vals.append(a)
            return call_scalar(name, vals)
        raise AdqlError(f"unknown or unsupported function {name}")

    def _geometry_arg(self, node: exp.Expression) -> Val | Geo:
        """Like eval, but a string column is passed by reference only.

        Region columns are looked up in the parsed-region cache, so fetching (and
        possibly decoding) 100k strings per call would be wasted work; joins make
        this call once per row of the smaller table.
        """
        inner = node
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if isinstance(inner, exp.Column) and self.group_columns is None:
            source, name = self.scope.resolve(inner)
            column = source.table[name]
            if np.asarray(column).dtype.kind in "USO" and source.name in self.frame.rows:
                rows = self.frame.rows[source.name]
                return Val(np.asarray(""), None, ColumnRef(source, name, rows))
        return self.eval(node)

    def _mod(self, node: exp.Mod) -> Val | Geo:
        return call_scalar("MOD", [self.value(node.this), self.value(node.expression)])

    def _aggregate(self, node: exp.Expression) -> Val:
        if self.aggregates is None:
            raise AdqlError(f"aggregate function {function_name(node)} is not allowed here")
        per_group = self.aggregates[id(node)]
        groups = self.frame.groups
        assert groups is not None
        null = None if per_group.null is None else per_group.null[groups]
        return Val(per_group.data[groups], null)


def compare(op: type, a: Val, b: Val, node: exp.Expression) -> Val:
    """SQL comparison with type checking (numbers with numbers, strings with strings)."""
    ka, kb = a.kind, b.kind
    numeric = {"num", "bool"}
    if not (ka == kb or (ka in numeric and kb in numeric)):
        raise AdqlError(
            f"cannot compare {describe_kind(ka)} with {describe_kind(kb)} in {_sql(node)}"
        )
    with np.errstate(all="ignore"):
        data = np.asarray(_COMPARISONS[op](a.data, b.data))
    return Val(data, merge_null(a, b))


def like(data: np.ndarray, pattern: str, insensitive: bool = False) -> np.ndarray:
    """SQL LIKE (``%`` any run, ``_`` one character), case-sensitive unless ILIKE."""
    if "%" not in pattern and "_" not in pattern and not insensitive:
        return np.asarray(data == pattern)
    body = pattern[:-1]
    if pattern.endswith("%") and "%" not in body and "_" not in body and not insensitive:
        return np.asarray(np.char.startswith(data, body))
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    compiled = re.compile(regex, re.DOTALL | (re.IGNORECASE if insensitive else 0))
    flat = data.reshape(-1)
    out = np.fromiter(
        (compiled.fullmatch(s) is not None for s in flat.tolist()), dtype=bool, count=flat.size
    )
    return out.reshape(data.shape)


def _sql(node: exp.Expression) -> str:
    try:
        return node.sql(dialect="tsql")
    except Exception:  # pragma: no cover - message formatting must never fail
        return type(node).__name__


def materialize(val: Val, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-length data and NULL mask of a value (e.g. for output or sorting)."""
    data, null = broadcast(val, n)
    return np.asarray(data), np.asarray(null)


_HANDLERS: dict[type, Callable[[Evaluator, exp.Expression], Val | Geo]] = {
    exp.Column: Evaluator._column,
    exp.Literal: Evaluator._literal,
    exp.Neg: Evaluator._neg,
    exp.DPipe: Evaluator._concat,
    exp.And: Evaluator._and,
    exp.Or: Evaluator._or,
    exp.Not: Evaluator._not,
    exp.Is: Evaluator._is,
    exp.In: Evaluator._in,
    exp.Between: Evaluator._between,
    exp.Like: Evaluator._like,
    exp.ILike: Evaluator._like,
    exp.Paren: Evaluator._paren,
    exp.Boolean: Evaluator._boolean,
    exp.Null: Evaluator._null,
    exp.Mod: Evaluator._mod,
    **{cls: Evaluator._arith for cls in _ARITHMETIC},
    **{cls: Evaluator._compare for cls in _COMPARISONS},
}
