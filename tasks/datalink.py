"""Datalink: from an ObsCore ``access_url`` to the signed URL of the file (``#this``).

The seed tutorial calls ``DatalinkResults.from_result_url`` once per row. Here the IDs of
unique images are resolved in batches (several IDs per POST, DataLink 1.1) on a bounded
thread pool, falling back to one ID per request for services that answer only one.
pyvo traps avoided (NOTES.md): ``iter_datalinks()`` breaks on the RSP's descriptor, and
``bysemantics('#this')`` fetches a vocabulary from the internet, so the ``semantics``
column is filtered directly; ``from_result_url`` does not check the HTTP status, so the
requests are made here and checked before the VOTable is parsed.
"""

from __future__ import annotations

import io
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests
from astropy.io.votable import parse as parse_votable
from pyvo.dal.adhoc import DatalinkResults

from .crashpoints import crashpoint
from .redact import redact, strip_query
from .retry import RetryPolicy, TransientError, one_line

log = logging.getLogger(__name__)
THIS = "#this"


class DatalinkAuthError(Exception):
    """The Datalink service refused our credentials: a configuration problem, not per image."""


@dataclass(frozen=True)
class AccessLink:
    """Where to download one image now. The URL is signed and short-lived: never persist it."""

    key: str  # the image this is for (obs_publisher_did)
    url: str | None = None
    content_length: int | None = None
    content_type: str | None = None
    error: str | None = None  # why there is no URL (error_message row, no #this, ...)
    resolved_at: float = 0.0
    soda_url: str | None = None  # the #cutout row's SODA sync endpoint, if offered
    soda_id: str | None = None  # the ID to send it


SODA_SYNC = "ivo://ivoa.net/std/SODA#sync-1.0"
CUTOUT = "#cutout"


def _soda_services(results: DatalinkResults) -> dict[str, tuple[str, str | None]]:
    """SODA sync descriptors of a Datalink reply: resource ID → (accessURL, fixed ID value)."""
    services = {}
    for resource in results.votable.resources:
        if resource.type != "meta" or resource.utype != "adhoc:service":
            continue
        params = {p.name: p for p in resource.params}
        standard = str(params["standardID"].value) if "standardID" in params else ""
        if not standard.startswith(SODA_SYNC) or "accessURL" not in params:
            continue
        fixed = None
        for group in resource.groups:
            if group.name == "inputParams":
                for param in group.entries:
                    if getattr(param, "name", "").upper() == "ID" and not getattr(
                        param, "ref", None
                    ):
                        value = param.value
                        fixed = value.decode() if isinstance(value, bytes) else (str(value) or None)
        services[resource.ID or ""] = (str(params["accessURL"].value), fixed)
    return services


