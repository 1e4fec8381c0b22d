"""ADQL built from validated values: the queries the seed tutorial writes by hand, in bulk.

Nothing a user or a target file supplies is pasted into a query as text: numbers are
formatted from floats, and strings (bands, subtypes) must match a strict pattern before
they are quoted. The only way to add raw ADQL is ``extra_where``, which the parameters
mark as trusted input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from obsharvest.errors import AdqlValueError
from obsharvest.models import Target

OBSCORE = "ivoa.ObsCore"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SAFE_STRING = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
TARGET_COLUMN = "obsh_target"  # the uploaded target name, carried into each result row


_TABLE_PART = re.compile(r'^(?:[A-Za-z][A-Za-z0-9_]{0,63}|"[^"\x00-\x1f]{1,64}")$')


def table_name(name: str) -> str:
    """A qualified table name for a FROM clause, as a service listed it (``ivoa.obscore``,
    ``ivoa."ObsCore"``): each part a regular or a delimited identifier, nothing else, so a
    name read from a service's ``/tables`` cannot carry ADQL of its own."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 3 or not all(_TABLE_PART.match(p) for p in parts):
        raise AdqlValueError(f"table name {name[:80]!r} is not an ADQL table identifier")
    return name


def quote(value: str, what: str) -> str:
    """An ADQL string literal for a value of a known, harmless shape."""
    if not _SAFE_STRING.match(value):
        raise AdqlValueError(f"{what} {value!r} has characters not allowed in a query value")
    return "'" + value.replace("'", "''") + "'"


def number(value: float, what: str) -> str:
    value = float(value)
    if not math.isfinite(value):
        raise AdqlValueError(f"{what} {value!r} is not a finite number")
    return repr(value)


@dataclass(frozen=True)
class Constraints:
    """Filters on ObsCore columns besides position; empty means 'any'."""

    bands: tuple[str, ...] = ()
    subtypes: tuple[str, ...] = ()
    calib_levels: tuple[int, ...] = ()
    t_min: float | None = None  # MJD: images that end after this
    t_max: float | None = None  # MJD: images that start before this
    extra_where: str | None = None  # trusted raw ADQL, ANDed in parentheses
    band_column: str = "lsst_band"  # Rubin's; ObsCore itself has no band-name column

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.band_column):
            raise AdqlValueError(f"band column {self.band_column!r} is not an ADQL identifier")

    def clauses(self, prefix: str = "") -> list[str]:
        out = []
        if self.bands:
            out.append(
                f"{prefix}{self.band_column} IN ({', '.join(quote(b, 'band') for b in self.bands)})"
            )
        if self.subtypes:
            values = ", ".join(quote(s, "dataproduct_subtype") for s in self.subtypes)
            out.append(f"{prefix}dataproduct_subtype IN ({values})")
        if self.calib_levels:
            levels = ", ".join(str(int(level)) for level in self.calib_levels)
            out.append(f"{prefix}calib_level IN ({levels})")
        if self.t_min is not None:
            out.append(f"{prefix}t_max >= {number(self.t_min, 't_min')}")
        if self.t_max is not None:
            out.append(f"{prefix}t_min <= {number(self.t_max, 't_max')}")
        if self.extra_where:
            out.append(f"({self.extra_where})")
        return out

    def with_time(self, t_min: float | None, t_max: float | None) -> Constraints:
        return replace(self, t_min=t_min, t_max=t_max)


def point(ra: float, dec: float) -> str:
    return f"POINT('ICRS', {number(ra, 'ra')}, {number(dec, 'dec')})"


def circle(ra: float, dec: float, radius: float) -> str:
    return f"CIRCLE('ICRS', {number(ra, 'ra')}, {number(dec, 'dec')}, {number(radius, 'radius')})"


def target_predicate(target: Target, *, intersects: bool, prefilter_radius: float) -> str:
    """The position test for one target against ``s_region``.

    A point target asks for containment. A target with a radius asks for overlap: with
    INTERSECTS when the service has it, otherwise (the RSP) a centre-distance pre-filter
    wide enough to catch every image that could overlap; the client then decides
    overlap exactly against ``s_region``.
    """
    if not target.radius:
        return f"CONTAINS({point(target.ra, target.dec)}, s_region) = 1"
    if intersects:
        return f"INTERSECTS({circle(target.ra, target.dec, target.radius)}, s_region) = 1"
    reach = target.radius + prefilter_radius
    return f"CONTAINS(POINT('ICRS', s_ra, s_dec), {circle(target.ra, target.dec, reach)}) = 1"


def obscore_query(
    targets: Sequence[Target],
    constraints: Constraints,
    *,
    intersects: bool = True,
    prefilter_radius: float = 0.25,
    columns: str = "*",
    obscore: str = OBSCORE,
) -> str:
    """One query for one or several targets (an OR-batch); rows are tied to targets later."""
    if not targets:
        raise AdqlValueError("no targets to query")
    preds = [
        target_predicate(t, intersects=intersects, prefilter_radius=prefilter_radius)
        for t in targets
    ]
    where = preds[0] if len(preds) == 1 else "(" + " OR ".join(preds) + ")"
    clauses = [where, *constraints.clauses()]
    return f"SELECT {columns} FROM {table_name(obscore)} WHERE " + " AND ".join(clauses)


def upload_query(
    constraints: Constraints,
    *,
    with_radius: bool,
    intersects: bool = True,
    prefilter_radius: float = 0.25,
    table: str = "targets",
    obscore: str = OBSCORE,
) -> str:
    """A TAP_UPLOAD join: one query for many targets, each row carrying its target's name.

    The uploaded table has columns ``name``, ``ra``, ``dec`` and ``radius``; point and
    radius targets go in separate uploads because the join predicate differs.
    """
    if not with_radius:
        predicate = "CONTAINS(POINT('ICRS', t.ra, t.dec), o.s_region) = 1"
    elif intersects:
        predicate = "INTERSECTS(CIRCLE('ICRS', t.ra, t.dec, t.radius), o.s_region) = 1"
    else:
        reach = number(prefilter_radius, "prefilter radius")
        predicate = (
            "CONTAINS(POINT('ICRS', o.s_ra, o.s_dec), "
            f"CIRCLE('ICRS', t.ra, t.dec, t.radius + {reach})) = 1"
        )
    conditions = constraints.clauses(prefix="o.")
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    return (
        f"SELECT t.name AS {TARGET_COLUMN}, o.* FROM TAP_UPLOAD.{table} AS t "
        f"JOIN {table_name(obscore)} AS o ON {predicate}{where}"
    )
