"""What a TAP service says it can do (VOSI capabilities, TAPRegExt), read leniently.

TAPRegExt types the TAP capability as ``xsi:type="tr:TableAccess"`` with ``language``,
``uploadMethod`` and ``outputLimit`` children. Real services shorten it: a capability
carrying only the TAP ``standardID`` with its interfaces, no ``xsi:type`` and no
``language``. pyvo's typed reading (``get_tap_capability``, ``maxrec``, ``hardlimit``,
``upload_methods``) raises ``DALServiceError`` on such a document while its
``search()``/``run_async()`` work, so a harvest must not depend on it.

Here the document is read element by element, by local name, whatever the namespaces
and types: a capability whose ``standardID`` is TAP's (any case, any ``#version``) or
whose ``xsi:type`` ends in ``TableAccess`` is the TAP capability. What is missing gets the
standard default, logged once at debug level: no ``language`` means ADQL 2.0 with its
geometry (INTERSECTS is then *tried*; a service that refuses it falls back, see
``obscore.query_targets``); no ``uploadMethod`` means no upload (OR-batches are used);
no ``outputLimit`` means the limit is unknown until a result overflows.

The ObsCore table is looked up too (:func:`find_obscore_table`), since some servers
know it only as ``ivoa.obscore`` and answer "not found" to ``ivoa.ObsCore``.
"""

from __future__ import annotations

import logging
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pyvo
import requests

from obsharvest.errors import (
    AdqlValueError,
    NotTapServiceError,
    ServiceRefusedError,
    TransientError,
    status_is_transient,
)
from obsharvest.net.redact import strip_query
from obsharvest.net.replies import refused, said_by
from obsharvest.net.retry import RetryPolicy
from obsharvest.query.adql import OBSCORE, table_name
from obsharvest.query.service import session_of

log = logging.getLogger(__name__)

TAP_STANDARD = "ivo://ivoa.net/std/tap"
GEOMETRY_FEATURES = "ivo://ivoa.net/std/tapregext#features-adqlgeo"
UPLOAD_INLINE = "ivo://ivoa.net/std/tapregext#upload-inline"
OBSCORE_UTYPE = "ivo://ivoa.net/std/obscore#table-1"
_REGULAR = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TapCapability:
    """The TAP capability as the service wrote it; ``None`` means "not said"."""

    languages: tuple[str, ...] = ()  # e.g. ("ADQL",); empty: not declared
    geometry: frozenset[str] | None = None  # ADQL geometry forms; None: not declared
    upload_methods: tuple[str, ...] | None = None  # ivo-ids (lower case); None: not declared
    maxrec_default: int | None = None
    maxrec_hard: int | None = None
    typed: bool = True  # xsi:type="tr:TableAccess" was there

    def assumptions(self) -> list[str]:
        """What the document left out and what obsharvest assumes instead."""
        out = []
        if not self.typed:
            out.append("no xsi:type on the TAP capability: read as TAPRegExt TableAccess")
        if not self.languages:
            out.append("no language declared: ADQL 2.0 assumed")
        if self.geometry is None:
            out.append("no geometry features declared: INTERSECTS tried, dropped if refused")
        if self.upload_methods is None:
            out.append("no upload method declared: OR-batches instead of TAP_UPLOAD")
        if self.maxrec_hard is None:
            out.append("no hard output limit declared: learnt from the first overflow")
        return out


@dataclass(frozen=True)
class ServiceFeatures:
    """What one TAP service can do, as used to shape its queries."""

    intersects: bool = True
    upload: bool = True
    maxrec_hard: int | None = None
    obscore_table: str = OBSCORE  # as the service names it, ready for ADQL
    assumed: tuple[str, ...] = field(default=(), compare=False)


def _local(tag: object) -> str:
    """An element's or attribute's name without its namespace."""
    return str(tag).rpartition("}")[2].lower() if isinstance(tag, str) else ""


