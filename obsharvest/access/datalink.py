"""Datalink: from an ObsCore row to the (often signed) URL of the file (``#this``).

The seed tutorial calls ``DatalinkResults.from_result_url`` once per row. Here a row's
Datalink is asked through a :class:`LinkRequest`: the TAP result's service descriptor and
the row's ID (batchable), the links endpoint and ID of an ``access_url`` that carries
exactly one ``ID`` (the RSP's shape; DataLink's ``{links}`` endpoint takes several IDs,
so batchable too), or any other Datalink ``access_url`` used exactly as given, redirects
followed (GAVO DaCHS's product URLs). Batches go out several IDs per POST (DataLink 1.1)
on a bounded thread pool. A multi-ID reply is never trusted to cover every ID asked
(some services answer only the first): the IDs it left out are asked again, in requests
no larger than what the service did answer, and that size sticks for the endpoint. Reply
rows are grouped by their ``ID`` column whatever their order.
Each ID's SODA service, if any, is the service descriptor (recognised by its SODA
standardID) that one of its rows names in ``service_def``, whatever that row's semantics:
the RSP's ``#cutout``, GAVO DaCHS' ``#proc``.
pyvo traps avoided: ``iter_datalinks()`` breaks on the RSP's descriptor, and
``bysemantics('#this')`` fetches a vocabulary from the internet, so the ``semantics``
column is filtered directly; ``from_result_url`` does not check the HTTP status, so the
requests are made here and checked before the VOTable is parsed.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import requests
from astropy.io.votable import parse as parse_votable
from pyvo.dal.adhoc import DatalinkResults

from obsharvest.access.kinds import (
    LinkRequest,
    ServiceDescriptor,
    link_request,
    service_descriptors,
)
from obsharvest.errors import DatalinkAuthError, RefusedError, TransientError, status_is_transient
from obsharvest.models import AccessLink
from obsharvest.net.redact import redact, strip_query
from obsharvest.net.replies import refused, said_by
from obsharvest.net.retry import RetryPolicy, interpreter_race, one_line
from obsharvest.runtime import stopping, workers
from obsharvest.runtime.crashpoints import crashpoint

log = logging.getLogger(__name__)
THIS = "#this"


def _token_sent(session, url: str) -> bool:
    check = getattr(session, "token_sent_to", None)
    return bool(check(url)) if check else False


CUTOUT = "#cutout"


@dataclass(frozen=True)
class SodaLink:
    """The SODA service a Datalink document offers for one ID: where, with which ID, how."""

    url: str  # the descriptor's accessURL with its fixed input params
    ident: str
    shape: str  # CIRCLE, POS or POLYGON (ServiceDescriptor.soda_shape)


def _soda_descriptors(results: DatalinkResults) -> dict[str, ServiceDescriptor]:
    """The document's SODA service descriptors by RESOURCE ID (what ``service_def``
    names; a descriptor without one cannot be named), recognised by their standardID,
    not by the semantics of the rows pointing at them: the RSP points ``#cutout`` rows
    at ``cutout-sync``, GAVO DaCHS a ``#proc`` row at ``procsvc``; both declare
    ``ivo://ivoa.net/std/SODA#sync-1.0``."""
    found: dict[str, ServiceDescriptor] = {}
    for descriptor in service_descriptors(results.votable):
        if descriptor.soda and descriptor.access_url and descriptor.resource_id:
            found.setdefault(descriptor.resource_id, descriptor)
    return found


def _soda_for(
    rows: Sequence, columns: Sequence[str], soda: Mapping[str, ServiceDescriptor], ident: str
) -> SodaLink | None:
    """The SODA service for one ID's rows: the descriptor a row's ``service_def`` names,
    whatever the row's semantics (a ``#cutout`` row before others, sync before async).
    A descriptor no row names is not guessed at: the RSP offers no cutouts of raws, and a
    multi-ID document's descriptor may carry another dataset's ID. Only sync is used:
    SODA async is a UWS job per cutout.

    The ID to send is the descriptor's own ``ID`` value (DaCHS, the RSP), else the value
    of the column its ``ref`` names in the row that points at it, else the ID asked.
    """
    if "service_def" not in columns:
        return None
    named = [
        (row, soda[_cell(row, "service_def")]) for row in rows if _cell(row, "service_def") in soda
    ]
    named.sort(key=lambda pair: (pair[1].soda != "sync", _cell(pair[0], "semantics") != CUTOUT))
    for row, descriptor in named:
        if descriptor.soda != "sync":
            log.debug("SODA %s is async only: not used", strip_query(descriptor.access_url))
            continue
        value = descriptor.id_value
        if not value and descriptor.id_column and descriptor.id_column in columns:
            value = _cell(row, descriptor.id_column) or None
        return SodaLink(descriptor.endpoint, value or ident, descriptor.soda_shape)
    return None


