"""ADQL query engine of the embedded archive: ``run_adql(query, tables, maxrec)``.

Queries are parsed with sqlglot's T-SQL dialect, the closest SQL dialect to ADQL
(it knows ``SELECT TOP n``), then evaluated with numpy over in-memory astropy
tables. The steps follow SQL's logical order: FROM/JOIN/WHERE (adql_join),
GROUP BY/aggregates/HAVING (adql_aggregate), DISTINCT and ORDER BY
(adql_output), TOP, then MAXREC truncation; output columns are only built for
the rows that survive, so ``TOP 10 ... ORDER BY`` over 100k rows is cheap.

Every failure caused by the query surfaces as :class:`AdqlError` with a one-line
message for the TAP error document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import sqlglot
from astropy.table import Table
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError, TokenError

from obsharvest.simarchive.adql.aggregate import group_frame, is_aggregate_query
from obsharvest.simarchive.adql.errors import AdqlError
from obsharvest.simarchive.adql.evaluate import Evaluator
from obsharvest.simarchive.adql.functions import function_name
from obsharvest.simarchive.adql.join import filtered_frame
from obsharvest.simarchive.adql.output import (
    build_table,
    distinct_rows,
    expand_select,
    output_aliases,
    sort_permutation,
)
from obsharvest.simarchive.adql.scope import Scope, make_sources

__all__ = ["AdqlError", "QueryResult", "run_adql"]

_SUPPORTED_CLAUSES = {
    "expressions",
    "distinct",
    "limit",
    "from",
    "from_",
    "joins",
    "where",
    "group",
    "having",
    "order",
    "offset",
}


@dataclass
class QueryResult:
    table: Table  # result rows and columns
    overflow: bool  # more rows matched than MAXREC allowed (TAP QUERY_STATUS=OVERFLOW)


def run_adql(
    query: str,
    tables: Mapping[str, Table],
    maxrec: int | None,
    *,
    disabled_functions: frozenset[str] = frozenset(),
) -> QueryResult:
    """Run an ADQL query against ``tables`` (keys: lowercase ``schema.table``).

    ``maxrec`` caps the returned rows (``None``: no cap); ``disabled_functions``
    lists ADQL function names this service profile refuses. Thread-safe: tables
    are only read (apart from the parsed-region cache in ``table.meta``).
    """
    try:
        return _run(query, tables, maxrec, frozenset(f.upper() for f in disabled_functions))
    except AdqlError:
        raise
    except RecursionError:
        raise AdqlError("query is too deeply nested") from None
    except MemoryError:
        raise AdqlError("query result is too large for this service") from None
    except Exception as exc:  # never leak a raw Python error to the TAP client
        raise AdqlError(f"query failed: {type(exc).__name__}: {exc}") from exc


def parse_query(query: str) -> exp.Select:
    """Parse and check that the statement is a single SELECT using supported clauses."""
    if not isinstance(query, str) or not query.strip():
        raise AdqlError("empty query")
    try:
        tree = sqlglot.parse_one(query, read="tsql")
    except ParseError as exc:
        raise AdqlError(_syntax_message(exc)) from None
    except (TokenError, SqlglotError) as exc:
        raise AdqlError(f"syntax error: {_one_line(str(exc))}") from None
    if not isinstance(tree, exp.Select):
        line, col, word = _first_word(query)
        raise AdqlError(
            f"syntax error at line {line}, column {col} near {word!r}: "
            "expected a single SELECT statement"
        )
    for key, value in tree.args.items():
        if value and key not in _SUPPORTED_CLAUSES:
            raise AdqlError(f"unsupported clause in query: {key.upper()}")
    if not (tree.args.get("from") or tree.args.get("from_")):
        raise AdqlError("syntax error: SELECT needs a FROM clause")
    distinct = tree.args.get("distinct")
    if distinct is not None and distinct.args.get("on"):
        raise AdqlError("DISTINCT ON is not supported")
    for node in tree.find_all(exp.Subquery, exp.Select, exp.Union, exp.Window):
        if node is not tree:
            raise AdqlError("subqueries, set operations and window functions are not supported")
    return tree


def _syntax_message(exc: ParseError) -> str:
    errors = getattr(exc, "errors", None) or []
    if not errors:
        return f"syntax error: {_one_line(str(exc))}"
    err = errors[0]
    description = str(err.get("description", "")).split(" but got <Token", 1)[0]
    near = str(err.get("highlight") or "").strip()
    where = f"at line {err.get('line')}, column {err.get('col')}"
    if near:
        where += f" near {near!r}"
    return f"syntax error {where}: {_one_line(description)}"


def _one_line(text: str) -> str:
    return " ".join(text.replace("\x1b[4m", "").replace("\x1b[0m", "").split())


def _first_word(query: str) -> tuple[int, int, str]:
    stripped = query.lstrip()
    offset = len(query) - len(stripped)
    before = query[:offset]
    line = before.count("\n") + 1
    col = offset - (before.rfind("\n") + 1) + 1
    return line, col, stripped.split(None, 1)[0] if stripped else ""


def _integer_clause(node: exp.Expression | None, what: str) -> int | None:
    if node is None:
        return None
    value = node.args.get("expression") if not isinstance(node, exp.Literal) else node
    if isinstance(value, exp.Paren):
        value = value.this
    if not (isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit()):
        raise AdqlError(f"{what} needs a non-negative integer")
    return int(value.this)


def _check_functions(select: exp.Select, disabled: frozenset[str]) -> None:
    if not disabled:
        return
    for node in select.find_all(exp.Func, exp.Mod):
        name = function_name(node)
        if name in disabled:
            raise AdqlError(f"function {name} is not supported by this service")


def _run(
    query: str, tables: Mapping[str, Table], maxrec: int | None, disabled: frozenset[str]
) -> QueryResult:
    if maxrec is not None and maxrec < 0:
        raise AdqlError(f"MAXREC must be non-negative, got {maxrec}")
    select = parse_query(query)
    _check_functions(select, disabled)
    top = _integer_clause(select.args.get("limit"), "TOP")
    offset = _integer_clause(select.args.get("offset"), "OFFSET")
    from_clause = select.args.get("from") or select.args.get("from_")
    joins = select.args.get("joins") or []
    scope = Scope(make_sources([from_clause.this] + [j.this for j in joins], tables))
    items = expand_select(select, scope)

    frame = filtered_frame(select, scope)
    having = select.args.get("having")
    if is_aggregate_query(select):
        frame, ev = group_frame(select, scope, frame, output_aliases(items))
        if having is not None:
            frame = frame.take(np.flatnonzero(ev.mask(having.this)))
            ev = ev.with_frame(frame)
    else:
        if having is not None:
            raise AdqlError("HAVING needs GROUP BY or aggregate functions")
        ev = Evaluator(scope, frame)

    if select.args.get("distinct") is not None:
        ev = ev.with_frame(ev.frame.take(distinct_rows(items, ev)))
    if select.args.get("order") is not None:
        ev = ev.with_frame(ev.frame.take(sort_permutation(select.args["order"], items, ev)))
    n = ev.frame.n
    start = min(offset or 0, n)
    stop = n if top is None else min(n, start + top)
    produced = stop - start
    overflow = maxrec is not None and produced > maxrec
    if overflow:
        stop = start + maxrec
    if (start, stop) != (0, n):
        ev = ev.with_frame(ev.frame.take(np.arange(start, stop)))
    return QueryResult(build_table(items, ev), overflow)