def _attr(element: ET.Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _number(element: ET.Element | None) -> int | None:
    """A row limit; a limit in bytes (``unit="byte"``) says nothing about rows."""
    if element is None or (_attr(element, "unit") or "row").lower() != "row":
        return None
    try:
        return int((element.text or "").strip())
    except ValueError:
        return None


def is_tap_capability(element: ET.Element) -> bool:
    standard = (_attr(element, "standardid") or "").strip().lower()
    xsi_type = (_attr(element, "type") or "").lower()
    return standard.partition("#")[0] == TAP_STANDARD or xsi_type.endswith("tableaccess")


def parse_tap_capability(document: bytes) -> TapCapability | None:
    """The TAP capability of a VOSI capabilities document; None when it has none.

    Raises ``ET.ParseError`` for a reply that is not XML, or XML of another kind.
    """
    root = ET.fromstring(document)
    if _local(root.tag) != "capabilities":
        raise ET.ParseError(f"the root element is <{_local(root.tag)}>, not <capabilities>")
    for element in root.iter():
        if _local(element.tag) != "capability" or not is_tap_capability(element):
            continue
        languages, geometry = [], None
        for language in _children(element, "language"):
            names = _children(language, "name")
            languages.append((names[0].text or "").strip() if names else "")
            for features in _children(language, "languagefeatures"):
                if (_attr(features, "type") or "").strip().lower() != GEOMETRY_FEATURES:
                    continue
                forms = {
                    (form.text or "").strip().upper()
                    for feature in _children(features, "feature")
                    for form in _children(feature, "form")
                }
                geometry = (geometry or frozenset()) | frozenset(forms)
        methods = [
            (_attr(m, "ivo-id") or "").strip().lower() for m in _children(element, "uploadmethod")
        ]
        limits = _children(element, "outputlimit")
        default = hard = None
        if limits:
            found = _children(limits[0], "default")
            default = _number(found[0] if found else None)
            found = _children(limits[0], "hard")
            hard = _number(found[0] if found else None)
        return TapCapability(
            languages=tuple(lang for lang in languages if lang),
            geometry=geometry,
            upload_methods=tuple(methods) if methods else None,
            maxrec_default=default,
            maxrec_hard=hard,
            typed=(_attr(element, "type") or "").lower().endswith("tableaccess"),
        )
    return None


def read_tap_capability(session: requests.Session, tap_url: str) -> TapCapability:
    """The TAP capability from ``{tap_url}/capabilities`` (TAP 1.0 and 1.1 both put VOSI
    capabilities there).

    Read here rather than through pyvo, which reports every failure of this request as a
    ``DALServiceError`` without a status: a 401 or a 404 would look like a dropped
    connection and be retried. Raises :class:`~obsharvest.errors.ServiceRefusedError` for
    401/403, :class:`~obsharvest.errors.NotTapServiceError` for another 4xx or a reply that is
    no capabilities document with TAP in it, :class:`TransientError` for 429/5xx; a
    transport error propagates as it is (transient too).
    """
    url = f"{tap_url.rstrip('/')}/capabilities"
    where = strip_query(url)
    reply = session.get(url, timeout=getattr(session, "timeout", None) or (10.0, 60.0))
    status = reply.status_code
    ctype = reply.headers.get("Content-Type", "").split(";")[0].strip() or "no Content-Type"
    if status >= 400:
        if status_is_transient(status):
            after = reply.headers.get("Retry-After")
            raise TransientError(
                f"TAP capabilities {where} answered {status}",
                float(after) if after and after.isdigit() else None,
            )
        raise refused(
            "TAP service",
            url,
            status,
            reply.reason or "",
            said_by(reply.content, ctype),
            token_source=getattr(session, "token_source", None),
            token_sent=_token_sent(session, url),
            cls=ServiceRefusedError if status in (401, 403) else NotTapServiceError,
            hint="" if status in (401, 403) else "is service.tap_url the TAP service's base URL?",
        )
    try:
        capability = parse_tap_capability(reply.content)
    except ET.ParseError as exc:
        raise NotTapServiceError(
            f"TAP service {where} answered {status} with {ctype}, not a VOSI capabilities "
            f"document ({exc}); is service.tap_url the TAP service's base URL?",
            status=status,
            url=where,
        ) from None
    if capability is None:
        raise NotTapServiceError(
            f"{where} lists no TAP capability (no standardID ivo://ivoa.net/std/TAP): "
            "service.tap_url is not a TAP service",
            status=status,
            url=where,
        )
    return capability


def _token_sent(session, url: str) -> bool:
    check = getattr(session, "token_sent_to", None)
    return bool(check(url)) if check else "Authorization" in getattr(session, "headers", {})


def adql_table_name(listed: str) -> str | None:
    """A table name as listed (``/tables``, TAP_SCHEMA) made ready for ADQL, or None when it
    cannot be one: parts that are regular identifiers stay as they are (ADQL compares those
    case-insensitively, and the server folds them its own way), any other part is quoted
    (a delimited identifier: the case then counts)."""
    parts = listed.split(".")
    name = ".".join(
        p if _REGULAR.match(p) or (p.startswith('"') and p.endswith('"')) else f'"{p}"'
        for p in parts
    )
    try:
        return table_name(name)
    except AdqlValueError:
        return None


def obscore_in_tables(document: bytes) -> str | None:
    """The ObsCore table's name as a VOSI tableset lists it: ``ivoa.obscore`` in any case,
    else a table whose utype says ObsCore (ObsCore 1.1 §4: ``ivo://ivoa.net/std/ObsCore#table-1.1``)."""
    root = ET.fromstring(document)
    by_utype = None
    for table in root.iter():
        if _local(table.tag) != "table":
            continue
        names = _children(table, "name")
        name = (names[0].text or "").strip() if names else ""
        if name.replace('"', "").lower() == "ivoa.obscore":
            return name
        utypes = _children(table, "utype")
        utype = (utypes[0].text or "").strip().lower() if utypes else ""
        if by_utype is None and name and utype.startswith(OBSCORE_UTYPE):
            by_utype = name
    return by_utype


def find_obscore_table(session: requests.Session, tap_url: str) -> str | None:
    """The ObsCore table as the service names it, from VOSI ``/tables`` (``detail=min``
    where the service supports it: names only), or None when the service does not say
    (then ``ivoa.ObsCore`` is used, which case-insensitive servers all accept)."""
    url = f"{tap_url.rstrip('/')}/tables"
    try:
        reply = session.get(
            url,
            params={"detail": "min"},
            timeout=getattr(session, "timeout", None) or (10.0, 60.0),
        )
        if reply.status_code != 200:
            log.debug("%s answered %d: ObsCore table name not looked up", url, reply.status_code)
            return None
        return obscore_in_tables(reply.content)
    except (requests.RequestException, ET.ParseError) as exc:
        log.debug("%s unreadable (%s): ObsCore table name not looked up", url, exc)
        return None


def probe_features(service: pyvo.dal.TAPService, retry: RetryPolicy) -> ServiceFeatures:
    """Read capabilities and the ObsCore table's name once per batch of queries."""
    session = session_of(service)
    base = str(service.baseurl)

    def read() -> ServiceFeatures:
        capability = read_tap_capability(session, base)
        listed = find_obscore_table(session, base)
        table = adql_table_name(listed) if listed else None
        assumed = capability.assumptions()
        if table is None:
            assumed.append(f"no usable ObsCore table name in /tables: {OBSCORE} assumed")
        for line in assumed:
            _log_once(base, line)
        uploads = capability.upload_methods or ()
        return ServiceFeatures(
            intersects=capability.geometry is None or "INTERSECTS" in capability.geometry,
            upload=any(u.startswith(UPLOAD_INLINE) for u in uploads),
            maxrec_hard=capability.maxrec_hard,
            obscore_table=table or OBSCORE,
            assumed=tuple(assumed),
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pedantic XML warnings are not the user's to fix
        return retry.call(read, "reading TAP capabilities")


_logged: set[tuple[str, str]] = set()


def _log_once(service: str, line: str) -> None:
    key = (strip_query(service), line)
    if key not in _logged:
        _logged.add(key)
        log.debug("%s: %s", key[0], line)
