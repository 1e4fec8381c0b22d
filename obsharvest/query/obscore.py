"""ObsCore queries through pyvo: sync or async (UWS) with a deadline, retries, no truncation.

The seed tutorial runs one async query per position and waits with no limit. Here a
query serves many targets (an OR-batch or a TAP_UPLOAD join), transient failures are
retried by ``RetryPolicy``, an async job has an overall deadline (pyvo's ``wait`` has
none), and a result cut at MAXREC (``QUERY_STATUS=OVERFLOW``) is split and re-run until
complete: targets halves first, then time halves for a single busy target.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyvo
from astropy.io.votable import from_table
from astropy.table import Table, vstack
from pyvo.dal import DALFormatError, DALOverflowWarning, DALQueryError, DALServiceError

from obsharvest.access.kinds import DESCRIPTORS_META, service_descriptors
from obsharvest.cells import texts
from obsharvest.errors import (
    QueryError,
    ServiceError,
    ServiceRefusedError,
    TransientError,
)
from obsharvest.models import QueryMode, QueryStrategy, Target
from obsharvest.net.redact import strip_query
from obsharvest.net.replies import refused, said_by
from obsharvest.net.retry import RetryPolicy, http_status, is_transient, one_line
from obsharvest.query.adql import TARGET_COLUMN, Constraints, obscore_query, upload_query
from obsharvest.query.capabilities import ServiceFeatures
from obsharvest.query.service import session_of
from obsharvest.query.shapes import Shape, ShapeMemory, may_be_the_shape, simpler
from obsharvest.runtime import stopping, workers
from obsharvest.runtime.crashpoints import crashpoint
from obsharvest.verify.sregion import circle_meets_regions, pack_rows, point_in_regions

log = logging.getLogger(__name__)

FINAL_PHASES = {"COMPLETED", "ERROR", "ABORTED"}
UWS_PHASES = FINAL_PHASES | {"PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED", "UNKNOWN"}
EARLIEST_MJD, LATEST_MJD = 40000.0, 80000.0  # bounds for splitting an open time range


def _token_sent(session, url: str) -> bool:
    check = getattr(session, "token_sent_to", None)
    return bool(check(url)) if check else "Authorization" in getattr(session, "headers", {})


@dataclass
class QueryOptions:
    mode: QueryMode = "async"
    maxrec: int | None = None  # None: the service default
    deadline: float = 1800.0  # seconds an async job may take before it is aborted
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_wait: float = 5.0  # UWS WAIT per poll (a stopping run waits at most this)
    # the query shapes each service could not run, learnt once per run (query.shapes)
    shapes: ShapeMemory = field(default_factory=ShapeMemory, compare=False, repr=False)
    # the services found without async (UWS), learnt once per run: their queries go sync
    sync_only: SyncOnly = field(default_factory=lambda: SyncOnly(), compare=False, repr=False)


class SyncOnly:
    """The TAP services of a run that have no async endpoint (thread-safe, like
    :class:`~obsharvest.query.shapes.ShapeMemory`; a Dask worker learns on its own).

    TAP 1.1 asks for ``/async``, but sync-only services exist: job creation answers 404 or
    405. With ``query.mode: async`` such a service is then asked sync for the rest of the
    run (the rows are the same), said once in one warning line.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: set[str] = set()

    def __getstate__(self) -> dict:
        return {"_services": set(self._services)}

    def __setstate__(self, state: dict) -> None:
        self._services = state["_services"]
        self._lock = threading.Lock()

    def __contains__(self, service: str) -> bool:
        with self._lock:
            return service in self._services

    def learn(self, service: str, status: int) -> None:
        with self._lock:
            if service in self._services:
                return
            self._services.add(service)
        log.warning(
            "%s has no async (UWS) endpoint (job creation answered %d): "
            "its queries go sync for the rest of the run",
            service,
            status,
        )


class _NoAsync(Exception):
    """Job creation answered 404/405: the service has no ``/async``."""

    def __init__(self, refusal: DALServiceError) -> None:
        super().__init__(f"no async endpoint (HTTP {refusal.code})")
        self.refusal = refusal
        self.status = int(refusal.code)


