"""ObsCore queries through pyvo: sync or async (UWS) with a deadline, retries, no truncation.

The seed tutorial runs one async query per position and waits with no limit. Here a
query serves many targets (an OR-batch or a TAP_UPLOAD join), transient failures are
retried by ``RetryPolicy``, an async job has an overall deadline (pyvo's ``wait`` has
none), and a result cut at MAXREC (``QUERY_STATUS=OVERFLOW``) is split and re-run until
complete: targets halves first, then time halves for a single busy target.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyvo
import requests
from astropy.io.votable import from_table
from astropy.table import Table, vstack
from pyvo.dal import DALFormatError, DALOverflowWarning, DALQueryError, DALServiceError

from obsharvest.access.kinds import DESCRIPTORS_META, service_descriptors
from obsharvest.errors import (
    NotTapServiceError,
    QueryError,
    ServiceError,
    ServiceRefusedError,
    TransientError,
    status_is_transient,
)
from obsharvest.models import QueryMode, QueryStrategy, Target
from obsharvest.net.redact import strip_query
from obsharvest.net.replies import refused, said_by
from obsharvest.net.retry import RetryPolicy, is_transient, one_line
from obsharvest.query.adql import TARGET_COLUMN, Constraints, obscore_query, upload_query
from obsharvest.runtime import stopping
from obsharvest.runtime.crashpoints import crashpoint
from obsharvest.verify.sregion import circle_meets_regions, pack_regions, point_in_regions

log = logging.getLogger(__name__)

FINAL_PHASES = {"COMPLETED", "ERROR", "ABORTED"}
UWS_PHASES = FINAL_PHASES | {"PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED", "UNKNOWN"}
GEOMETRY_FEATURES = "ivo://ivoa.net/std/TAPRegExt#features-adqlgeo"
UPLOAD_INLINE = "ivo://ivoa.net/std/TAPRegExt#upload-inline"
EARLIEST_MJD, LATEST_MJD = 40000.0, 80000.0  # bounds for splitting an open time range


@dataclass(frozen=True)
class ServiceFeatures:
    """What the service's TAPRegExt capabilities say it can do."""

    intersects: bool = True
    upload: bool = True
    maxrec_hard: int | None = None


def read_tap_capability(session, tap_url: str):
    """The TAP capability (``pyvo.io.vosi.tapregext.TableAccess``) from
    ``{tap_url}/capabilities`` (TAP 1.0 and 1.1 both put VOSI capabilities there).

    Read here rather than through pyvo, which reports every failure of this request as a
    ``DALServiceError`` without a status: a 401 or a 404 would look like a dropped
    connection and be retried. Raises :class:`~obsharvest.errors.ServiceRefusedError` for
    401/403, :class:`~obsharvest.errors.NotTapServiceError` for another 4xx or a reply that is
    no capabilities document with TAP in it, :class:`TransientError` for 429/5xx; a
    transport error propagates as it is (transient too).
    """
    from pyvo.io import vosi
    from pyvo.io.vosi import tapregext

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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pedantic VOSI warnings are not the user's to fix
            capabilities = vosi.parse_capabilities(io.BytesIO(reply.content))
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not this document"
        raise NotTapServiceError(
            f"TAP service {where} answered {status} with {ctype}, not a VOSI capabilities "
            f"document ({type(exc).__name__}); is service.tap_url the TAP service's base URL?",
            status=status,
            url=where,
        ) from None
    for capability in capabilities:
        if isinstance(capability, tapregext.TableAccess):
            return capability
    raise NotTapServiceError(
        f"{where} lists no TAP capability: service.tap_url is not a TAP service",
        status=status,
        url=where,
    )


class TapService(pyvo.dal.TAPService):
    """pyvo's TAP service with the session it was built with in sight (pyvo keeps it to
    itself): the requests pyvo does not make for us (VOSI capabilities read with their real
    status, UWS long polls) go with the same token and timeouts."""

    def __init__(self, baseurl: str, session: requests.Session | None = None) -> None:
        self.session = session if session is not None else requests.Session()
        super().__init__(baseurl, session=self.session)


def session_of(service: pyvo.dal.TAPService) -> requests.Session:
    """The session of a :class:`TapService`; a plain pyvo service gets a fresh one (its
    requests then carry no token: build a TapService to send one)."""
    session = getattr(service, "session", None)
    return session if isinstance(session, requests.Session) else requests.Session()


def _token_sent(session, url: str) -> bool:
    check = getattr(session, "token_sent_to", None)
    return bool(check(url)) if check else "Authorization" in getattr(session, "headers", {})


