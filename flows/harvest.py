"""The harvest flow: targets → ObsCore → Datalink → WCS check → object storage → Parquet.

Thin Prefect layer over the pure steps in ``tasks/``: a task per batch of targets (the
queries) and per batch of images (Datalink, header reads, downloads), never one per image.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any

import pyvo
from astropy.table import Table, vstack
from prefect import flow, get_run_logger, task
from prefect.concurrency.sync import concurrency
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from obsharvest import assemble
from obsharvest import incremental as incremental_state
from obsharvest.access.datalink import DatalinkResolver
from obsharvest.errors import (
    UserError,
)
from obsharvest.images import ImageSettings, check_cutouts_offered, process_images
from obsharvest.metadata import MetadataStore
from obsharvest.models import ImageOutcome, ImageWork, Target
from obsharvest.net.http import DEFAULT_TIMEOUT, ServiceSession, resolve_token, token_source
from obsharvest.net.retry import RetryPolicy, one_line
from obsharvest.query.adql import Constraints
from obsharvest.query.obscore import QueryOptions, Strategy, probe_features, query_targets
from obsharvest.runtime import stopping, workers
from obsharvest.runtime.crashpoints import crashpoint
from obsharvest.storage.store import ObjectStore
from obsharvest.targets import read_targets, single_target

from . import progress, report
from .config import build_params
from .params import Band, CalibLevel, HarvestParams, Subtype
from .preflight import constraints_of as _constraints
from .preflight import preflight, with_storage_credentials
from .quiet import quiet_library_noise
from .runners import task_runner_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Connection:
    """How to reach the service during this run (the token stays out of parameters)."""

    tap_url: str
    token: str | None
    token_hosts: tuple[str, ...]
    token_source: str | None = None  # where the token comes from, for refusal messages

    def session(
        self, pool: int = 16, timeout: tuple[float, float] = DEFAULT_TIMEOUT
    ) -> ServiceSession:
        """A session for TAP (pyvo), Datalink and SODA whose every request has ``timeout``
        (connect, read seconds: ``retry.connect_timeout``/``retry.read_timeout``)."""
        return ServiceSession(
            self.token,
            [self.tap_url, *self.token_hosts],
            pool=pool,
            timeout=timeout,
            token_source=self.token_source,
        )


def _retry(params: HarvestParams) -> RetryPolicy:
    r = params.retry
    return RetryPolicy(
        attempts=r.attempts,
        initial_wait=r.initial_wait,
        max_wait=r.max_wait,
        deadline=r.deadline_seconds,
    )


@contextlib.contextmanager
def _archive_slot(params: HarvestParams) -> Iterator[None]:
    """One slot of the Prefect global concurrency limit named in the parameters, held for a
    whole batch (each acquire is an API call: per batch, not per request). No name, no slot;
    a name without a limit on the server does not block (``strict=False``). The task's log
    says how long it waited and held the slot."""
    name = params.execution.archive_concurrency_limit
    if not name:
        yield
        return
    logger = get_run_logger()
    asked = time.monotonic()
    with concurrency(name, occupy=1, strict=False):
        held = time.monotonic()
        logger.info("holding a slot of concurrency limit %r (waited %.1f s)", name, held - asked)
        try:
            yield
        finally:
            logger.info("releasing the slot of %r after %.1f s", name, time.monotonic() - held)


# The tasks carry no tags on purpose: for a tagged task run, Prefect's task engine asks the
# API for tag concurrency slots before it starts, one more write per task run; on a SQLite
# Prefect server under load that write is refused with 503 and retried after ~2 s (seen in
# make bench: 4 of 5 stalls of a run). Deployment tags still label the flow runs, and
# execution.archive_concurrency_limit is the way to bound the load on an archive.
@task(name="load-targets")
def load_targets(params: HarvestParams) -> list[Target]:
    if params.targets:
        targets = read_targets(params.targets, default_radius=params.radius)
    else:
        targets = [single_target(params.ra, params.dec, params.radius, params.target_name)]
    get_run_logger().info("%d targets", len(targets))
    return targets


@task(name="query-obscore", task_run_name="query-{label}")
def query_batch(
    params: HarvestParams,
    conn: Connection,
    targets: list[Target],
    constraints: Constraints,
    label: str,
) -> Table:
    session = conn.session(timeout=_timeout(params))
    service = pyvo.dal.TAPService(conn.tap_url, session=session)
    retry = _retry(params)
    options = QueryOptions(
        mode=params.query.mode,
        maxrec=params.query.maxrec,
        deadline=params.query.deadline_seconds,
        retry=retry,
    )
    strategy = Strategy(
        kind=params.query.strategy,
        batch_size=params.query.batch_size,
        prefilter_radius=params.query.prefilter_radius,
    )
    queries: list[str] = []
    with _archive_slot(params):
        features = probe_features(service, retry)
        rows = query_targets(
            service, targets, constraints, strategy, features, options, on_query=queries.append
        )
    get_run_logger().info(
        "%d targets: %d queries, %d (target, image) rows", len(targets), len(queries), len(rows)
    )
    progress.advance("query", len(targets))
    return rows


@task(name="process-images", task_run_name="images-{label}")
def image_batch(
    params: HarvestParams, conn: Connection, works: list[ImageWork], label: str
) -> list[ImageOutcome]:
    c = params.concurrency
    session = conn.session(pool=max(c.datalink_workers, 4), timeout=_timeout(params))
    resolver = _resolver(params, session, c.datalink_workers)
    store = ObjectStore(params.storage_url, params.storage_options, timeout=_timeout(params))
    settings = ImageSettings(
        verification=params.verification.mode,
        margin_px=params.verification.margin_px,
        block_size=params.verification.header_block_size,
        plan=params.plan,
        verify_workers=c.verify_workers,
        download_workers=c.download_workers,
        retry=_retry(params),
        mask=params.verification.mask,
        mode=params.products.mode,
        cutout_radius=params.products.cutout_radius,
        quicklook=params.products.quicklook,
        auth_headers=session.auth_headers,
        timeout=_timeout(params),
        image_deadline=params.retry.image_deadline_seconds,
        cutout_fallback=params.products.cutout_fallback == "image",
    )
    with _archive_slot(params):
        outcomes = process_images(
            works,
            resolver,
            store,
            settings,
            on_done=lambda o: progress.advance(
                "images", 1, o.stored.size if o.stored and o.downloaded else 0
            ),
        )
    outcomes = BatchOutcomes(outcomes)
    failed = [o for o in outcomes if o.failure]
    logger = get_run_logger()
    for outcome in failed:  # one line each: the key and why, never the outcome's repr
        logger.warning(_capped(f"image {outcome.key} failed: {outcome.failure}"))
    logger.info(
        "%d images: %d stored, %d failed",
        len(works),
        sum(1 for o in outcomes if o.stored),
        len(failed),
    )
    if failed:  # a failed task run in the UI, with the reasons in its logs; data kept
        _drop_empty_tracebacks(logging.getLogger("prefect.task_runs"))
        return Failed(
            message=_capped(
                f"{len(failed)} of {len(works)} images failed; first: "
                f"{failed[0].key}: {failed[0].failure}"
            ),
            data=outcomes,
        )
    return outcomes


LOG_LINE_CAP = 300  # characters of one failed image's log line (a reason can be long)


def _capped(text: str, limit: int = LOG_LINE_CAP) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BatchOutcomes(list):
    """An image batch's outcomes, with a one-line repr.

    Prefect logs the repr of a Failed state a task returns, and that repr holds the state's
    data: with a plain list, the repr of every ImageOutcome of the batch on one line (20 kB
    for a few dozen images). The reasons are already logged one line per image.
    """

    def __repr__(self) -> str:
        failed = sum(1 for o in self if o.failure)
        return f"<{len(self)} image outcomes, {failed} failed>"


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a returned Failed state with ``exc_info=True`` outside any except
    block (``task_engine.handle_retry``); formatters print that as a stray ``NoneType: None``
    line. A record with no exception to show loses its empty ``exc_info``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


def _drop_empty_tracebacks(logger: logging.Logger) -> None:
    if not any(isinstance(f, _NoEmptyTraceback) for f in logger.filters):
        logger.addFilter(_NoEmptyTraceback())


def _timeout(params: HarvestParams) -> tuple[float, float]:
    return params.retry.connect_timeout, params.retry.read_timeout


def _resolver(params: HarvestParams, session, workers: int) -> DatalinkResolver:
    return DatalinkResolver(
        session,
        batch_size=params.concurrency.datalink_batch,
        workers=workers,
        retry=_retry(params),
        timeout=_timeout(params),
    )


@task(name="check-cutouts")
def check_cutouts(params: HarvestParams, conn: Connection, works: list[ImageWork]) -> None:
    """Before any image work: does the archive offer SODA at all? (one Datalink request)"""
    session = conn.session(timeout=_timeout(params))
    check_cutouts_offered(works, _resolver(params, session, workers=1))


@task(name="write-metadata")
def write_metadata(
    params: HarvestParams,
    rows: Table,
    targets: dict[str, Target],
    outcomes: dict[str, ImageOutcome],
    run_id: str,
) -> list[str]:
    if len(rows) == 0:
        return []
    table = assemble.metadata_rows(rows, targets, outcomes, run_id)
    # append-only: this run's own files, never a rewrite of another run's (runs at once)
    store = MetadataStore(params.output_url, params.output_storage_options)
    return store.append(table, run_id=run_id)


@task(name="quicklook-gallery")
def gallery(
    params: HarvestParams,
    rows: Table,
    targets: dict[str, Target],
    outcomes: dict[str, ImageOutcome],
) -> str:
    from obsharvest.products.gallery import write_gallery

    index, markdown = write_gallery(
        rows, targets, outcomes, params.output_url, params.output_storage_options
    )
    report.publish_gallery(markdown, index)
    return index


def _chunks(items: Sequence, size: int, workers: int = 1) -> Iterator[list]:
    """Batches of at most ``size``, as even as possible (304 items by 250 → 152 + 152), and,
    when more than one is needed, as many as a multiple of ``workers`` (578 by 250 for two
    workers → 4 × 145, not 3 × 193), so no batch runs alone with the rest of the pool idle.
    What fits in one batch stays one task: its threads already work in parallel."""
    if not items:
        return
    count = -(-len(items) // max(1, size))
    if count > 1:
        workers = max(1, workers)
        count = min(len(items), -(-count // workers) * workers)
    step = -(-len(items) // count)
    for start in range(0, len(items), step):
        yield list(items[start : start + step])


@contextlib.contextmanager
def _service(params: HarvestParams) -> Iterator[Connection]:
    """The connection for this run; starts the embedded archive when the profile asks."""
    svc = params.service
    token = resolve_token(env=svc.token_env, secret_block=svc.token_secret_block)
    source = token_source(svc.token_env, svc.token_secret_block)
    if svc.embedded is None:
        yield Connection(svc.tap_url, token, tuple(svc.extra_token_hosts), source)
        return
    from simarchive.faults import FaultPlan
    from simarchive.server import ArchiveSettings, EmbeddedArchive

    e = svc.embedded
    settings = ArchiveSettings(
        port=e.port,
        seed=e.seed,
        n_visits=e.n_visits,
        binning=e.binning,
        profile=e.profile,
        naming=e.naming,
        access_style=e.access_style,
        datalink_multi_id=e.datalink_multi_id,
        datalink_order=e.datalink_order,
        faults=FaultPlan.parse(e.faults, seed=e.seed),
    )
    with EmbeddedArchive(settings) as archive:
        yield Connection(archive.tap_url, token, tuple(svc.extra_token_hosts), source)


_absorbed: list[BaseException] = []  # TerminationSignals this process turned into a stop


def _termination_intent() -> str | None:
    """What the Prefect runner meant by its SIGTERM: "cancel" (UI, ``prefect flow-run
    cancel``), another control intent, or None for a plain SIGTERM (cron, SLURM,
    ``timeout``). Prefect has no public API for it; without one, a plain SIGTERM."""
    try:
        from prefect._internal.control_listener import get_intent
    except ImportError:
        return None
    return get_intent()


def _result(future, **kwargs):
    """``future.result()`` in the flow's thread, where Prefect's SIGTERM handler raises
    ``TerminationSignal`` and Ctrl-C raises ``KeyboardInterrupt``: either becomes a stop
    request (tasks notice it within seconds and return what they decided) and the wait
    goes on, so the Parquet and the summary are still written. Once the run is stopping,
    a task still blocked (a read the server never answers) is waited for only
    ``workers.STOP_GRACE`` more seconds, then abandoned: :class:`stopping.Interrupted`."""
    from prefect.exceptions import TerminationSignal

    while True:
        try:
            if stopping.past_grace(workers.STOP_GRACE + 1.0):
                raise stopping.Interrupted(stopping.describe())
            future.wait(timeout=0.5)
            if future.state.is_final():
                return future.result(**kwargs)
        except TerminationSignal as exc:
            intent = _termination_intent()
            if stopping.request_for_signal(exc.signal, cancelled=intent == "cancel"):
                _say_stopping()
            elif intent is None:
                raise  # a second plain SIGTERM: leave now, as Prefect does
            if intent is not None:
                _absorbed.append(exc)  # handed back to Prefect once the run is written
        except KeyboardInterrupt:
            if stopping.request_for_signal(signal.SIGINT):
                _say_stopping()


def _say_stopping() -> None:
    get_run_logger().warning(
        "%s: stopping; what is decided will be written, the rest recorded as interrupted",
        stopping.describe(),
    )


def _query_all(
    params: HarvestParams, conn: Connection, targets: list[Target], constraints: Constraints, logger
) -> tuple[Table, list[tuple[str, str]]]:
    """Query every target (in coarse batches), keeping failed batches as reported failures."""
    chunks = list(_chunks(targets, params.concurrency.targets_per_task))
    futures = [
        query_batch.submit(params, conn, chunk, constraints, f"{i + 1}-of-{len(chunks)}")
        for i, chunk in enumerate(chunks)
    ]
    tables, failures = [], []
    for future, chunk in zip(futures, chunks, strict=True):
        try:
            tables.append(_result(future))
        except UserError:  # the user's to fix: ends the run (obsharvest.errors)
            raise
        except stopping.Interrupted as exc:
            failures += [(f"target {t.name}", str(exc)) for t in chunk]
        except Exception as exc:  # retries exhausted: these targets are missing, say why
            reason = f"ObsCore query failed: {one_line(exc)}"
            logger.error("%d targets not queried: %s", len(chunk), reason)
            failures += [(f"target {t.name}", reason) for t in chunk]
    tables = [t for t in tables if len(t)]
    rows = vstack(tables, metadata_conflicts="silent") if tables else Table()
    return rows, failures


@contextlib.contextmanager
def _run_deadline(seconds: float | None) -> Iterator[None]:
    """Past ``execution.run_deadline_seconds`` the run stops as it would on SIGTERM."""
    if not seconds:
        yield
        return
    reason = f"{stopping.INTERRUPTED}: run deadline of {seconds:g} s passed"
    timer = threading.Timer(seconds, stopping.request, args=(reason,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def run_harvest(
    params: HarvestParams, run_id: str, *, incremental: bool = False
) -> assemble.Summary:
    """The harvest as a sequence of coarse task calls; returns the run's summary."""
    logger = get_run_logger()
    params = with_storage_credentials(params)
    base = _constraints(params)
    with _service(params) as conn, _run_deadline(params.execution.run_deadline_seconds):
        targets = load_targets(params)
        by_name = {t.name: t for t in targets}
        progress.start("query", len(targets))
        state = None
        if incremental:
            state = incremental_state.load(
                params.output_url,
                params.output_storage_options,
                incremental_state.constraints_key(base),
            )
            groups = incremental_state.windows(targets, state)
        else:
            groups = {None: targets}
        parts, query_failures = [], []
        for watermark, group in groups.items():
            constraints = base
            if watermark is not None:
                start = max(watermark, base.t_min) if base.t_min is not None else watermark
                constraints = base.with_time(start, base.t_max)
                logger.info("%d targets: incremental window from MJD %.6f", len(group), start)
            rows_part, failed = _query_all(params, conn, group, constraints, logger)
            parts.append(rows_part)
            query_failures += failed
        parts = [p for p in parts if len(p)]
        rows = vstack(parts, metadata_conflicts="silent") if parts else Table()
        metadata = MetadataStore(params.output_url, params.output_storage_options)
        priors = assemble.priors_from(
            metadata.read(columns=assemble.PRIOR_COLUMNS, targets=by_name)  # the current view
        )
        works = assemble.image_works(rows, by_name, priors, band_column=params.service.band_column)
        logger.info("%d (target, image) rows, %d unique images", len(rows), len(works))
        if params.products.mode == "cutout" and params.products.cutout_fallback == "fail":
            check_cutouts(params, conn, works)
        progress.start("images", len(works))
        outcomes = _process_all(params, conn, works, logger)
        paths = write_metadata(params, rows, by_name, outcomes, run_id) if len(rows) else []
        if params.products.quicklook and len(rows) and not params.plan and not stopping.requested():
            gallery(params, rows, by_name, outcomes)
        summary = assemble.summarize(
            rows,
            works,
            outcomes,
            run_id,
            band_column=params.service.band_column,
            plan=params.plan,
            cutout_radius=params.products.cutout_radius,
            cutout_mode=params.products.mode == "cutout",
        )
        summary.failures = query_failures + summary.failures
        summary.interrupted = stopping.describe() if stopping.requested() else None
        summary.metadata_url = params.output_url.rstrip("/") + "/metadata"
        summary.metadata_written = bool(paths)
        summary.storage_url = params.storage_url
        logger.info("metadata written: %d files", len(paths))
        if state is not None and summary.ok and not params.plan:
            t_min = (
                [float(v) for v in rows["t_min"]] if len(rows) and "t_min" in rows.colnames else []
            )
            incremental_state.save(
                params.output_url,
                params.output_storage_options,
                incremental_state.advanced(
                    state,
                    targets,
                    t_min,
                    {
                        "run_id": run_id,
                        "images": summary.images,
                        "stored": summary.stored_images,
                        "downloaded": summary.downloaded,
                    },
                ),
                run_id=run_id,  # a file of its own: runs at once keep each other's watermarks
            )
        return summary


