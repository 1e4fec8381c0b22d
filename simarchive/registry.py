"""RegTAP 1.1 tables: the archive as a small IVOA Registry describing services given to it.

A client finds ObsCore services in the Registry in two ways, and real records use both:

- the TAP capability declares the data model: a ``rr.res_detail`` row of the capability
  with ``detail_xpath = '/capability/dataModel/@ivo-id'`` and a value such as
  ``ivo://ivoa.net/std/ObsCore#core-1.1`` (``detail_value`` keeps its case; clients match
  it case-insensitively);
- a data collection (``vs:catalogresource``) lists the ObsCore table, ``rr.res_table``
  with ``table_utype`` ``ivo://ivoa.net/std/obscore#table-1.1``, and points at the TAP
  service that serves it through ``rr.relationship`` (``relationship_type = 'isservedby'``,
  ``related_id`` the service's ivoid). ``pyvo.registry.search(datamodel="obscore")`` does
  not see this form.

Each :class:`RegistryEntry` becomes one TAP service record (``vs:catalogservice`` with a
``tr:tableaccess`` capability and its ``std`` ``vs:paramhttp`` interface); ``obscore``
says which of the two declarations it gets (``both``, or ``none`` for a TAP service
without ObsCore, which a client must not list). As RegTAP asks, ivoids, types, standard
ids, utypes and relationship types are stored lower-case. Columns hold no NULLs (the
engine's columns are numpy arrays): a missing value is the empty string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from obsharvest.simarchive.tapschema import PublishedTable

OBSCORE_FORMS = ("datamodel", "utype", "both", "none")
TAP_STANDARD_ID = "ivo://ivoa.net/std/tap"
DATAMODEL_XPATH = "/capability/dataModel/@ivo-id"
OBSCORE_DATAMODEL = "ivo://ivoa.net/std/ObsCore#core-1.1"
OBSCORE_TABLE_UTYPE = "ivo://ivoa.net/std/obscore#table-1.1"
SCHEMA = "rr"
TABLE_NAMES = ("resource", "capability", "interface", "res_detail", "res_table", "relationship")


@dataclass(frozen=True)
class RegistryEntry:
    """One TAP service the registry describes.

    ``tap_url`` None means the archive serving the registry (its own TAP URL, known only
    once it listens). ``collection_ivoid`` names the data collection record of the
    ``utype`` form (default: ``<ivoid>/obscore``).
    """

    ivoid: str
    tap_url: str | None = None
    obscore: str = "datamodel"
    title: str = ""
    collection_ivoid: str | None = None

    def __post_init__(self) -> None:
        if self.obscore not in OBSCORE_FORMS:
            raise ValueError(f"obscore {self.obscore!r} is not one of {', '.join(OBSCORE_FORMS)}")
        if not self.ivoid.lower().startswith("ivo://"):
            raise ValueError(f"ivoid {self.ivoid!r} does not start with ivo://")

    @property
    def collection(self) -> str:
        return (self.collection_ivoid or f"{self.ivoid}/obscore").lower()


@dataclass
class _Rows:
    """The six tables' rows as lists of column values, filled record by record."""

    resource: dict[str, list]
    capability: dict[str, list]
    interface: dict[str, list]
    res_detail: dict[str, list]
    res_table: dict[str, list]
    relationship: dict[str, list]


_COLUMNS = {
    "resource": (
        "ivoid",
        "res_type",
        "created",
        "short_name",
        "res_title",
        "content_level",
        "res_description",
        "reference_url",
        "creator_seq",
        "content_type",
        "source_format",
        "source_value",
        "res_version",
        "region_of_regard",
        "waveband",
        "rights",
        "rights_uri",
        "harvested_from",
        "updated",
    ),
    "capability": (
        "ivoid",
        "cap_index",
        "cap_name",
        "cap_type",
        "cap_description",
        "standard_id",
    ),
    "interface": (
        "ivoid",
        "cap_index",
        "intf_index",
        "intf_type",
        "intf_role",
        "std_version",
        "query_type",
        "result_type",
        "wsdl_url",
        "url_use",
        "access_url",
        "mirror_url",
        "authenticated_only",
        "security_method_id",
    ),
    "res_detail": ("ivoid", "cap_index", "detail_xpath", "detail_value"),
    "res_table": (
        "ivoid",
        "schema_index",
        "schema_name",
        "table_description",
        "table_name",
        "table_index",
        "table_title",
        "table_type",
        "table_utype",
        "nrows",
    ),
    "relationship": ("ivoid", "relationship_type", "related_id", "related_name"),
}
_INTEGERS = {
    "cap_index",
    "intf_index",
    "schema_index",
    "table_index",
    "nrows",
    "authenticated_only",
}
_DESCRIPTIONS = {
    "resource": "The resources (services, data collections) the registry knows",
    "capability": "Pieces of behaviour of a resource (e.g. a TAP endpoint)",
    "interface": "Information on access modes of a capability",
    "res_detail": "XPath-value pairs for members of resource or capability",
    "res_table": "(Relational) tables that are part of schemata or resources",
    "relationship": "Relationships between resources (e.g. a collection isServedBy a service)",
}
_NOW = "2026-01-01T00:00:00"


