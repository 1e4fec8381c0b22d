"""Which TAP services carry ObsCore, as a RegTAP 1.1 registry says.

A record declares ObsCore in one of two ways, and both are in use:

- its TAP capability names the data model: ``rr.res_detail`` with ``detail_xpath``
  ``/capability/dataModel/@ivo-id`` and a value like ``ivo://ivoa.net/std/ObsCore#core-1.1``
  (its case varies, so it is compared lower-cased);
- a data collection lists its ObsCore table by utype (``rr.res_table.table_utype`` like
  ``ivo://ivoa.net/std/obscore#table-1.%``) and names the TAP service that serves it through
  ``rr.relationship`` ``isservedby``.

``pyvo.registry.search(datamodel="obscore")`` sees only the first. Its queries also lean on
RegTAP's user functions (``ivo_string_agg``, ``ivo_nocasematch``) and natural outer joins;
the two queries here are plain ADQL 2.0 inner joins, so any RegTAP service (and the
embedded archive's) runs them. They are constants: nothing a user gives goes into them.
They are sent with pyvo's TAP client, to pyvo's default registry
(``IVOA_REGISTRY``, else GAVO's) unless another is named.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from pyvo.dal import DALAccessError, DALQueryError
from pyvo.registry import regtap

from obsharvest.errors import UserError
from obsharvest.net.archive import name_of
from obsharvest.net.http import ServiceSession
from obsharvest.net.retry import one_line
from obsharvest.query.service import TapService

log = logging.getLogger(__name__)

DATAMODEL = "datamodel"
UTYPE = "utype"

_TAP_INTERFACE = """
JOIN rr.capability AS c ON c.ivoid = s.ivoid
JOIN rr.interface AS i ON i.ivoid = c.ivoid AND i.cap_index = c.cap_index
"""
_TAP_CONDITIONS = "c.standard_id LIKE 'ivo://ivoa.net/std/tap%' AND i.intf_role = 'std'"

BY_DATAMODEL = f"""
SELECT DISTINCT s.ivoid, s.res_title, i.access_url
FROM rr.resource AS s
{_TAP_INTERFACE}
JOIN rr.res_detail AS d ON d.ivoid = c.ivoid AND d.cap_index = c.cap_index
WHERE {_TAP_CONDITIONS}
  AND d.detail_xpath = '/capability/dataModel/@ivo-id'
  AND LOWER(d.detail_value) LIKE 'ivo://ivoa.net/std/obscore%'
"""

BY_UTYPE = f"""
SELECT DISTINCT s.ivoid, s.res_title, i.access_url
FROM rr.res_table AS t
JOIN rr.relationship AS rl ON rl.ivoid = t.ivoid
JOIN rr.resource AS s ON s.ivoid = rl.related_id
{_TAP_INTERFACE}
WHERE {_TAP_CONDITIONS}
  AND t.table_utype LIKE 'ivo://ivoa.net/std/obscore#table-1.%'
  AND rl.relationship_type = 'isservedby'
"""


class RegistryError(UserError):
    """The registry could not be asked (wrong URL, down, not a RegTAP service)."""


@dataclass(frozen=True)
class FoundService:
    """A TAP service with ObsCore, as the registry describes it."""

    ivoid: str
    tap_url: str
    title: str = ""
    declared: tuple[str, ...] = ()  # how: "datamodel", "utype" or both


def default_registry_url() -> str:
    """pyvo's registry: ``IVOA_REGISTRY`` when set, else its default (GAVO's RegTAP)."""
    return regtap.get_RegTAP_service_url()


def check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"{what} {url!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises for a port that is no number
    except ValueError:
        raise RegistryError(f"{what} {url!r} has a bad port") from None
    return url.rstrip("/")


def find_obscore_services(
    registry_url: str | None = None, *, timeout: float = 30.0
) -> list[FoundService]:
    """The TAP services with ObsCore that the registry lists, in either form, once each
    (by access URL), sorted by ivoid. Raises :class:`RegistryError` when it cannot ask."""
    url = check_url(registry_url or default_registry_url(), "registry")
    session = ServiceSession(None, [url], timeout=(timeout, timeout))
    service = TapService(url, session)
    found: dict[str, FoundService] = {}
    for form, adql in ((DATAMODEL, BY_DATAMODEL), (UTYPE, BY_UTYPE)):
        for ivoid, title, access_url in _ask(service, url, adql):
            _merge(found, FoundService(ivoid, access_url, title, (form,)))
    return sorted(found.values(), key=lambda s: (s.ivoid, s.tap_url))


def _merge(found: dict[str, FoundService], new: FoundService) -> None:
    key = new.tap_url.rstrip("/").lower()
    old = found.get(key)
    if old is None:
        found[key] = new
    elif new.declared[0] not in old.declared:
        found[key] = FoundService(old.ivoid, old.tap_url, old.title, old.declared + new.declared)


def _ask(service: TapService, url: str, adql: str) -> list[tuple[str, str, str]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # VOTable pedantry is not the user's to fix
            table = service.run_sync(adql).to_table()
    except DALQueryError as exc:
        raise RegistryError(f"registry {url} cannot run RegTAP queries: {one_line(exc)}") from None
    except (DALAccessError, requests.RequestException, OSError) as exc:
        raise RegistryError(f"registry {url} could not be asked: {_why(exc)}") from None
    rows = []
    names = [c.lower() for c in table.colnames]  # some services shout their column names
    for row in table:
        values = dict(zip(names, (_text(row[c]) for c in table.colnames), strict=True))
        access_url = values["access_url"].strip()
        if urlsplit(access_url).scheme in ("http", "https"):
            rows.append((values["ivoid"].lower(), values["res_title"], access_url))
        else:
            log.debug("%s: TAP access URL %r skipped", values["ivoid"], access_url)
    return rows


def _text(value: object) -> str:
    if value is None or getattr(value, "mask", False) is True:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _why(exc: BaseException) -> str:
    text = one_line(exc)
    if "refused" in text.lower():
        return "connection refused"
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return f"HTTP {code} (is it the TAP URL of a RegTAP service?)"
    return text


def service_names(tap_urls: Sequence[str]) -> list[str]:
    """A short name per service (``obsharvest.net.archive.name_of``: ``dc-g-vo-org``,
    ``127-0-0-1-8765``), unique within the list (``-2``, ``-3`` for a host serving
    several)."""
    out: list[str] = []
    for url in tap_urls:
        base = name_of(url)
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}-{n}"
        out.append(name)
    return out