def _cell(row, column: str) -> str:
    """A text cell, ``""`` when empty or masked (astropy prints a masked cell as ``--``)."""
    value = row[column]
    return "" if value is None or value is np.ma.masked else str(value).strip()


def _plain_rows(table) -> list[dict]:
    """The reply's rows as dicts of plain values (a masked cell: None), each column
    converted once: a cell read through astropy's ``Row`` and ``numpy.ma`` costs tens of
    microseconds, a fifteenth of a latency-bound harvest's client CPU (py-spy)."""
    names = table.colnames
    columns = [
        [v.decode() if isinstance(v, bytes) else v for v in table[name].tolist()] for name in names
    ]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _links_from(
    results: DatalinkResults, wanted: Sequence[str | None], now: float
) -> dict[str | None, AccessLink]:
    """Links by the ID asked. With one ID asked (or None: a URL used as given), a reply
    whose rows all carry one other ID string (a service normalising it) is that ID's."""
    table = results.to_table()
    soda = _soda_descriptors(results)
    by_id: dict[str | None, list] = defaultdict(list)
    for row in _plain_rows(table):
        by_id[_cell(row, "ID")].append(row)
    if len(wanted) == 1 and wanted[0] not in by_id and len(by_id) == 1:
        by_id[wanted[0]] = next(iter(by_id.values()))
    out: dict[str | None, AccessLink] = {}
    for ident in wanted:
        rows = by_id.get(ident)
        if not rows:
            continue
        this = [r for r in rows if _cell(r, "semantics") == THIS and _cell(r, "access_url")]
        errors = [
            _cell(r, "error_message")
            for r in rows
            if "error_message" in table.colnames and _cell(r, "error_message")
        ]
        if this:
            row = this[0]
            length = row["content_length"] if "content_length" in table.colnames else None
            try:
                length = int(length) if length is not None else None
            except (TypeError, ValueError):
                length = None
            ctype = (
                (_cell(row, "content_type") or None) if "content_type" in table.colnames else None
            )
            service = _soda_for(rows, table.colnames, soda, ident or _cell(row, "ID"))
            out[ident] = AccessLink(
                ident or "",
                _cell(row, "access_url"),
                length,
                ctype,
                None,
                now,
                service.url if service else None,
                service.ident if service else None,
                soda_shape=service.shape if service else "CIRCLE",
            )
        elif errors:
            message = " ".join(redact(errors[0]).split())  # one line, whatever was sent
            if len(message) > 300:
                message = message[:299] + "…"
            out[ident] = AccessLink(ident or "", error=f"Datalink: {message}", resolved_at=now)
        else:
            out[ident] = AccessLink(
                ident or "", error="Datalink: no #this link for this ID", resolved_at=now
            )
    return out


