"""The harvest flow: targets → ObsCore → Datalink → WCS check → object storage → Parquet.

It calls the tasks of ``tasks/`` (each a thin wrapper over an ``obsharvest`` function): a
task per batch of targets (the queries) and per batch of images (Datalink, header reads,
downloads), never one per image. Here: the order of the steps, stopping (signals, the run
deadline, Prefect cancellation), incremental windows and the summary.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypeVar

import numpy as np
from astropy.table import Table, vstack
from obsharvest.tasks import artifacts, progress
from obsharvest.tasks.images import check_cutouts, process_images
from obsharvest.tasks.outputs import footprints, gallery, write_metadata
from obsharvest.tasks.query import query_obscore
from obsharvest.tasks.targets import load_targets
from prefect import flow, get_run_logger
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from obsharvest import assemble
from obsharvest import incremental as incremental_state
from obsharvest.errors import ConfigError, UserError
from obsharvest.metadata import MetadataStore
from obsharvest.models import ImageOutcome, ImageWork, Summary, Target
from obsharvest.net.http import Connection
from obsharvest.net.redact import install_redaction
from obsharvest.net.retry import one_line
from obsharvest.products.quicklook import GalleryItem
from obsharvest.query.adql import Constraints
from obsharvest.query.obscore import QueryOptions
from obsharvest.report import split_unfinished
from obsharvest.runtime import stopping, workers
from obsharvest.runtime.crashpoints import crashpoint, rendezvous
from obsharvest.targets import in_sky_order

from . import settings
from .blocks import service_token
from .config import build_params
from .params import DEC_SCHEMA, MJD_SCHEMA, RA_SCHEMA, Band, CalibLevel, HarvestParams, Subtype
from .preflight import constraints_of as _constraints
from .preflight import preflight, with_storage_credentials
from .quiet import quiet_library_noise
from .runners import task_runner_for

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def _service(params: HarvestParams) -> Iterator[Connection]:
    """The connection for this run; starts the embedded archive when the profile asks."""
    svc = params.service
    token, source = service_token(svc.token_env, svc.token_secret_block)
    if svc.embedded is None:
        assert svc.tap_url is not None  # Service: exactly one of tap_url and embedded
        yield Connection(svc.tap_url, token, tuple(svc.extra_token_hosts), source)
        return
    try:
        from obsharvest.simarchive.dialect import Dialect
        from obsharvest.simarchive.faults import FaultPlan
        from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
    except ImportError as exc:  # installed without the archive's extra
        raise ConfigError(f"service.embedded: {exc}") from None

    e = svc.embedded
    archive_settings = ArchiveSettings(
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
        dialect=Dialect.parse(e.dialect),
    )
    with EmbeddedArchive(archive_settings) as archive:
        yield Connection(archive.tap_url, token, tuple(svc.extra_token_hosts), source)


_absorbed: list[BaseException] = []  # TerminationSignals this process turned into a stop


INTENT_TIMEOUT = 2.0  # seconds to ask the API whether a SIGTERM is a cancellation
CANCEL_STATES = ("CANCELLING", "CANCELLED")  # state types (and, capitalised, names)


def _termination_intent() -> str | None:
    """What a SIGTERM means: "cancel" when this flow run is being cancelled (the UI,
    ``prefect flow-run cancel``: the API puts the run in Cancelling, then the runner sends
    the SIGTERM), else None: a plain SIGTERM (cron, SLURM, ``timeout``, a runner shutting
    down). Read through Prefect's public client, in a daemon thread waited on for at most
    ``INTENT_TIMEOUT`` seconds; an API that does not answer in time, or any error, is no
    intent. A second signal during that wait is raised from here: it leaves now, as a
    second plain SIGTERM does."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return None
    answer: list[str | None] = []

    def ask() -> None:
        answer.append("cancel" if _run_is_cancelling(run_id) else None)

    context = contextvars.copy_context()  # the run's settings (its API URL) and logger
    asking = threading.Thread(
        target=context.run, args=(ask,), name="termination-intent", daemon=True
    )
    asking.start()
    asking.join(INTENT_TIMEOUT)
    return answer[0] if answer else None