def _process_all(
    params: HarvestParams, conn: Connection, works: list[ImageWork], logger
) -> dict[str, ImageOutcome]:
    """Image batches as tasks; a progress artifact follows them as they finish."""
    batches = list(
        _chunks(works, params.concurrency.images_per_task, params.concurrency.task_workers)
    )
    futures = [
        image_batch.submit(params, conn, batch, f"{i + 1}-of-{len(batches)}")
        for i, batch in enumerate(batches)
    ]
    tracker = report.ProgressTracker(len(works))
    outcomes: dict[str, ImageOutcome] = {}
    for future, batch in zip(futures, batches, strict=True):
        try:
            result = _result(future, raise_on_failure=False)
        except stopping.Interrupted as exc:  # abandoned: its images did not finish
            result = [ImageOutcome(w.key, {}, failure=str(exc)) for w in batch]
        except Exception as exc:  # the task crashed: its images are failures with the reason
            result = exc
        if isinstance(result, BaseException) or result is None:
            reason = f"image batch failed: {one_line(result) if result else 'no result'}"
            result = [ImageOutcome(w.key, {}, failure=reason) for w in batch]
        for outcome in result:
            outcomes[outcome.key] = outcome
        tracker.advance(len(batch))
    return outcomes


_FLAT = {  # the flow's top-level parameters that live deeper in HarvestParams
    "bands": "constraints.bands",
    "subtypes": "constraints.subtypes",
    "calib_levels": "constraints.calib_levels",
    "time_start": "constraints.time_start",
    "time_end": "constraints.time_end",
}