def probe_features(service: pyvo.dal.TAPService, retry: RetryPolicy) -> ServiceFeatures:
    """Read capabilities once; a service that describes nothing gets the ADQL 2.0 default."""

    def read() -> ServiceFeatures:
        capability = read_tap_capability(session_of(service), str(service.baseurl))
        adql = capability.get_adql()
        forms = (
            {f.form.upper() for f in adql.get_feature_list(GEOMETRY_FEATURES)} if adql else set()
        )
        uploads = {str(m.ivo_id) for m in capability.uploadmethods}
        hard = (
            capability.outputlimit.hard.content
            if capability.outputlimit and capability.outputlimit.hard
            else None
        )
        return ServiceFeatures(
            intersects="INTERSECTS" in forms if forms else True,
            upload=any(u.startswith(UPLOAD_INLINE) for u in uploads),
            maxrec_hard=int(hard) if hard else None,
        )

    return retry.call(read, "reading TAP capabilities")


@dataclass
class QueryOptions:
    mode: QueryMode = "async"
    maxrec: int | None = None  # None: the service default
    deadline: float = 1800.0  # seconds an async job may take before it is aborted
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_wait: float = 5.0  # UWS WAIT per poll (a stopping run waits at most this)


def run_query(
    service: pyvo.dal.TAPService,
    adql: str,
    options: QueryOptions,
    uploads: dict | None = None,
) -> tuple[Table, bool]:
    """Run one query to completion: (rows, overflowed).

    Raises :class:`QueryError` (the query is wrong, with the service's message, or its
    deadline passed) or :class:`ServiceError` (transient failures outlasted
    the retry policy).
    """
    attempts = 0
    bodies = {
        k: votable_upload(v) if isinstance(v, Table) else v for k, v in (uploads or {}).items()
    }

    def once():
        nonlocal attempts
        attempts += 1
        # a fresh file object per attempt: pyvo sends a BytesIO as it is, from where it stands
        sent = {k: io.BytesIO(v) if isinstance(v, bytes) else v for k, v in bodies.items()} or None
        if options.mode == "sync":
            return service.run_sync(adql, maxrec=options.maxrec, uploads=sent)
        return _run_async(service, adql, options, sent)

    describe = f"{options.mode} TAP query"
    try:
        result = options.retry.call(once, describe)
    except Exception as exc:
        if not is_transient(exc):
            raise _permanent(service, options, exc) from None
        raise ServiceError(
            f"{describe} to {strip_query(str(service.baseurl))} failed {attempts} times; "
            f"last: {_reply_problem(exc)}"
        ) from None
    overflow = str(result.status[0]).upper() == "OVERFLOW"
    table = result.to_table()
    table.meta[DESCRIPTORS_META] = [d.to_meta() for d in service_descriptors(result.votable)]
    return table, overflow


def votable_upload(table: Table) -> bytes:
    """``table`` as the VOTable of a TAP_UPLOAD, TABLEDATA written by astropy's Python writer.

    Given a Table, pyvo writes it with ``Table.write(format="votable")``: astropy's C
    writer, which in 8.0.2 and before writes its row's NUL terminator one byte past its
    buffer when a row is exactly 256, 512, 1024... bytes (``tablewriter.c``), corrupting
    the heap; the process then crashes later, anywhere. Same bytes, written in Python. The
    embedded test archive has its own copy: the client shares no code with it.
    """
    buf = io.BytesIO()
    from_table(table).to_xml(buf, tabledata_format="tabledata", _debug_python_based_parser=True)
    return buf.getvalue()


def _permanent(service, options: QueryOptions, exc: BaseException) -> BaseException:
    """A permanent failure of a query, as the error the run ends with: a 4xx becomes a
    :class:`~obsharvest.errors.ServiceRefusedError` with the service's words and a hint, a
    reply that is no VOTable one saying so, a wrong query (pyvo's ``DALQueryError``, with the
    service's message) a :class:`~obsharvest.errors.QueryError`; our own errors stay."""
    if isinstance(exc, DALQueryError):
        return QueryError(f"{options.mode} TAP query refused: {one_line(exc)}")
    session = session_of(service)
    base = strip_query(str(service.baseurl))
    endpoint = f"{base}/{'sync' if options.mode == 'sync' else 'async'}"
    if isinstance(exc, DALServiceError) and exc.code and not isinstance(exc, DALQueryError):
        url = strip_query(str(getattr(exc, "url", None) or endpoint))
        said = " ".join(str(exc).split())
        said = said.removesuffix(f" for {url}").removesuffix(f" for {endpoint}")
        return refused(
            f"{options.mode} TAP query:",
            url,
            exc.code,
            "",
            said_by(said),
            token_source=getattr(session, "token_source", None),
            token_sent=_token_sent(session, url),
            cls=ServiceRefusedError,
        )
    if isinstance(exc, DALFormatError):
        return ServiceRefusedError(
            f"{options.mode} TAP query: {endpoint} answered something that is not a VOTable "
            f"({one_line(exc)}); is service.tap_url the TAP service's base URL?",
            url=endpoint,
        )
    return exc