def _run_is_cancelling(run_id: str) -> bool:
    """Whether the API says flow run ``run_id`` is Cancelling or Cancelled (False on any
    error: a SIGTERM is then taken as a plain one)."""
    from prefect import get_client

    try:
        with get_client(httpx_settings={"timeout": INTENT_TIMEOUT}, sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(run_id)).state
    except Exception:  # noqa: BLE001 - no answer is no intent
        return False
    if state is None:
        return False
    kind = getattr(state.type, "value", str(state.type))
    return kind in CANCEL_STATES or (state.name or "").upper() in CANCEL_STATES


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
            _absorb(exc)
        except KeyboardInterrupt:
            if stopping.request_for_signal(signal.SIGINT):
                _say_stopping()


def _absorb(exc: BaseException) -> None:
    """Prefect's ``TerminationSignal`` as a stop request; a second plain SIGTERM (no
    runner intent) is raised again: leave now, as Prefect does."""
    intent = _termination_intent()
    if stopping.request_for_signal(
        getattr(exc, "signal", signal.SIGTERM), cancelled=intent == "cancel"
    ):
        _say_stopping()
    elif intent is None:
        raise exc
    if intent is not None:
        _absorbed.append(exc)  # handed back to Prefect once the run is written


def _absorbing(fn: Callable[[], T]) -> T:
    """``fn()`` (the run's body) in a helper thread while the flow's thread only waits.

    A flow run in the main thread (a deployment run, a Python caller) has Prefect's SIGTERM
    handler installed, which raises ``TerminationSignal`` wherever that thread is: in a
    Parquet write, the summary or between shards it crashed the run and lost what it
    decided. Here the signal can only land in this wait, where it becomes a stop request
    (the body notices between steps and returns what it decided); a runner's cancel still
    ends the run Cancelled (``_absorbed``). Off the main thread (the CLI runs the flow
    there) no signal arrives: ``fn`` runs in place.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn()
    from prefect.exceptions import TerminationSignal

    future: Future[T] = Future()
    context = contextvars.copy_context()  # the flow run's context: logger, task runner

    def body() -> None:
        try:
            future.set_result(context.run(fn))
        except BaseException as exc:  # noqa: BLE001 - raised again in the flow's thread
            future.set_exception(exc)

    threading.Thread(target=body, name="harvest-body", daemon=True).start()
    while True:
        try:
            return future.result(timeout=0.5)
        except FutureTimeout:
            continue
        except TerminationSignal as exc:
            _absorb(exc)
        except KeyboardInterrupt:
            if stopping.request_for_signal(signal.SIGINT):
                _say_stopping()


def _say_stopping() -> None:
    get_run_logger().warning(
        "%s: stopping; what is decided will be written, the rest recorded as interrupted",
        stopping.describe(),
    )


def _query_all(
    params: HarvestParams,
    conn: Connection,
    targets: list[Target],
    constraints: Constraints,
    logger,
    options: QueryOptions,
) -> tuple[Table, list[tuple[str, str]]]:
    """Query every target (in coarse batches), keeping failed batches as reported failures."""
    chunks = list(workers.batches(targets, params.concurrency.targets_per_task))
    strategy = settings.strategy(params)
    timeout, slot = settings.timeouts(params), params.execution.archive_concurrency_limit
    futures = [
        query_obscore.submit(
            conn,
            chunk,
            constraints,
            strategy,
            options,
            timeout,
            label=f"{i + 1}-of-{len(chunks)}",
            slot=slot,
        )
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


def run_harvest(params: HarvestParams, run_id: str, *, incremental: bool = False) -> Summary:
    """The harvest as a sequence of coarse task calls, shard by shard; the run's summary.

    Each shard of ``execution.shard_targets`` targets (neighbours on the sky together) is
    queried, verified, stored and written to the Parquet before the next begins: memory is
    bounded by a shard, not by the run, and what a shard decided is on disk when it ends.
    """
    logger = get_run_logger()
    params = with_storage_credentials(params)
    base = _constraints(params)
    with _service(params) as conn, _run_deadline(params.execution.run_deadline_seconds):
        targets = load_targets(
            params.targets, params.ra, params.dec, params.radius, params.target_name
        )
        progress.start("query", len(targets))
        state = None
        if incremental:
            state = incremental_state.load(
                params.output_url,
                params.output_storage_options,
                incremental_state.constraints_key(base),
            )
        shards = list(workers.batches(in_sky_order(targets), params.execution.shard_targets))
        run = _RunTotals(query_options=settings.query_options(params))
        for number, shard in enumerate(shards, 1):
            if number > 1:
                rendezvous("shard")  # tests: a stop between shards
            if stopping.requested():
                run.parts.append(_not_started(run_id, shard, number, len(shards)))
                continue
            if len(shards) > 1:
                logger.info("shard %d of %d: %d targets", number, len(shards), len(shard))
            _harvest_shard(params, conn, shard, base, state, run_id, run, logger)
        if run.gallery_items:
            gallery(run.gallery_items, params.output_url, params.output_storage_options)
        rendezvous("summary")  # tests: a stop while the run sums up
        summary = assemble.merge(run_id, run.parts, plan=params.plan)
        summary.interrupted = stopping.describe() if stopping.requested() else None
        for line in split_unfinished(summary.failures)[1]:  # one line, not one per image
            logger.warning(line)
        summary.metadata_url = params.output_url.rstrip("/") + "/metadata"
        summary.metadata_written = bool(run.paths)
        summary.storage_url = params.storage_url
        logger.info("metadata written: %d files", len(run.paths))
        if state is not None and summary.ok and not params.plan:
            incremental_state.save(
                params.output_url,
                params.output_storage_options,
                incremental_state.advanced(
                    state,
                    targets,
                    run.newest_t_min,
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


@dataclass
class _RunTotals:
    """What a run keeps across its shards: small, whatever the number of rows."""

    parts: list[Summary] = field(default_factory=list)
    counted: dict[str, assemble.ImageTally] = field(default_factory=dict)  # by image
    paths: list[str] = field(default_factory=list)
    newest_t_min: list[float] = field(default_factory=list)  # per shard
    gallery_items: list[GalleryItem] = field(default_factory=list)
    images: int = 0  # the images of the shards begun so far (the progress total)
    # built once: what the run learns of its services (no async, query shapes) lasts the run
    query_options: QueryOptions = field(default_factory=QueryOptions)


def _harvest_shard(
    params: HarvestParams,
    conn: Connection,
    shard: list[Target],
    base: Constraints,
    state: incremental_state.State | None,
    run_id: str,
    run: _RunTotals,
    logger,
) -> None:
    """Query, verify, store and write one shard; its summary and paths go into ``run``."""
    by_name = {t.name: t for t in shard}
    groups = incremental_state.windows(shard, state) if state is not None else {None: shard}
    parts, query_failures = [], []
    for watermark, group in groups.items():
        constraints = base
        if watermark is not None:
            start = max(watermark, base.t_min) if base.t_min is not None else watermark
            constraints = base.with_time(start, base.t_max)
            logger.info("%d targets: incremental window from MJD %.6f", len(group), start)
        rows_part, failed = _query_all(params, conn, group, constraints, logger, run.query_options)
        parts.append(rows_part)
        query_failures += failed
    parts = [p for p in parts if len(p)]
    rows = vstack(parts, metadata_conflicts="silent") if parts else Table()
    del parts
    metadata = MetadataStore(params.output_url, params.output_storage_options)
    priors = assemble.priors_from(  # the current view, of earlier runs: shards' targets differ
        metadata.read(columns=assemble.PRIOR_COLUMNS, targets=by_name, exclude_run=run_id)
    )
    works = assemble.image_works(rows, by_name, priors, band_column=params.service.band_column)
    logger.info("%d (target, image) rows, %d unique images", len(rows), len(works))
    if params.products.mode == "cutout" and params.products.cutout_fallback == "fail":
        check_cutouts(conn, works, settings.image_settings(params))
    run.images += len(works)
    progress.start("images", run.images)
    outcomes = _process_all(params, conn, works, logger)
    if len(rows):
        run.paths += write_metadata(
            rows, by_name, outcomes, run_id, params.output_url, params.output_storage_options
        )
    if params.products.quicklook and len(rows) and not params.plan and not stopping.requested():
        run.gallery_items += footprints(
            rows, by_name, outcomes, params.output_url, params.output_storage_options
        )
    part = assemble.summarize(
        rows,
        works,
        outcomes,
        run_id,
        band_column=params.service.band_column,
        plan=params.plan,
        cutout_radius=params.products.cutout_radius,
        cutout_mode=params.products.mode == "cutout",
        counted=run.counted,
    )
    part.failures = query_failures + part.failures
    run.parts.append(part)
    if len(rows) and "t_min" in rows.colnames:
        values = np.asarray(rows["t_min"], dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            run.newest_t_min.append(float(values.max()))


def _not_started(run_id: str, shard: list[Target], number: int, total: int) -> Summary:
    """A shard the run stopped before: one failure line for its targets, not one each."""
    reason = f"not started: {stopping.describe()}"
    return Summary(
        run_id=run_id, failures=[(f"{len(shard)} targets of shard {number}/{total}", reason)]
    )


def _process_all(
    params: HarvestParams, conn: Connection, works: list[ImageWork], logger
) -> dict[str, ImageOutcome]:
    """Image batches as tasks; a progress artifact follows them as they finish."""
    batches = list(
        workers.batches(works, params.concurrency.images_per_task, params.concurrency.task_workers)
    )
    image_settings = settings.image_settings(params)
    futures = [
        process_images.submit(
            conn,
            batch,
            image_settings,
            params.storage_url,
            params.storage_options,
            label=f"{i + 1}-of-{len(batches)}",
            slot=params.execution.archive_concurrency_limit,
        )
        for i, batch in enumerate(batches)
    ]
    tracker = artifacts.ProgressTracker(len(works))
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
    # Prefect types this TaskRunner[PrefectFuture[Any]], which no runner class matches (invariant)
    task_runner=ThreadPoolTaskRunner(max_workers=2),  # type: ignore[arg-type]
    persist_result=False,
)
def harvest(
    profile: Annotated[
        str | None, Field(description="YAML profile in config/")
    ] = "config/local.yaml",
    targets: Annotated[
        str | None, Field(description="target list (CSV/ECSV/Parquet/VOTable path or URL)")
    ] = None,
    ra: Annotated[
        float | str | None,
        Field(description="one target: RA (deg or hh:mm:ss)", json_schema_extra=RA_SCHEMA),
    ] = None,
    dec: Annotated[
        float | str | None,
        Field(description="one target: Dec (deg or dd:mm:ss)", json_schema_extra=DEC_SCHEMA),
    ] = None,
    radius: Annotated[
        float | None, Field(gt=0, le=10, description="deg: overlap, not containment")
    ] = None,
    target_name: str | None = None,
    bands: list[Band] | None = None,
    subtypes: list[Subtype] | None = None,
    calib_levels: list[CalibLevel] | None = None,
    time_start: Annotated[
        float | str | date | None,
        Field(description="MJD or ISO date/time (UTC)", json_schema_extra=MJD_SCHEMA),
    ] = None,
    time_end: Annotated[
        float | str | date | None,
        Field(description="MJD or ISO date/time (UTC)", json_schema_extra=MJD_SCHEMA),
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
) -> Summary:
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
    install_redaction(excepthooks=False)  # a deployment run's logs reach the Prefect DB
    params = build_params(profile, values, sources)
    preflight(params)  # a deployment run's checks; in the CLI's process already done
    run_id = str(flow_run.id or uuid.uuid4())
    runner = task_runner_for(params.execution, params.concurrency.task_workers)

    def body() -> Summary:
        if runner == harvest.task_runner:
            summary = run_harvest(params, run_id, incremental=incremental)
        else:  # a subflow with its own task runner: Dask, or another thread count
            summary = harvest_run.with_options(task_runner=runner)(
                params, run_id, incremental=incremental
            )
        crashpoint("report")
        rendezvous("report")  # tests: a stop while the artifacts are published
        artifacts.publish(summary)
        return summary

    summary = _absorbing(body)
    if _absorbed and stopping.cancelled():  # Prefect asked: the run ends Cancelled
        raise _absorbed[-1]
    if not summary.ok:
        # Prefect makes a returned State the run's final state; its data is the summary
        return Failed(  # type: ignore[return-value]
            message=artifacts.failure_message(summary), data=summary
        )
    return summary


harvest_run = flow(name="harvest-run", persist_result=False)(run_harvest)


def harvest_params(params: HarvestParams, *, incremental: bool = False) -> Summary:
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