def _flat_overrides(**values: Any) -> dict[str, Any]:
    """The flow's top-level parameters as dotted overrides of the profile."""
    out = {}
    for name, value in values.items():
        if value is None or (name == "plan" and value is False):
            continue
        out[_FLAT.get(name, name)] = value
    return out


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters or {}
    what = (
        f"{p['ra']},{p['dec']}"
        if p.get("ra") is not None
        else str(p.get("targets") or "targets").rsplit("/", 1)[-1]
    )
    mode = "plan" if p.get("plan") else ("incremental" if p.get("incremental") else "full")
    return f"harvest-{what}-{mode}-{datetime.now(UTC):%Y%m%d-%H%M}"


@flow(
    name="harvest",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=2),
    persist_result=False,
)
def harvest(
    profile: Annotated[
        str | None, Field(description="YAML profile in config/")
    ] = "config/local.yaml",
    targets: Annotated[
        str | None, Field(description="target list (CSV/ECSV/Parquet/VOTable path or URL)")
    ] = None,
    ra: Annotated[float | str | None, Field(description="one target: RA (deg or hh:mm:ss)")] = None,
    dec: Annotated[
        float | str | None, Field(description="one target: Dec (deg or dd:mm:ss)")
    ] = None,
    radius: Annotated[
        float | None, Field(gt=0, le=10, description="deg: overlap, not containment")
    ] = None,
    target_name: str | None = None,
    bands: list[Band] | None = None,
    subtypes: list[Subtype] | None = None,
    calib_levels: list[CalibLevel] | None = None,
    time_start: Annotated[
        float | str | date | None, Field(description="MJD or ISO date/time (UTC)")
    ] = None,
    time_end: Annotated[
        float | str | date | None, Field(description="MJD or ISO date/time (UTC)")
    ] = None,
    output_url: Annotated[str | None, Field(description="where metadata/ and fits/ go")] = None,
    plan: Annotated[
        bool, Field(description="dry run: verify, write Parquet, download nothing")
    ] = False,
    incremental: Annotated[
        bool, Field(description="only what is new since the last good run")
    ] = False,
    overrides: Annotated[
        dict[str, Any] | None,
        Field(description='other settings as dotted keys, e.g. {"query.maxrec": 5000}'),
    ] = None,
) -> assemble.Summary:
    """Harvest the images that truly contain each target from an ObsTAP service.

    The profile gives the service and defaults; the other parameters override it. Every
    value is validated before any work starts.
    """
    from prefect.runtime import flow_run

    values = _flat_overrides(
        targets=targets,
        ra=ra,
        dec=dec,
        radius=radius,
        target_name=target_name,
        bands=bands,
        subtypes=subtypes,
        calib_levels=calib_levels,
        time_start=time_start,
        time_end=time_end,
        output_url=output_url,
        plan=plan,
    )
    sources = {key: f"parameter {name}" for name, key in _FLAT.items() if key in values}
    sources.update({k: f"parameter {k}" for k in values if k not in sources})
    for key in overrides or {}:
        sources[key] = f"parameter overrides[{key!r}]"
    values.update(overrides or {})
    quiet_library_noise()
    params = build_params(profile, values, sources)
    preflight(params)  # a deployment run's checks; in the CLI's process already done
    run_id = str(flow_run.id or uuid.uuid4())
    runner = task_runner_for(params.execution, params.concurrency.task_workers)
    if runner == harvest.task_runner:
        summary = run_harvest(params, run_id, incremental=incremental)
    else:  # a subflow with its own task runner: Dask, or another thread count
        body = harvest_run.with_options(task_runner=runner)
        summary = body(params, run_id, incremental=incremental)
    crashpoint("report")
    report.publish(summary)
    if _absorbed and stopping.cancelled():  # Prefect asked: the run ends Cancelled
        raise _absorbed[-1]
    if not summary.ok:
        return Failed(message=report.failure_message(summary), data=summary)
    return summary


harvest_run = flow(run_harvest, name="harvest-run", persist_result=False)


def harvest_params(params: HarvestParams, *, incremental: bool = False) -> assemble.Summary:
    """Run the flow for an already-built ``HarvestParams`` (tests, Python callers).

    Returns the summary whether or not some images failed (``summary.ok`` says); errors
    that ended the run are raised.
    """
    stopping.reset()  # a new run in this process: an earlier run's stop is not this one's
    _absorbed.clear()
    data = params.model_dump(mode="json")
    state = harvest(
        profile=None, overrides=_dotted(data), incremental=incremental, return_state=True
    )
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


def _dotted(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if (
            isinstance(value, dict)
            and value
            and key not in ("storage_options", "output_storage_options", "dask_cluster_kwargs")
        ):
            out.update(_dotted(value, name + "."))
        else:
            out[name] = value
    return out
