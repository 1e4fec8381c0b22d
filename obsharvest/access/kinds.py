"""From an ObsCore row to the way its bytes are reached: by the standard, not by URL shape.

ObsCore 1.1 (§4.7) says what ``access_url`` is through ``access_format``:

- ``application/x-votable+xml;content=datalink``: a DataLink document. The URL may
  carry ``?ID=`` (the RSP) or not (GAVO DaCHS's product URLs, which redirect to it).
- a file format (``image/fits``, ``application/fits``, ``image/x-fits``, ...): the URL
  is the file itself (MAST, IRSA, most DaCHS image collections). No Datalink.
- empty or unknown: the first ranged GET's ``Content-Type`` decides (:func:`sniff`).

A TAP result may also carry a DataLink *service descriptor* (DataLink 1.1 §4:
``RESOURCE type="meta" utype="adhoc:service"`` with standardID ``…DataLink#links-1.0``,
an ``accessURL`` and an ``inputParams`` ``ID`` PARAM whose ``ref`` names a FIELD): the
standard way to ask the links service about several rows in one request, and the only
way when a collection publishes no usable ``access_url``. The same shape with a SODA
standardID offers cutouts for rows whose access_url is the file itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlencode

# What an image's record needs lives with the records (obsharvest.models, the ground
# floor); these names stay importable from here, where the rest of the vocabulary is.
from obsharvest.models import (
    DATALINK_CONTENT,
    FITS_TYPES,
    Kind,
    LinkRequest,
    is_datalink_type,
    is_fits_type,
    kind_of,
    link_request,
    media_type,
    split_access_url,
)
from obsharvest.net.compression import gunzip_prefix, is_gzip

__all__ = [
    "DATALINK_CONTENT",
    "DATALINK_STANDARD",
    "DESCRIPTORS_META",
    "FITS_MAGIC",
    "FITS_TYPES",
    "SODA_ASYNC_STANDARD",
    "SODA_SHAPES",
    "SODA_SYNC_STANDARD",
    "Access",
    "Kind",
    "LinkRequest",
    "ServiceDescriptor",
    "descriptors_of",
    "find",
    "is_datalink_type",
    "is_fits_type",
    "kind_of",
    "link_request",
    "media_type",
    "service_descriptors",
    "sniff",
    "soda_flavour",
    "split_access_url",
]

DATALINK_STANDARD = "ivo://ivoa.net/std/DataLink#links"
SODA_SYNC_STANDARD = "ivo://ivoa.net/std/SODA#sync"  # sync-1.0, sync-1, any version
SODA_ASYNC_STANDARD = "ivo://ivoa.net/std/SODA#async"
SODA_SHAPES = ("CIRCLE", "POS", "POLYGON")  # SODA 1.0 §3.3, in the order obsharvest uses them
FITS_MAGIC = b"SIMPLE  ="
DESCRIPTORS_META = "obsharvest_service_descriptors"  # where query results keep them


class Access(StrEnum):
    """How an image's bytes are reached (recorded per row in the Parquet)."""

    DATALINK = "datalink"  # access_format says Datalink; access_url used as given
    DESCRIPTOR = "datalink-descriptor"  # Datalink through the TAP result's service descriptor
    DIRECT = "direct"  # access_format says the access_url is the file
    SNIFFED_DATALINK = "sniffed-datalink"  # no/unknown access_format; the reply was Datalink
    SNIFFED_DIRECT = "sniffed-direct"  # no/unknown access_format; the reply was FITS


def sniff(content_type: str | None, first_bytes: bytes) -> Kind:
    """What a reply is, from its ``Content-Type`` and first bytes (FITS starts with
    ``SIMPLE  =``, also once a gzip file's first bytes are decompressed; a Datalink
    document is a VOTable, often labelled plain ``text/xml``)."""
    if first_bytes.startswith(FITS_MAGIC):
        return Kind.FILE
    if is_gzip(first_bytes) and gunzip_prefix(first_bytes).startswith(FITS_MAGIC):
        return Kind.FILE  # .fits.gz, application/x-gzip or Content-Encoding: gzip
    head = first_bytes[:2048].lstrip().lower()
    kind, _ = media_type(content_type)
    xml = kind in ("application/x-votable+xml", "text/xml", "application/xml")
    if is_datalink_type(content_type) or (xml and b"<votable" in head):
        return Kind.DATALINK
    return Kind.UNKNOWN