def _no_endpoint(exc: BaseException) -> bool:
    """A 404/405 for the request itself (not a query error): nothing takes it there."""
    return (
        isinstance(exc, DALServiceError)
        and not isinstance(exc, DALQueryError)
        and exc.code in (404, 405)
    )


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

    base = strip_query(str(service.baseurl)).rstrip("/")

    def fresh() -> dict | None:
        # a fresh file object per request: pyvo sends a BytesIO as it is, from where it stands
        return {k: io.BytesIO(v) if isinstance(v, bytes) else v for k, v in bodies.items()} or None

    def mode() -> str:
        return "sync" if options.mode == "sync" or base in options.sync_only else "async"

    def sync():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DALOverflowWarning)  # we read the status ourselves
            # pyvo sends sync queries by POST (TAPQuery.submit), which POST-only services need
            return service.run_sync(adql, maxrec=options.maxrec, uploads=fresh())

    def once():
        nonlocal attempts
        attempts += 1
        if mode() == "sync":
            return sync()
        try:
            return _run_async(service, adql, options, fresh())
        except _NoAsync as missing:
            try:
                result = sync()
            except Exception as exc:
                if _no_endpoint(exc):  # no sync either: the async refusal is the news
                    raise missing.refusal from None
                options.sync_only.learn(base, missing.status)
                raise
            options.sync_only.learn(base, missing.status)
            return result

    try:  # each attempt in a daemon thread waited on with the stop: a reply the service
        # never finishes would hold the task's thread, and Prefect's task runner waits for
        # its threads when the flow ends (a stopped run past its summary, still waiting)
        result = options.retry.call(
            lambda: workers.call(once, name="tap-query"), f"{mode()} TAP query"
        )
    except Exception as exc:
        if not is_transient(exc):
            raise _permanent(service, mode(), exc) from None
        raise ServiceError(
            f"{mode()} TAP query to {base} failed {attempts} times; last: {_reply_problem(exc)}",
            status=http_status(exc),
            url=base,
        ) from None
    overflow = overflowed(result)
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


def overflowed(result) -> bool:
    """Whether the service cut the result at MAXREC (``QUERY_STATUS=OVERFLOW``).

    DALI lets the status stand before the table, after it (alone, or as a second INFO
    after an ``OK``), or inside the TABLE after its DATA. pyvo reads the last status of the
    results RESOURCE, and looks into the table only when the RESOURCE has none; an
    ``OVERFLOW`` anywhere in the document counts here, so no placement hides a cut.
    """
    if str(result.status[0]).upper() == "OVERFLOW":
        return True
    return any(
        str(info.name).upper() == "QUERY_STATUS" and str(info.value).upper() == "OVERFLOW"
        for info in result.votable.iter_info()
    )


def _permanent(service, mode: str, exc: BaseException) -> BaseException:
    """A permanent failure of a query, as the error the run ends with: a 4xx becomes a
    :class:`~obsharvest.errors.ServiceRefusedError` with the service's words and a hint, a
    reply that is no VOTable one saying so, a wrong query (pyvo's ``DALQueryError``, with the
    service's message) a :class:`~obsharvest.errors.QueryError`; our own errors stay.

    The service's words are quoted on one line whatever shape they came in (a DALI error
    VOTable, plain text, the repr of a Python dict, an async job's error summary)."""
    if isinstance(exc, DALQueryError):
        words = said_by(str(exc).removeprefix("Query Error:").strip()) or "no reason given"
        where = f" (job {strip_query(str(exc.url))})" if mode == "async" and exc.url else ""
        return QueryError(f"{mode} TAP query refused: {words}{where}")
    session = session_of(service)
    base = strip_query(str(service.baseurl))
    endpoint = f"{base}/{mode}"
    if isinstance(exc, DALServiceError) and exc.code and not isinstance(exc, DALQueryError):
        url = strip_query(str(getattr(exc, "url", None) or endpoint))
        said = " ".join(str(exc).split())
        said = said.removesuffix(f" for {url}").removesuffix(f" for {endpoint}")
        return refused(
            f"{mode} TAP query:",
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
            f"{mode} TAP query: {endpoint} answered something that is not a VOTable "
            f"({one_line(exc)}); is service.tap_url the TAP service's base URL?",
            url=endpoint,
        )
    return exc


