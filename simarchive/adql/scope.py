"""Name resolution for ADQL: tables in FROM, column references, and row frames.

Identifiers match case-insensitively, as in SQL; a double-quoted identifier must
match exactly, but falls back to a case-insensitive match because the archive's
tables store lowercase names while clients often quote the mixed-case names they
see in TAP_SCHEMA (e.g. ``"ivoa"."ObsCore"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from sqlglot import exp

from obsharvest.simarchive.adql.errors import AdqlError


@dataclass(eq=False)
class Source:
    """One table in FROM, under the name the query uses to qualify its columns."""

    name: str  # alias, or the bare table name when there is no alias
    alias: exp.Identifier | None
    key: str  # key in the tables mapping, e.g. "ivoa.obscore"
    label: str  # as written in the query, for messages
    table: Table


@dataclass
class Frame:
    """Rows under evaluation: for each source, which of its rows make up each frame row.

    Per source, ``rows`` holds an index array (one entry per frame row), ``None``
    (all rows in table order: avoids copying 100k-row columns for single-table
    queries), or an int (one row broadcast against the others: a join evaluates
    its condition per row of one side, vectorized over the other).
    """

    sources: list[Source]
    rows: dict[str, np.ndarray | int | None]
    n: int
    groups: np.ndarray | None = None  # group id per frame row, for aggregate queries
    group_count: int = 0

    def take(self, index: np.ndarray) -> Frame:
        index = np.asarray(index, dtype=np.intp)
        rows: dict[str, np.ndarray | int | None] = {}
        for name, r in self.rows.items():
            if r is None:
                rows[name] = index
            elif isinstance(r, np.ndarray):
                rows[name] = r[index]
            else:
                rows[name] = r
        groups = None if self.groups is None else self.groups[index]
        return Frame(self.sources, rows, len(index), groups, self.group_count)


def identifier_matches(ident: exp.Identifier | str, candidates: list[str]) -> str | None:
    """The candidate an identifier refers to: exact for quoted names, else case-insensitive."""
    if isinstance(ident, exp.Identifier):
        text, quoted = ident.this, bool(ident.args.get("quoted"))
    else:
        text, quoted = ident, False
    if quoted and text in candidates:
        return text
    lowered = text.lower()
    for cand in candidates:
        if cand.lower() == lowered:
            return cand
    return None


def lookup_table(node: exp.Table, tables: Mapping[str, Table]) -> tuple[str, Table, str]:
    """(key, table, label) for a FROM item; schema-less names match a unique ``*.name`` key."""
    if not isinstance(node.this, exp.Identifier):
        raise AdqlError(f"unsupported FROM item: {node.sql(dialect='tsql')}")
    parts = [p for p in (node.args.get("catalog"), node.args.get("db"), node.this) if p]
    label = ".".join(p.this for p in parts)
    keys = list(tables)
    if len(parts) > 1:
        name = ".".join(p.this for p in parts[-2:])
        quoted = any(p.args.get("quoted") for p in parts[-2:])
        key = identifier_matches(exp.Identifier(this=name, quoted=quoted), keys)
    else:
        key = identifier_matches(parts[0], keys)
        if key is None:
            suffix = [k for k in keys if identifier_matches(parts[0], [k.rsplit(".", 1)[-1]])]
            key = suffix[0] if len(suffix) == 1 else None
    if key is None:
        raise AdqlError(f"table '{label}' does not exist")
    return key, tables[key], label


@dataclass
class Scope:
    """All sources of a query plus a memo of resolved column references."""

    sources: list[Source]
    _memo: dict[int, tuple[Source, str]] = field(default_factory=dict)

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def resolve(self, col: exp.Column) -> tuple[Source, str]:
        """The (source, column name) a column reference denotes, or AdqlError."""
        hit = self._memo.get(id(col))
        if hit is not None:
            return hit
        hit = self._resolve(col)
        self._memo[id(col)] = hit
        return hit

    def _resolve(self, col: exp.Column) -> tuple[Source, str]:
        ident = col.this
        if not isinstance(ident, exp.Identifier):
            raise AdqlError(f"'*' is not allowed here: {col.sql(dialect='tsql')}")
        qualifier = [
            p for p in (col.args.get("catalog"), col.args.get("db"), col.args.get("table")) if p
        ]
        candidates = self.qualified_sources(qualifier) if qualifier else self.sources
        found = []
        for src in candidates:
            name = identifier_matches(ident, list(src.table.colnames))
            if name is not None:
                found.append((src, name))
        if not found:
            where = ", ".join(s.label for s in candidates)
            raise AdqlError(f"column '{ident.this}' not found in {where}")
        if len(found) > 1:
            where = ", ".join(s.name for s, _ in found)
            raise AdqlError(f"column reference '{ident.this}' is ambiguous (in {where})")
        return found[0]

    def qualified_sources(self, qualifier: list[exp.Identifier]) -> list[Source]:
        """Sources named by a qualifier: ``alias``, ``table`` or ``schema.table``."""
        text = ".".join(q.this for q in qualifier)
        if len(qualifier) == 1:
            by_alias = [
                s for s in self.sources if identifier_matches(qualifier[0], [s.name]) is not None
            ]
            if by_alias:
                return by_alias[:1]
            by_table = [
                s
                for s in self.sources
                if s.alias is None
                and identifier_matches(qualifier[0], [s.key.rsplit(".", 1)[-1]]) is not None
            ]
        else:
            quoted = any(q.args.get("quoted") for q in qualifier[-2:])
            want = exp.Identifier(this=".".join(q.this for q in qualifier[-2:]), quoted=quoted)
            by_table = [s for s in self.sources if identifier_matches(want, [s.key]) is not None]
        if not by_table:
            raise AdqlError(f"table or alias '{text}' is not in the FROM clause")
        if len(by_table) > 1:
            raise AdqlError(f"table reference '{text}' is ambiguous")
        return by_table


def make_sources(items: list[exp.Expression], tables: Mapping[str, Table]) -> list[Source]:
    """Sources for the FROM items, checking that their names are unique."""
    sources: list[Source] = []
    for item in items:
        if not isinstance(item, exp.Table):
            raise AdqlError(
                f"unsupported FROM item (subqueries are not supported): {item.sql(dialect='tsql')}"
            )
        key, table, label = lookup_table(item, tables)
        alias_node = item.args.get("alias")
        alias = alias_node.this if isinstance(alias_node, exp.TableAlias) else None
        if isinstance(alias_node, exp.TableAlias) and alias_node.columns:
            raise AdqlError("column aliases in FROM are not supported")
        name = alias.this if alias is not None else key.rsplit(".", 1)[-1]
        if not (alias is not None and alias.args.get("quoted")):
            name = name.lower()
        if any(s.name == name for s in sources):
            raise AdqlError(f"table name or alias '{name}' is used twice in FROM")
        sources.append(Source(name, alias, key, label, table))
    return sources