def _reply_problem(exc: BaseException) -> str:
    """The last failure in one line; a reply that is no VOTable is named as such."""
    text = one_line(exc)
    if isinstance(exc, DALFormatError) and "E19" in text:
        return f"the reply is not a VOTable (an HTML error page?): {text}"
    return text


def _run_async(service, adql: str, options: QueryOptions, uploads: dict | None):
    job = service.submit_job(adql, maxrec=options.maxrec, uploads=uploads)
    session = session_of(service)  # one for every long poll of the job: keep-alive
    try:
        job.run()
        crashpoint("query")
        deadline = time.monotonic() + options.deadline
        while True:
            if stopping.requested():  # the run is stopping: the job is not wanted any more
                job.abort()
                raise stopping.Interrupted(stopping.describe())
            phase = job.phase
            if phase not in UWS_PHASES:  # pyvo gives None for an HTML page: do not poll it
                # pyvo raises for an error status, so this came with 2xx: permanent
                raise ServiceRefusedError(
                    f"TAP job {strip_query(str(job.url))} has no UWS phase "
                    f"(got {str(phase)[:40]!r}): the reply is not a UWS job document; is "
                    "service.tap_url the TAP service's base URL?",
                    url=str(job.url),
                )
            if phase in FINAL_PHASES:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                job.abort()
                raise QueryError(
                    f"TAP job {job.job_id} still {phase} after {options.deadline:.0f} s; aborted"
                )
            try:  # UWS 1.1 blocking: returns when the phase changes or after WAIT seconds
                session.get(
                    job.url,
                    params={"WAIT": int(min(options.poll_wait, remaining)) or 1, "PHASE": phase},
                    # the session's (connect, read), read stretched past WAIT (obsharvest.net.http)
                    timeout=getattr(session, "timeout", None) or options.poll_wait + 30,
                )
            except Exception:  # a failed long poll is harmless: the next phase read retries
                time.sleep(0.5)
        if phase == "ERROR":
            try:
                job.raise_if_error()
            except DALQueryError as exc:
                raise DALQueryError(f"{exc} (job {job.url})") from None
        if phase == "ABORTED":
            raise TransientError(f"TAP job {job.job_id} was aborted by the service")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DALOverflowWarning)  # we read the status ourselves
            return job.fetch_result()
    finally:
        try:
            job.delete()
        except Exception:  # deleting is a courtesy; the service expires jobs anyway
            log.debug("could not delete job %s", getattr(job, "url", "?"))


# -- many targets, complete results ---------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    kind: QueryStrategy = "upload"
    batch_size: int = 50  # targets per OR-batch or upload
    prefilter_radius: float = 0.25  # deg: how far an image centre may lie from a circle's edge


def associate(rows: Table, targets: Sequence[Target], *, intersects: bool) -> Table:
    """Tie each result row to the targets of its query whose position (or circle) it serves.

    A row of an OR-batch may serve several targets, so it is repeated per target. A
    single-target query needs no test unless it came through the centre-distance
    pre-filter (radius target, no INTERSECTS), which only finds candidates. Rows whose
    ``s_region`` cannot be parsed are kept for every target: the WCS check decides.
    """
    if len(rows) == 0:
        return parts_or_empty(rows)
    single = len(targets) == 1
    regions = None
    pieces = []
    for target in targets:
        if single and (not target.radius or intersects):
            keep = np.ones(len(rows), dtype=bool)
        else:
            if regions is None:  # each distinct s_region parsed once for all targets
                regions = pack_regions(rows["s_region"])
            if target.radius:
                hit, unknown = circle_meets_regions(target.ra, target.dec, target.radius, regions)
            else:
                hit, unknown = point_in_regions(target.ra, target.dec, regions)
            keep = hit | unknown
        if keep.any():
            part = rows[keep]
            part[TARGET_COLUMN] = np.array([target.name] * len(part), dtype=str)
            pieces.append(part)
    if not pieces:
        return parts_or_empty(rows)
    return vstack(pieces, metadata_conflicts="silent")


def _upload_table(targets: Sequence[Target]) -> Table:
    return Table(
        {
            "name": np.array([t.name for t in targets], dtype=str),
            "ra": np.array([t.ra for t in targets], dtype=float),
            "dec": np.array([t.dec for t in targets], dtype=float),
            "radius": np.array([t.radius or 0.0 for t in targets], dtype=float),
        }
    )