@dataclass(frozen=True)
class ServiceDescriptor:
    """A service descriptor of a TAP result: where to call, and which column gives ``ID``."""

    standard_id: str
    access_url: str
    id_column: str | None  # None: the descriptor names no column (the RSP's empty group)
    fixed: tuple[tuple[str, str], ...] = ()  # other input params with fixed values
    inputs: tuple[str, ...] = ()  # every input param's name (SODA: which shapes it takes)
    id_value: str | None = None  # the ID param's own value (a Datalink document's, DaCHS')
    resource_id: str | None = None  # the RESOURCE's ID, what Datalink's service_def names

    @property
    def soda(self) -> str | None:
        """``"sync"`` or ``"async"`` for a SODA descriptor (by its standardID), else None."""
        return soda_flavour(self.standard_id)

    @property
    def soda_shape(self) -> str:
        """The SODA shape parameter to send: ``CIRCLE`` if the descriptor lists it (an
        exact circle), else ``POS`` (``POS=CIRCLE ...``), else ``POLYGON``; a descriptor
        that lists none of them gets ``CIRCLE``, the plainest SODA shape."""
        listed = {name.upper() for name in self.inputs}
        return next((shape for shape in SODA_SHAPES if shape in listed), "CIRCLE")

    @property
    def endpoint(self) -> str:
        """``access_url`` with the descriptor's fixed input params (e.g. RESPONSEFORMAT)."""
        if not self.fixed:
            return self.access_url
        joiner = "&" if "?" in self.access_url else "?"
        return self.access_url + joiner + urlencode(self.fixed)

    def to_meta(self) -> dict:
        return {
            "standard_id": self.standard_id,
            "access_url": self.access_url,
            "id_column": self.id_column,
            "fixed": [list(p) for p in self.fixed],
            "inputs": list(self.inputs),
            "id_value": self.id_value,
            "resource_id": self.resource_id,
        }

    @classmethod
    def from_meta(cls, meta: dict) -> ServiceDescriptor:
        return cls(
            str(meta["standard_id"]),
            str(meta["access_url"]),
            meta.get("id_column"),
            tuple((str(k), str(v)) for k, v in meta.get("fixed", ())),
            tuple(str(n) for n in meta.get("inputs", ())),
            meta.get("id_value"),
            meta.get("resource_id"),
        )


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def service_descriptors(votable) -> list[ServiceDescriptor]:
    """Every ``adhoc:service`` descriptor of a parsed VOTable (astropy ``VOTableFile``),
    with ``ref``s turned into the column names of the result table."""
    try:
        table = votable.get_first_table()
        fields = list(table.fields)
    except Exception:  # noqa: BLE001 - a result without a table has no rows to refer to
        fields = []
    names = {}
    for f in fields:
        for handle in (f.ID, f.name):
            if handle:
                names[handle] = f.name
    out = []
    for resource in _resources(votable.resources):
        if resource.type != "meta" or resource.utype != "adhoc:service":
            continue
        params = {p.name: p for p in resource.params}
        if "standardID" not in params or "accessURL" not in params:
            continue
        id_column, id_value, fixed, inputs = None, None, [], []
        for group in resource.groups:
            if group.name != "inputParams":
                continue
            for entry in group.entries:
                name = getattr(entry, "name", "") or ""
                ref = getattr(entry, "ref", None)
                inputs.append(name)
                if name.upper() == "ID":
                    if ref:
                        id_column = names.get(ref, ref)
                    else:
                        id_value = _fixed_value(entry)
                elif not ref and name.upper() not in SODA_SHAPES:
                    value = _fixed_value(entry)
                    if value is not None:
                        fixed.append((name, value))
        out.append(
            ServiceDescriptor(
                _text(params["standardID"].value).strip(),
                _text(params["accessURL"].value).strip(),
                id_column,
                tuple(fixed),
                tuple(inputs),
                id_value,
                getattr(resource, "ID", None) or None,
            )
        )
    return out


def _fixed_value(param) -> str | None:
    """A PARAM's value when it is one a client must send as given: only ``char`` params.

    astropy reads ``value=""`` of a numeric PARAM as 0 or an array of zeros (DaCHS writes
    ``CIRCLE``, ``SCALE``, ``PIXEL_1`` so, as templates to fill in): sent back they would
    ask for a zero-radius circle or a scale of 0.
    """
    if getattr(param, "datatype", "char") not in ("char", "unicodeChar"):
        return None
    value = _text(getattr(param, "value", "")).strip()
    return value or None


def soda_flavour(standard_id: str | None) -> str | None:
    """``"sync"``/``"async"`` for a SODA standardID (``…/SODA#sync-1.0``, ``#sync-1``,
    ``#async-1.0``, any capitalisation), else None."""
    standard = (standard_id or "").strip().lower()
    if standard.startswith(SODA_SYNC_STANDARD.lower()):
        return "sync"
    if standard.startswith(SODA_ASYNC_STANDARD.lower()):
        return "async"
    return None


def _resources(resources: Iterable) -> Iterable:
    for resource in resources:
        yield resource
        yield from _resources(getattr(resource, "resources", ()))


def find(descriptors: Iterable[ServiceDescriptor], standard: str) -> ServiceDescriptor | None:
    """The first descriptor whose standardID starts with ``standard`` (any version)."""
    for descriptor in descriptors:
        if descriptor.standard_id.lower().startswith(standard.lower()):
            return descriptor
    return None


def descriptors_of(meta) -> list[ServiceDescriptor]:
    """The descriptors a query result table carries in its ``meta``."""
    return [ServiceDescriptor.from_meta(m) for m in (meta or {}).get(DESCRIPTORS_META, ())]