def _add(rows: dict[str, list], table: str, **values: object) -> None:
    for name in _COLUMNS[table]:
        rows[name].append(values.get(name, 0 if name in _INTEGERS else ""))


def _resource(rows: _Rows, ivoid: str, res_type: str, title: str) -> None:
    _add(
        rows.resource,
        "resource",
        ivoid=ivoid,
        res_type=res_type,
        created=_NOW,
        short_name=title[:16],
        res_title=title,
        content_level="research",
        res_description=title,
        content_type="catalog",
        updated=_NOW,
    )


def _tap_service(rows: _Rows, entry: RegistryEntry, tap_url: str) -> None:
    ivoid = entry.ivoid.lower()
    title = entry.title or f"TAP service {ivoid}"
    _resource(rows, ivoid, "vs:catalogservice", title)
    _add(
        rows.capability,
        "capability",
        ivoid=ivoid,
        cap_index=1,
        cap_type="tr:tableaccess",
        cap_description="Table access protocol endpoint",
        standard_id=TAP_STANDARD_ID,
    )
    _add(
        rows.interface,
        "interface",
        ivoid=ivoid,
        cap_index=1,
        intf_index=1,
        intf_type="vs:paramhttp",
        intf_role="std",
        std_version="1.1",
        url_use="base",
        access_url=tap_url,
    )
    # the service's own tableset: ObsCore (no utype, as older records have it) or not
    has_obscore = entry.obscore != "none"
    _table(rows, ivoid, "ivoa.obscore" if has_obscore else "public.catalogue", "")
    if entry.obscore in ("datamodel", "both"):
        _add(
            rows.res_detail,
            "res_detail",
            ivoid=ivoid,
            cap_index=1,
            detail_xpath=DATAMODEL_XPATH,
            detail_value=OBSCORE_DATAMODEL,
        )
    if entry.obscore in ("utype", "both"):
        _collection(rows, entry)


def _table(rows: _Rows, ivoid: str, name: str, utype: str) -> None:
    _add(
        rows.res_table,
        "res_table",
        ivoid=ivoid,
        schema_index=1,
        schema_name=name.split(".")[0],
        table_description=f"{name} of {ivoid}",
        table_name=name,
        table_index=1,
        table_title=name,
        table_type="table",
        table_utype=utype,
        nrows=0,
    )


def _collection(rows: _Rows, entry: RegistryEntry) -> None:
    """The data collection record: the ObsCore table by its utype, served by the service."""
    ivoid = entry.collection
    _resource(rows, ivoid, "vs:catalogresource", f"ObsCore table of {entry.ivoid.lower()}")
    _table(rows, ivoid, "ivoa.obscore", OBSCORE_TABLE_UTYPE)
    _add(
        rows.relationship,
        "relationship",
        ivoid=ivoid,
        relationship_type="isservedby",
        related_id=entry.ivoid.lower(),
        related_name=entry.title,
    )


def _column(name: str, values: list) -> np.ndarray:
    if name in _INTEGERS:
        return np.array(values, dtype=np.int64 if name == "nrows" else np.int16)
    return np.array(values, dtype=str) if values else np.array([], dtype="U1")


def registry_tables(entries: Sequence[RegistryEntry], own_tap_url: str) -> list[PublishedTable]:
    """The RegTAP tables describing ``entries`` (``tap_url`` None: ``own_tap_url``)."""
    seen: set[str] = set()
    rows = _Rows(**{t: {c: [] for c in _COLUMNS[t]} for t in TABLE_NAMES})
    for entry in entries:
        if entry.ivoid.lower() in seen:
            raise ValueError(f"ivoid {entry.ivoid!r} is described twice")
        seen.add(entry.ivoid.lower())
        _tap_service(rows, entry, entry.tap_url or own_tap_url)
    out = []
    for index, name in enumerate(TABLE_NAMES):
        data = Table({c: _column(c, v) for c, v in getattr(rows, name).items()})
        out.append(PublishedTable(SCHEMA, f"rr.{name}", _DESCRIPTIONS[name], data, 200 + index))
    return out