def _reply_problem(exc: BaseException) -> str:
    """The last failure in one line; a reply that is no VOTable is named as such, an error
    status with the service's words (plain text or a dict's repr, unwrapped)."""
    text = one_line(exc)
    if isinstance(exc, DALFormatError) and "E19" in text:
        return f"the reply is not a VOTable (an HTML error page?): {text}"
    if isinstance(exc, DALServiceError) and exc.code and not isinstance(exc, DALQueryError):
        said = " ".join(str(exc).split()).removesuffix(f" for {exc.url}")
        if words := said_by(said):
            return f"HTTP {exc.code}: {words}"
    return text


def _run_async(service, adql: str, options: QueryOptions, uploads: dict | None):
    """One async (UWS) query.

    The job is created running: ``PHASE=RUN`` in the creating POST (TAP, UWS) saves the
    ``POST .../phase`` and its redirect, two round trips of every query. A service that
    leaves it ``PENDING`` anyway is sent that POST. A job may already be final when it
    is first read (some services run it inside the request that starts it): that read
    then ends the wait. The job is deleted in the background (:func:`_delete_later`).
    """
    try:
        job = service.submit_job(adql, maxrec=options.maxrec, uploads=uploads, phase="RUN")
    except DALServiceError as exc:
        if _no_endpoint(exc):
            raise _NoAsync(exc) from None
        raise
    session = session_of(service)  # one for every long poll of the job: keep-alive
    try:
        crashpoint("query")
        deadline = time.monotonic() + options.deadline
        started = False
        while True:
            if stopping.requested():  # the run is stopping: the job is not wanted any more
                job.abort()
                raise stopping.Interrupted(stopping.describe())
            phase = job.phase
            if phase == "PENDING" and not started:  # PHASE=RUN at creation was not heard
                job.run()
                started = True
                continue
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
            wait = int(min(options.poll_wait, remaining)) or 1
            try:  # UWS 1.1 blocking: returns when the phase changes or after WAIT seconds;
                # waited on with the stop, so a stopping run aborts the job at once
                workers.call(
                    functools.partial(
                        session.get,
                        job.url,
                        params={"WAIT": wait, "PHASE": phase},
                        # the session's (connect, read), read stretched past WAIT (net.http)
                        timeout=getattr(session, "timeout", None) or options.poll_wait + 30,
                    ),
                    name="uws-poll",
                    grace=0.0,
                )
            except stopping.Interrupted:
                continue  # the loop's stop check aborts the job
            except Exception:  # a failed long poll is harmless: the next phase read retries
                time.sleep(0.5)
        if phase == "ERROR":
            try:
                job.raise_if_error()
            except DALQueryError as exc:
                raise DALQueryError(_job_error(job, session, str(exc)), url=job.url) from None
        if phase == "ABORTED":
            raise TransientError(f"TAP job {job.job_id} was aborted by the service")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DALOverflowWarning)  # we read the status ourselves
            return job.fetch_result()
    finally:
        _delete_later(session, str(job.url))


def _delete_later(session, url: str) -> None:
    """Delete a finished job without waiting for it: a courtesy (services expire jobs),
    not worth the query's time. The DELETE's redirect (to the whole job list) is not
    followed; the thread ends with the session's timeout at the latest."""

    def delete() -> None:
        try:
            session.delete(
                url, allow_redirects=False, timeout=getattr(session, "timeout", None) or 30
            )
        except Exception:  # noqa: BLE001 - the service expires the job anyway
            log.debug("could not delete job %s", strip_query(url))

    threading.Thread(target=delete, name="uws-delete", daemon=True).start()


def _job_error(job, session, summary: str) -> str:
    """The job's error in the service's words: its UWS error summary, or, when that says
    nothing, its error document (a DALI VOTable or, on some services, plain text)."""
    if summary.removeprefix("Query Error:").strip() not in ("", "<No useful error from server>"):
        return summary
    try:
        reply = session.get(f"{job.url}/error", timeout=getattr(session, "timeout", None) or 30)
    except Exception:  # noqa: BLE001 - the summary, empty as it is, is still the answer
        return summary
    said = said_by(reply.content, reply.headers.get("Content-Type", "")) if reply.ok else ""
    return said.removeprefix("Query Error:").strip() or summary


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
                regions = pack_rows(rows)
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
    """All ObsCore rows for ``targets``, each tied to its target by ``obsh_target``.

    The richest shape the strategy and the service allow is tried first; a shape the
    service cannot run is replaced by a simpler one (:mod:`obsharvest.query.shapes`).
    """
    wanted = Shape(
        upload=strategy.kind == "upload" and features.upload,
        size=1 if strategy.kind == "per_target" else max(1, strategy.batch_size),
        intersects=features.intersects,
    )
    shape = options.shapes.start(str(service.baseurl), wanted)
    tables = []
    for start in range(0, len(targets), shape.size):
        stopping.check()
        chunk = list(targets[start : start + shape.size])
        tables.append(
            _shaped(service, chunk, constraints, strategy, features, options, on_query, shape)
        )
    tables = [t for t in tables if len(t)]
    if not tables:
        return Table()
    rows = vstack(tables, metadata_conflicts="silent")
    return _unique_pairs(rows)


