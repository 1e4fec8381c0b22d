"""ADQL scalar math and string functions, vectorized over frame rows.

sqlglot parses many functions into dedicated node classes whose names follow
other SQL dialects (``CEILING`` becomes ``Ceil``, ``LOG`` becomes ``Ln``); this
module maps them back to ADQL names so that error messages and the
``disabled_functions`` switch use the names the client wrote.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sqlglot import exp

from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.adql.values import Val, literal, merge_null, require

_ADQL_NAMES: dict[type, str] = {
    exp.Ceil: "CEILING",
    exp.Ln: "LOG",
    exp.Log: "LOG10",
    exp.Pow: "POWER",
    exp.Trunc: "TRUNCATE",
    exp.Mod: "MOD",
    exp.Count: "COUNT",
    exp.Avg: "AVG",
    exp.Contains: "CONTAINS",
}


def function_name(node: exp.Expression) -> str:
    """The ADQL (upper-case) name of a function call node."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()
    name = _ADQL_NAMES.get(type(node))
    if name:
        return name
    sql_name = getattr(type(node), "sql_name", None)
    return sql_name().upper() if callable(sql_name) else type(node).__name__.upper()


def function_args(node: exp.Expression) -> list[exp.Expression]:
    """Positional arguments of a function node, in declaration order."""
    if isinstance(node, exp.Anonymous):
        return list(node.expressions)
    args: list[exp.Expression] = []
    for key in node.arg_types:
        value = node.args.get(key)
        if isinstance(value, list):
            args.extend(value)
        elif isinstance(value, exp.Expression):
            args.append(value)
    return args


def _num_unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[str, list[Val]], Val]:
    def apply(name: str, args: list[Val]) -> Val:
        x = require(args[0], "num bool", name)
        with np.errstate(all="ignore"):
            return Val(np.asarray(fn(x.data.astype(float))), x.null)

    return apply


def _num_binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def apply(name: str, args: list[Val]) -> Val:
        a, b = (require(v, "num bool", name) for v in args)
        with np.errstate(all="ignore"):
            return Val(np.asarray(fn(a.data.astype(float), b.data.astype(float))), merge_null(a, b))

    return apply


def _keep_int(fn: Callable[[np.ndarray], np.ndarray]):
    """Functions such as ABS that keep integers integral."""

    def apply(name: str, args: list[Val]) -> Val:
        x = require(args[0], "num bool", name)
        data = x.data if x.data.dtype.kind in "iu" else x.data.astype(float)
        return Val(np.asarray(fn(data)), x.null)

    return apply


def _round(name: str, args: list[Val], trunc: bool = False) -> Val:
    x = require(args[0], "num bool", name)
    digits = 0
    if len(args) > 1:
        d = require(args[1], "num", name)
        if d.data.ndim != 0 or d.data.dtype.kind not in "iu":
            raise AdqlError(f"{name} expects a constant integer number of decimals")
        digits = int(d.data)
    if x.data.dtype.kind in "iu" and digits >= 0:
        return Val(x.data, x.null)
    scale = 10.0**digits
    with np.errstate(all="ignore"):
        scaled = x.data.astype(float) * scale
        # SQL ROUND rounds halves away from zero, unlike numpy's banker's rounding
        out = np.trunc(scaled) if trunc else np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
        return Val(np.asarray(out / scale), x.null)


def _mod(name: str, args: list[Val]) -> Val:
    a, b = (require(v, "num bool", name) for v in args)
    null = merge_null(a, b)
    zero = b.data == 0
    if np.any(zero):
        null = zero if null is None else null | zero
    with np.errstate(all="ignore"):
        if a.data.dtype.kind in "iub" and b.data.dtype.kind in "iub":
            out = np.fmod(a.data.astype(np.int64), np.where(zero, 1, b.data).astype(np.int64))
        else:
            out = np.fmod(a.data.astype(float), b.data.astype(float))
    return Val(np.asarray(out), null)


def _string_fn(fn: Callable[[np.ndarray], np.ndarray]):
    def apply(name: str, args: list[Val]) -> Val:
        x = require(args[0], "str", name)
        return Val(np.asarray(fn(x.data)), x.null)

    return apply


def _log(name: str, args: list[Val]) -> Val:
    if len(args) == 1:
        return _num_unary(np.log)(name, args)
    base, x = args
    if base.data.ndim == 0 and base.data.dtype.kind in "iuf" and float(base.data) == 10.0:
        return _num_unary(np.log10)("LOG10", [x])
    return _num_binary(lambda b, v: np.log(v) / np.log(b))(name, [base, x])


def _coalesce(name: str, args: list[Val]) -> Val:
    kinds = {v.kind for v in args if v.kind != "num" or v.null is None or not np.all(v.null)}
    if len(kinds - {"bool"}) > 1:
        raise AdqlError(f"{name} arguments must all be numbers or all be strings")
    result = args[-1]
    for v in reversed(args[:-1]):
        if v.null is None:
            result = v
            continue
        data = np.where(v.null, result.data, v.data)
        null = v.null & result.null_mask() if result.null is not None else None
        result = Val(np.asarray(data), null if null is not None and null.any() else None)
    return result


Impl = Callable[[str, list[Val]], Val]
# name -> (min args, max args, implementation)
SCALAR_FUNCTIONS: dict[str, tuple[int, int, Impl]] = {
    "ABS": (1, 1, _keep_int(np.abs)),
    "CEILING": (1, 1, _num_unary(np.ceil)),
    "FLOOR": (1, 1, _num_unary(np.floor)),
    "ROUND": (1, 2, _round),
    "TRUNCATE": (1, 2, lambda n, a: _round(n, a, trunc=True)),
    "SQRT": (1, 1, _num_unary(np.sqrt)),
    "EXP": (1, 1, _num_unary(np.exp)),
    "LOG": (1, 2, _log),
    "LOG10": (1, 2, _log),
    "POWER": (2, 2, _num_binary(np.power)),
    "MOD": (2, 2, _mod),
    "SIGN": (1, 1, _keep_int(np.sign)),
    "DEGREES": (1, 1, _num_unary(np.degrees)),
    "RADIANS": (1, 1, _num_unary(np.radians)),
    "SIN": (1, 1, _num_unary(np.sin)),
    "COS": (1, 1, _num_unary(np.cos)),
    "TAN": (1, 1, _num_unary(np.tan)),
    "COT": (1, 1, _num_unary(lambda x: 1.0 / np.tan(x))),
    "ASIN": (1, 1, _num_unary(np.arcsin)),
    "ACOS": (1, 1, _num_unary(np.arccos)),
    "ATAN": (1, 1, _num_unary(np.arctan)),
    "ATAN2": (2, 2, _num_binary(np.arctan2)),
    "PI": (0, 0, lambda n, a: literal(np.pi)),
    "LOWER": (1, 1, _string_fn(np.char.lower)),
    "UPPER": (1, 1, _string_fn(np.char.upper)),
    "COALESCE": (1, 64, _coalesce),
}


def call_scalar(name: str, args: list[Val]) -> Val:
    """Apply a scalar function, checking its argument count."""
    lo, hi, impl = SCALAR_FUNCTIONS[name]
    if not lo <= len(args) <= hi:
        expected = str(lo) if lo == hi else f"{lo} to {hi}"
        raise AdqlError(f"{name} takes {expected} argument(s), got {len(args)}")
    return impl(name, args)