def split_access_url(access_url: str) -> tuple[str, str]:
    """``https://host/api/datalink/links?ID=butler%3A//dp02/x`` → (endpoint, ID)."""
    parts = urlsplit(access_url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    ids = [v for k, v in params if k.upper() == "ID"]
    if len(ids) != 1:
        raise ValueError(f"access_url {strip_query(access_url)} does not carry exactly one ID")
    rest = [(k, v) for k, v in params if k.upper() != "ID"]
    if rest:  # keep other parameters (e.g. RESPONSEFORMAT) as part of the endpoint
        from urllib.parse import urlencode

        return urlunsplit(parts._replace(query=urlencode(rest))), ids[0]
    return urlunsplit(parts._replace(query="")), ids[0]


def _links_from(
    results: DatalinkResults, wanted: Sequence[str], now: float
) -> dict[str, AccessLink]:
    table = results.to_table()
    soda = _soda_services(results)
    by_id: dict[str, list] = defaultdict(list)
    for row in table:
        by_id[str(row["ID"])].append(row)
    out = {}
    for ident in wanted:
        rows = by_id.get(ident)
        if not rows:
            continue
        this = [r for r in rows if str(r["semantics"]) == THIS and str(r["access_url"] or "")]
        errors = [
            str(r["error_message"])
            for r in rows
            if "error_message" in table.colnames
            and str(r["error_message"] or "").strip()
            and str(r["error_message"]) != "--"
        ]
        if this:
            row = this[0]
            length = row["content_length"] if "content_length" in table.colnames else None
            try:
                length = int(length) if length is not None and str(length) != "--" else None
            except (TypeError, ValueError):
                length = None
            ctype = str(row["content_type"]) if "content_type" in table.colnames else None
            soda_url = soda_id = None
            cutouts = [r for r in rows if str(r["semantics"]) == CUTOUT]
            if cutouts and "service_def" in table.colnames:
                service = soda.get(str(cutouts[0]["service_def"]))
                if service is not None:
                    soda_url, soda_id = service[0], service[1] or ident
            out[ident] = AccessLink(
                ident, str(row["access_url"]), length, ctype, None, now, soda_url, soda_id
            )
        elif errors:
            message = " ".join(redact(errors[0]).split())  # one line, whatever was sent
            if len(message) > 300:
                message = message[:299] + "…"
            out[ident] = AccessLink(ident, error=f"Datalink: {message}", resolved_at=now)
        else:
            out[ident] = AccessLink(
                ident, error="Datalink: no #this link for this ID", resolved_at=now
            )
    return out


class DatalinkResolver:
    """Resolves IDs against one or more Datalink endpoints, batching where it can."""

    def __init__(
        self,
        session: requests.Session,
        *,
        batch_size: int = 50,
        workers: int = 8,
        retry: RetryPolicy | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.session = session
        self.batch_size = max(1, batch_size)
        self.workers = max(1, workers)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._single_id: set[str] = set()  # endpoints that answered only one ID per request

    def _fetch(self, endpoint: str, ids: Sequence[str]) -> DatalinkResults:
        def once() -> DatalinkResults:
            if len(ids) == 1:
                reply = self.session.get(endpoint, params={"ID": ids[0]}, timeout=self.timeout)
            else:
                reply = self.session.post(
                    endpoint, data=[("ID", i) for i in ids], timeout=self.timeout
                )
            if reply.status_code in (401, 403):
                raise DatalinkAuthError(
                    f"Datalink {strip_query(endpoint)} refused the request ({reply.status_code}): "
                    "check the access token"
                )
            if reply.status_code == 429 or reply.status_code >= 500:
                after = reply.headers.get("Retry-After")
                raise TransientError(
                    f"Datalink answered {reply.status_code}",
                    float(after) if after and after.isdigit() else None,
                )
            where = strip_query(endpoint)
            ctype = reply.headers.get("Content-Type", "").split(";")[0].strip() or "no type"
            if reply.status_code >= 400:
                said = "" if "html" in ctype else f": {' '.join(reply.text[:200].split())}"
                raise ValueError(f"Datalink {where} answered {reply.status_code}{said}")
            crashpoint("datalink")
            try:
                votable = parse_votable(io.BytesIO(reply.content))
                return DatalinkResults(votable, url=endpoint, session=self.session)
            except Exception as exc:  # HTML error page, truncated body: try again
                raise TransientError(
                    f"Datalink {where} answered {ctype}, not a VOTable: {one_line(exc)}"
                ) from None

        return self.retry.call(once, f"Datalink {strip_query(endpoint)}")

    def _resolve_batch(self, endpoint: str, ids: Sequence[str]) -> dict[str, AccessLink]:
        now = time.time()
        try:
            if endpoint in self._single_id or len(ids) == 1:
                out = {}
                for ident in ids:
                    out.update(_links_from(self._fetch(endpoint, [ident]), [ident], time.time()))
            else:
                out = _links_from(self._fetch(endpoint, ids), ids, now)
                missing = [i for i in ids if i not in out]
                if missing:  # an older service answered only the first ID
                    self._single_id.add(endpoint)
                    for ident in missing:
                        out.update(
                            _links_from(self._fetch(endpoint, [ident]), [ident], time.time())
                        )
        except DatalinkAuthError:
            raise
        except Exception as exc:  # retries exhausted: every image of the batch fails, with why
            reason = f"Datalink failed: {one_line(exc)}"
            return {i: AccessLink(i, error=reason, resolved_at=now) for i in ids}
        for ident in ids:
            out.setdefault(
                ident,
                AccessLink(ident, error="Datalink: ID missing from the reply", resolved_at=now),
            )
        return out

    def resolve(self, access_urls: Mapping[str, str]) -> dict[str, AccessLink]:
        """``{image key: ObsCore access_url}`` → ``{image key: AccessLink}``."""
        by_endpoint: dict[str, list[tuple[str, str]]] = defaultdict(list)
        result: dict[str, AccessLink] = {}
        for key, access_url in access_urls.items():
            try:
                endpoint, ident = split_access_url(access_url)
            except ValueError as exc:
                result[key] = AccessLink(key, error=str(exc))
                continue
            by_endpoint[endpoint].append((key, ident))
        jobs = []
        for endpoint, pairs in by_endpoint.items():
            for start in range(0, len(pairs), self.batch_size):
                jobs.append((endpoint, pairs[start : start + self.batch_size]))
        if not jobs:
            return result
        with ThreadPoolExecutor(
            min(self.workers, len(jobs)), thread_name_prefix="datalink"
        ) as pool:
            futures = [
                (pairs, pool.submit(self._resolve_batch, endpoint, [i for _, i in pairs]))
                for endpoint, pairs in jobs
            ]
            for pairs, future in futures:
                links = future.result()
                for key, ident in pairs:
                    result[key] = replace(links[ident], key=key)
        return result