class DatalinkResolver:
    """Resolves link requests against Datalink endpoints, batching where it can."""

    def __init__(
        self,
        session: requests.Session,
        *,
        batch_size: int = 50,
        workers: int = 8,
        retry: RetryPolicy | None = None,
        timeout: float | tuple[float, float] = (10.0, 120.0),
    ) -> None:
        self.session = session
        self.batch_size = max(1, batch_size)
        self.workers = max(1, workers)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._limits: dict[str, int] = {}  # IDs per request a service has shown it answers
        self._limits_lock = threading.Lock()

    def ids_per_request(self, endpoint: str) -> int:
        with self._limits_lock:
            return self._limits.get(endpoint, self.batch_size)

    def _learn_limit(self, endpoint: str, answered: int) -> None:
        with self._limits_lock:
            current = self._limits.get(endpoint, self.batch_size)
            self._limits[endpoint] = max(1, min(current, answered))

    def _fetch(self, endpoint: str, ids: Sequence[str | None]) -> DatalinkResults:
        def once() -> DatalinkResults:
            stopping.check()
            if ids == [None]:  # the access_url as given; requests follows redirects
                reply = self.session.get(endpoint, timeout=self.timeout)
            elif len(ids) == 1:
                reply = self.session.get(endpoint, params={"ID": ids[0]}, timeout=self.timeout)
            else:
                reply = self.session.post(
                    endpoint, data=[("ID", i) for i in ids], timeout=self.timeout
                )
            status = reply.status_code
            where = strip_query(endpoint)
            ctype = reply.headers.get("Content-Type", "").split(";")[0].strip() or "no type"
            if status >= 400 and status_is_transient(status):
                after = reply.headers.get("Retry-After")
                raise TransientError(
                    f"Datalink {where} answered {status}",
                    float(after) if after and after.isdigit() else None,
                )
            if status >= 400:  # permanent: the step ends now, with the service's words
                raise refused(
                    "Datalink",
                    reply.url or endpoint,
                    status,
                    reply.reason or "",
                    said_by(reply.content, ctype),
                    token_source=getattr(self.session, "token_source", None),
                    token_sent=_token_sent(self.session, reply.url or endpoint),
                    cls=DatalinkAuthError if status in (401, 403) else RefusedError,
                )
            crashpoint("datalink")
            try:
                votable = parse_votable(io.BytesIO(reply.content))
                return DatalinkResults(votable, url=endpoint, session=self.session)
            except Exception as exc:  # a 2xx that is no VOTable (a login page): permanent
                if interpreter_race(exc):  # not the reply's fault: parse it again
                    raise TransientError(f"Datalink {where}: {one_line(exc)}") from exc
                raise RefusedError(
                    f"Datalink {where} answered {ctype}, not a VOTable: {one_line(exc)}",
                    status=status,
                    url=where,
                ) from None

        return self.retry.call(once, f"Datalink {strip_query(endpoint)}")

    def _ask(self, endpoint: str, ids: Sequence[str | None]) -> dict[str | None, AccessLink]:
        """Links for ``ids``; IDs a multi-ID reply left out are asked again, in requests
        no larger than what the service answered."""
        pending, out = list(ids), {}
        while pending:
            size = self.ids_per_request(endpoint) if pending != [None] else 1
            chunk, pending = pending[:size], pending[size:]
            links = _links_from(self._fetch(endpoint, chunk), chunk, time.time())
            out.update(links)
            missing = [i for i in chunk if i not in links]
            if missing and len(chunk) > 1:  # a service that answers fewer IDs than asked
                answered = len(chunk) - len(missing)
                log.info(
                    "Datalink %s answered %d of %d IDs: asking at most %d per request",
                    strip_query(endpoint),
                    answered,
                    len(chunk),
                    max(1, answered),
                )
                self._learn_limit(endpoint, answered)
                pending = missing + pending
        return out

    def _resolve_batch(
        self, endpoint: str, ids: Sequence[str | None]
    ) -> dict[str | None, AccessLink]:
        now = time.time()
        try:
            out = self._ask(endpoint, ids)
        except DatalinkAuthError:
            raise
        except Exception as exc:  # retries exhausted: every image of the batch fails, with why
            reason = f"Datalink failed: {one_line(exc)}"
            return {i: AccessLink(i or "", error=reason, resolved_at=now) for i in ids}
        for ident in ids:
            out.setdefault(
                ident,
                AccessLink(
                    ident or "", error="Datalink: ID missing from the reply", resolved_at=now
                ),
            )
        return out

    def resolve(self, wanted: Mapping[str, str | LinkRequest]) -> dict[str, AccessLink]:
        """``{image key: LinkRequest or Datalink access_url}`` → ``{image key: AccessLink}``."""
        batched: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
        result: dict[str, AccessLink] = {}
        for key, request in wanted.items():
            if isinstance(request, str):
                try:
                    request = link_request(request)
                except ValueError as exc:
                    result[key] = AccessLink(key, error=str(exc))
                    continue
            batched[request.endpoint].append((key, request.ident))
        jobs = []
        for endpoint, pairs in batched.items():
            singles = [p for p in pairs if p[1] is None]
            many = [p for p in pairs if p[1] is not None]
            jobs += [(endpoint, [p]) for p in singles]
            size = self.ids_per_request(endpoint)
            jobs += [(endpoint, many[i : i + size]) for i in range(0, len(many), size)]
        if not jobs:
            return result

        def ask(job: tuple[str, list[tuple[str, str | None]]]) -> dict[str | None, AccessLink]:
            endpoint, pairs = job
            return self._resolve_batch(endpoint, [ident for _, ident in pairs])

        for (_endpoint, pairs), future in workers.run_all(ask, jobs, self.workers, name="datalink"):
            if future.done() and not future.cancelled():
                links = future.result()
            else:  # the run stopped first
                links = {i: AccessLink(i or "", error=stopping.describe()) for _, i in pairs}
            for key, ident in pairs:
                result[key] = replace(links[ident], key=key)
        return result