def query_targets(
    service: pyvo.dal.TAPService,
    targets: Sequence[Target],
    constraints: Constraints,
    strategy: Strategy,
    features: ServiceFeatures,
    options: QueryOptions,
    on_query: Callable[[str], None] | None = None,
) -> Table:
    """All ObsCore rows for ``targets``, each tied to its target by ``obsh_target``."""
    kind = strategy.kind
    if kind == "upload" and not features.upload:
        kind = "batched"
    size = 1 if kind == "per_target" else strategy.batch_size
    tables = []
    for start in range(0, len(targets), size):
        stopping.check()
        chunk = list(targets[start : start + size])
        if kind == "upload":
            for with_radius in (False, True):
                group = [t for t in chunk if bool(t.radius) == with_radius]
                if group:
                    tables.append(
                        _complete(
                            service,
                            group,
                            constraints,
                            strategy,
                            features,
                            options,
                            on_query,
                            upload=True,
                            with_radius=with_radius,
                        )
                    )
        else:
            tables.append(
                _complete(
                    service,
                    chunk,
                    constraints,
                    strategy,
                    features,
                    options,
                    on_query,
                    upload=False,
                    with_radius=False,
                )
            )
    tables = [t for t in tables if len(t)]
    if not tables:
        return Table()
    rows = vstack(tables, metadata_conflicts="silent")
    return _unique_pairs(rows)


def _unique_pairs(rows: Table) -> Table:
    """Drop repeats of a (target, image) pair (time splits overlap at their boundary)."""
    key = [
        f"{t}\x00{d}" for t, d in zip(rows[TARGET_COLUMN], rows["obs_publisher_did"], strict=True)
    ]
    _, first = np.unique(np.array(key, dtype=object), return_index=True)
    return rows[np.sort(first)]


def _complete(
    service,
    targets,
    constraints,
    strategy,
    features,
    options,
    on_query,
    *,
    upload: bool,
    with_radius: bool,
) -> Table:
    """Query until nothing was cut off by MAXREC: split targets, then time."""
    if upload:
        adql = upload_query(
            constraints,
            with_radius=with_radius,
            intersects=features.intersects,
            prefilter_radius=strategy.prefilter_radius,
        )
        uploads = {"targets": _upload_table(targets)}
    else:
        adql = obscore_query(
            targets,
            constraints,
            intersects=features.intersects,
            prefilter_radius=strategy.prefilter_radius,
        )
        uploads = None
    if on_query:
        on_query(adql)
    rows, overflow = run_query(service, adql, options, uploads)
    if not overflow:
        if upload:
            return _refine_upload(rows, targets, features)
        return associate(rows, targets, intersects=features.intersects)

    def again(subset, narrower: Constraints) -> Table:
        return _complete(
            service,
            subset,
            narrower,
            strategy,
            features,
            options,
            on_query,
            upload=upload,
            with_radius=with_radius,
        )

    if len(targets) > 1:
        half = len(targets) // 2
        log.info("MAXREC overflow for %d targets: splitting", len(targets))
        return _joined(
            rows, [again(targets[:half], constraints), again(targets[half:], constraints)]
        )
    lo = constraints.t_min if constraints.t_min is not None else EARLIEST_MJD
    hi = constraints.t_max if constraints.t_max is not None else LATEST_MJD
    if hi - lo < 1e-5:
        raise QueryError(
            f"target {targets[0].name!r}: more than MAXREC={len(rows)} images within one second "
            "of time; raise maxrec"
        )
    mid = (lo + hi) / 2
    log.info("MAXREC overflow for %s: splitting time %.5f-%.5f", targets[0].name, lo, hi)
    return _joined(
        rows,
        [
            again(targets, constraints.with_time(lo, mid)),
            again(targets, constraints.with_time(mid, hi)),
        ],
    )


def _joined(rows: Table, parts: list[Table]) -> Table:
    parts = [p for p in parts if len(p)]
    return vstack(parts, metadata_conflicts="silent") if parts else parts_or_empty(rows)


def parts_or_empty(rows: Table) -> Table:
    out = rows[:0].copy()
    if TARGET_COLUMN not in out.colnames:
        out[TARGET_COLUMN] = np.array([], dtype=str)
    return out


def _refine_upload(rows: Table, targets: Sequence[Target], features: ServiceFeatures) -> Table:
    """Upload joins tie rows to targets already; radius targets on a service without
    INTERSECTS came through a centre-distance pre-filter and are decided exactly here."""
    if len(rows) == 0 or features.intersects or not any(t.radius for t in targets):
        return rows
    by_name = {t.name: t for t in targets}
    ra, dec, radius = (np.zeros(len(rows)) for _ in range(3))
    check = np.zeros(len(rows), dtype=bool)
    for i, name in enumerate(rows[TARGET_COLUMN]):
        target = by_name.get(str(name))
        if target is not None and target.radius:
            ra[i], dec[i], radius[i], check[i] = target.ra, target.dec, target.radius, True
    keep = ~check
    if check.any():
        hit, unknown = circle_meets_regions(
            ra[check], dec[check], radius[check], pack_regions(rows["s_region"][check])
        )
        keep[check] = hit | unknown
    return rows[keep]