def _shaped(
    service, chunk, constraints, strategy, features, options, on_query, shape: Shape
) -> Table:
    """``chunk`` asked in ``shape``, or, when the service cannot run it, in simpler ones."""
    base = str(service.baseurl)
    memory = options.shapes
    fallback = simpler(shape, chunk)
    shaped = replace(features, intersects=shape.intersects)
    tried = options
    if fallback is not None and not memory.gave_up(base):
        # a 500 that repeats once is the answer, and the fall-back says it in one line
        quick = replace(options.retry, broken_after=2, log_level=logging.DEBUG)
        tried = replace(options, retry=quick)
    try:
        if not shape.upload:
            return _complete(
                service,
                chunk,
                constraints,
                strategy,
                shaped,
                tried,
                on_query,
                upload=False,
                with_radius=False,
            )
        parts = []
        for with_radius in (False, True):
            group = [t for t in chunk if bool(t.radius) == with_radius]
            if group:
                parts.append(
                    _complete(
                        service,
                        group,
                        constraints,
                        strategy,
                        shaped,
                        tried,
                        on_query,
                        upload=True,
                        with_radius=with_radius,
                    )
                )
        return _joined(Table(), parts)
    except Exception as exc:
        if fallback is None or memory.gave_up(base) or not may_be_the_shape(exc):
            raise
        problem = one_line(exc)
        # the service's words may name the feature it lacks
        fallback = simpler(shape, chunk, problem) or fallback
    try:
        parts = [
            _shaped(
                service,
                chunk[i : i + fallback.size],
                constraints,
                strategy,
                features,
                options,
                on_query,
                fallback,
            )
            for i in range(0, len(chunk), fallback.size)
        ]
    except Exception:
        memory.give_up(base)  # not the shape's fault: the next batches fail as they are
        raise
    memory.learn(base, shape, fallback, problem)
    return _joined(Table(), parts)


def _unique_pairs(rows: Table) -> Table:
    """Drop repeats of a (target, image) pair (time splits overlap at their boundary)."""
    key = [
        f"{t}\x00{d}"
        for t, d in zip(texts(rows, TARGET_COLUMN), texts(rows, "obs_publisher_did"), strict=True)
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
            obscore=features.obscore_table,
        )
        uploads = {"targets": _upload_table(targets)}
    else:
        adql = obscore_query(
            targets,
            constraints,
            intersects=features.intersects,
            prefilter_radius=strategy.prefilter_radius,
            obscore=features.obscore_table,
        )
        uploads = None
    if on_query:
        on_query(adql)
    rows, overflow = run_query(service, adql, options, uploads)
    rows = lower_case_columns(rows)
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
    if parts:
        return vstack(parts, metadata_conflicts="silent")
    return parts_or_empty(rows) if rows.colnames else Table()


def lower_case_columns(rows: Table) -> Table:
    """Result columns by their ObsCore names: some database back ends give them in upper
    case (``S_REGION``), and TAP column names are case-insensitive anyway."""
    names = rows.colnames
    lowered = [n.lower() for n in names]
    if lowered != names and len(set(lowered)) == len(lowered):
        rows.rename_columns(names, lowered)
        for meta in rows.meta.get(DESCRIPTORS_META, []):  # a descriptor's ID column too
            if meta.get("id_column"):
                meta["id_column"] = meta["id_column"].lower()
    return rows


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
            ra[check], dec[check], radius[check], pack_rows(rows[check])
        )
        keep[check] = hit | unknown
    return rows[keep]
