"""The harvest flow: targets → ObsCore → Datalink → WCS check → object storage → Parquet.

It calls the tasks of ``tasks/`` (each a thin wrapper over an ``obsharvest`` function): a
task per batch of targets (the queries) and per batch of images (Datalink, header reads,
downloads), never one per image. Here: the order of the steps, shard by shard, over
every service of the run at once, with incremental windows and the summary. Asking the
services at once is ``fanout``, what they share ``obsharvest.services``; stopping
(signals, the run deadline, Prefect cancellation) is ``stops``, each service's
connection ``service``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from astropy.table import Table
from prefect import flow, get_run_logger
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from obsharvest import assemble
from obsharvest import incremental as incremental_state
from obsharvest.metadata import MetadataStore
from obsharvest.models import (
    ImageOutcome,
    ServiceSummary,
    StoredObject,
    Summary,
    Target,
)
from obsharvest.net.redact import install_redaction
from obsharvest.products.quicklook import GalleryItem
from obsharvest.query.adql import Constraints
from obsharvest.query.obscore import QueryOptions
from obsharvest.report import split_unfinished
from obsharvest.runtime import stopping, workers
from obsharvest.runtime.crashpoints import crashpoint, rendezvous
from obsharvest.services import BAND, SameBytes, Shared, pairs, share, tally
from obsharvest.storage.output import Output
from obsharvest.storage.store import ObjectStore
from obsharvest.targets import in_sky_order
from obsharvest.tasks import artifacts, as_is, progress
from obsharvest.tasks.images import check_cutouts
from obsharvest.tasks.outputs import footprints, gallery, write_metadata

from . import heartbeats, settings, stops
from .config import as_params
from .fanout import ServiceRun, process_services, query_services
from .params import HarvestParams
from .params import Service as ServiceParams
from .preflight import constraints_of as _constraints
from .preflight import preflight, with_storage_credentials
from .quiet import quiet_library_noise
from .runners import task_runner_for
from .service import connect

log = logging.getLogger(__name__)


@dataclass
class _RunTotals:
    """What a run keeps across its shards: small, whatever the number of rows."""

    output: Output  # where its Parquet, state and gallery go: opened once, for the run
    services: list[ServiceRun]  # in the order the parameters list them
    parts: list[Summary] = field(default_factory=list)
    counted: dict[str, assemble.ImageTally] = field(default_factory=dict)  # by image
    paths: list[str] = field(default_factory=list)
    newest_t_min: list[float] = field(default_factory=list)  # per shard
    gallery_items: list[GalleryItem] = field(default_factory=list)
    images: int = 0  # the images of the shards begun so far (the progress total)
    # built once: what the run learns of its services (no async, query shapes) lasts the run
    query_options: QueryOptions = field(default_factory=QueryOptions)
    same_bytes: SameBytes = field(default_factory=SameBytes)  # one object per content

    @property
    def several(self) -> bool:
        return len(self.services) > 1


def run_harvest(params: HarvestParams, targets: list[Target], run_id: str) -> Summary:
    """The harvest as a sequence of coarse task calls, shard by shard; the run's summary.

    Each shard of ``execution.shard_targets`` targets (neighbours on the sky together) is
    queried, verified, stored and written to the Parquet before the next begins: memory is
    bounded by a shard, not by the run, and what a shard decided is on disk when it ends.
    Several services are asked at once; an image they share is worked once.
    """
    logger = get_run_logger()
    logger.info("%d targets", len(targets))
    params = with_storage_credentials(params)
    # opened once, credentials included; handed to every writer (never a flow parameter)
    output = Output(params.output_url, params.output_storage_options, settings.timeouts(params))
    with (
        contextlib.ExitStack() as started,
        stops.run_deadline(params.execution.run_deadline_seconds),
    ):
        run = _RunTotals(
            output=output,
            services=[_service(params, svc, started) for svc in params.all_services],
            query_options=settings.query_options(params),
        )
        progress.start("query", len(targets) * len(run.services))
        state = _incremental_state(params, output, run.services[0].constraints)
        shards = list(workers.batches(in_sky_order(targets), params.execution.shard_targets))
        for number, shard in enumerate(shards, 1):
            if number > 1:
                rendezvous("shard")  # tests: a stop between shards
            if stopping.requested():
                run.parts.append(_not_started(run_id, shard, number, len(shards)))
                continue
            if len(shards) > 1:
                logger.info("shard %d of %d: %d targets", number, len(shards), len(shard))
            _harvest_shard(params, shard, state, run_id, run, logger)
        summary = _sum_up(params, run, run_id, logger)
        if state is not None and summary.ok and not params.plan:
            _save_watermarks(params, state, targets, run, summary, run_id)
        if not params.plan and not stopping.requested():
            _reap_partials(params, logger)
        return summary


def _service(
    params: HarvestParams, svc: ServiceParams, started: contextlib.ExitStack
) -> ServiceRun:
    """One service, connected (an embedded archive started) for the length of the run."""
    archive = started.enter_context(connect(params, svc))
    return ServiceRun(
        archive=archive,
        constraints=_constraints(params, svc),
        image_settings=settings.image_settings(params, archive),
        tally=ServiceSummary(archive.name),
    )


def _incremental_state(
    params: HarvestParams, output: Output, base: Constraints
) -> incremental_state.State | None:
    """An incremental run's watermarks (None for a full run)."""
    if not params.incremental:
        return None
    return incremental_state.load(output, incremental_state.constraints_key(base))


def _sum_up(params: HarvestParams, run: _RunTotals, run_id: str, logger) -> Summary:
    """The gallery, then the run's summary from its shards' parts."""
    if run.gallery_items:
        gallery(run.gallery_items, run.output)
    rendezvous("summary")  # tests: a stop while the run sums up
    summary = assemble.merge(run_id, run.parts, plan=params.plan)
    summary.services = [s.tally for s in run.services]
    summary.interrupted = stopping.describe() if stopping.requested() else None
    for line in split_unfinished(summary.failures)[1]:  # one line, not one per image
        logger.warning(line)
    summary.metadata_url = run.output.metadata_url
    summary.metadata_written = bool(run.paths)
    summary.storage_url = params.storage_url
    logger.info("metadata written: %d files", len(run.paths))
    return summary


def _save_watermarks(
    params: HarvestParams,
    state: incremental_state.State,
    targets: list[Target],
    run: _RunTotals,
    summary: Summary,
    run_id: str,
) -> None:
    """An incremental run that ended well moves its targets' watermarks forward."""
    incremental_state.save(
        run.output,
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


def _harvest_shard(
    params: HarvestParams,
    shard: list[Target],
    state: incremental_state.State | None,
    run_id: str,
    run: _RunTotals,
    logger,
) -> None:
    """Query, verify, store and write one shard; its summary and paths go into ``run``."""
    by_name = {t.name: t for t in shard}
    found, query_failures = query_services(
        params, run.services, shard, state, run.query_options, logger
    )
    priors = assemble.priors_from(  # the current view, of earlier runs: shards' targets differ
        MetadataStore(run.output).read(
            columns=assemble.PRIOR_COLUMNS, targets=by_name, exclude_run=run_id
        )
    )
    shared = share(
        {
            s.archive.name: assemble.image_works(
                found[s.archive.name], by_name, priors, band_column=s.archive.band_column
            )
            for s in run.services
        }
    )
    works = [w for s in run.services for w in shared.works[s.archive.name]]
    rows_total = sum(len(found[s.archive.name]) for s in run.services)
    logger.info("%d (target, image) rows, %d unique images", rows_total, len(works))
    if params.products.mode == "cutout" and params.products.cutout_fallback == "fail":
        for s in run.services:
            if shared.works[s.archive.name]:
                check_cutouts(s.archive, shared.works[s.archive.name], s.image_settings)
    run.images += len(works)
    progress.start("images", run.images)
    outcomes, extra = run.same_bytes.fold(
        works, process_services(params, run.services, shared.works), shared
    )
    _remove(params, extra, logger)
    outcomes = shared.outcomes_for_all(outcomes)
    _write_shard(params, run, found, by_name, outcomes, shared, run_id)
    bands = {s.archive.name: s.archive.band_column for s in run.services}
    part = assemble.summarize(
        pairs(found, bands, shared.alias),
        works,
        outcomes,
        run_id,
        band_column=BAND,
        plan=params.plan,
        cutout_radius=params.products.cutout_radius,
        cutout_mode=params.products.mode == "cutout",
        counted=run.counted,
    )
    part.failures = query_failures + _named(part.failures, run, shared)
    run.parts.append(part)
    run.newest_t_min += _newest_t_min(found.values())


def _write_shard(
    params: HarvestParams,
    run: _RunTotals,
    found: Mapping[str, Table],
    by_name: dict[str, Target],
    outcomes: dict[str, ImageOutcome],
    shared: Shared,
    run_id: str,
) -> None:
    """Each service's rows to the Parquet (and footprint maps), its line of the summary."""
    for s in run.services:
        rows = found[s.archive.name]
        if len(rows):
            run.paths += write_metadata(
                as_is(rows),
                as_is(by_name),
                as_is(outcomes),
                run_id,
                run.output,
                service=s.archive.name,
                served_by=as_is(shared.served_by),
            )
        if params.products.quicklook and len(rows) and not (params.plan or stopping.requested()):
            run.gallery_items += footprints(
                as_is(rows), as_is(by_name), as_is(outcomes), run.output
            )
        tally(s.tally, rows, shared.works[s.archive.name], shared.served_by, outcomes)


def _named(
    failures: list[tuple[str, str]], run: _RunTotals, shared: Shared
) -> list[tuple[str, str]]:
    """Of several services, each failed image's reason starts with its service's name."""
    if not run.several:
        return failures
    owner = {w.key: name for name, works in shared.works.items() for w in works}
    return [(key, f"{owner[key]}: {why}" if key in owner else why) for key, why in failures]


def _fits_store(params: HarvestParams) -> ObjectStore:
    return ObjectStore(
        params.storage_url, params.storage_options, timeout=settings.timeouts(params)
    )


def _reap_partials(params: HarvestParams, logger) -> None:
    """Remove the hidden temporaries that killed runs left in the FITS store (a local
    disk's or Azure's; S3 and GCS make none), once they are an hour old: a run writing
    into the same store now keeps its own. A store that cannot be listed is only warned
    about: the run's results are written already."""
    try:
        removed = _fits_store(params).delete_partials()
    except Exception as exc:  # noqa: BLE001 - housekeeping must not fail a finished run
        logger.warning("could not look for partial uploads of killed runs: %s", exc)
        return
    if removed:
        logger.info("removed %d partial uploads left by killed runs", len(removed))


def _remove(params: HarvestParams, extra: list[StoredObject], logger) -> None:
    """Remove the files this run stored twice (the same bytes under two DIDs): their rows
    point at the first copy."""
    if not extra:
        return
    store = _fits_store(params)
    for stored in extra:
        store.delete(stored.key)
    logger.info("%d files stored twice (the same bytes under other DIDs): kept once", len(extra))


def _newest_t_min(tables) -> list[float]:
    """The newest image start time of each service's rows (incremental watermarks)."""
    out = []
    for rows in tables:
        if len(rows) and "t_min" in rows.colnames:
            values = np.asarray(rows["t_min"], dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                out.append(float(values.max()))
    return out


def _not_started(run_id: str, shard: list[Target], number: int, total: int) -> Summary:
    """A shard the run stopped before: one failure line for its targets, not one each."""
    reason = f"not started: {stopping.describe()}"
    return Summary(
        run_id=run_id, failures=[(f"{len(shard)} targets of shard {number}/{total}", reason)]
    )


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = (flow_run.parameters or {}).get("params") or {}
    if isinstance(p, HarvestParams):
        p = p.model_dump(mode="json")
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
    # validated in the flow (as_params): an error is one line naming the key, with the
    # closest valid one; the server checks a deployment run's form against the schema
    validate_parameters=False,
)
def harvest(params: HarvestParams) -> Summary:
    """Harvest the images that truly contain each target from an ObsTAP service.

    ``params`` is built and validated once, where it enters: the command line and
    ``obsharvest.harvest`` build it from a profile and overrides, the Prefect UI and
    deployments give it as this form. Parameters the preflight has checked (in the
    CLI's process) are not checked again; others are, before any work starts.
    """
    from prefect.runtime import flow_run

    quiet_library_noise()
    install_redaction(excepthooks=False)  # a deployment run's logs reach the Prefect DB
    params = preflight(as_params(params))  # a deployment run's checks; the CLI's carried over
    targets = params.checked_targets or []
    run_id = str(flow_run.id or uuid.uuid4())
    runner = task_runner_for(params.execution, _task_workers(params))

    def body() -> Summary:
        if runner == _current_task_runner():
            summary = run_harvest(params, targets, run_id)
        else:  # a subflow with its own task runner: Dask, or another thread count
            summary = harvest_run.with_options(task_runner=runner)(params, targets, run_id)
        crashpoint("report")
        rendezvous("report")  # tests: a stop while the artifacts are published
        artifacts.publish(summary)
        return summary

    with heartbeats.beating():
        summary = stops.absorbing(body)
    if stops.absorbed and stopping.cancelled():  # Prefect asked: the run ends Cancelled
        raise stops.absorbed[-1]
    if not summary.ok:
        # Prefect makes a returned State the run's final state; its data is the summary
        return Failed(  # type: ignore[return-value]
            message=artifacts.failure_message(summary), data=summary
        )
    return summary


harvest_run = flow(name="harvest-run", persist_result=False)(run_harvest)


def _current_task_runner():
    """The task runner this flow run was started with (``harvest``'s own, or the one
    :func:`for_params` gave it)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.task_runner if context is not None else harvest.task_runner


def for_params(params: HarvestParams):
    """The flow with the thread pool ``params`` asks for (task_workers per service): run
    in this process (the CLI, ``obsharvest.harvest``), it then needs no subflow. Dask and
    deployment runs keep the subflow (their runner is not the flow's)."""
    if params.execution.runner != "threads":
        return harvest
    return _threaded(_task_workers(params))


@functools.lru_cache(maxsize=8)
def _threaded(task_workers: int):
    """``harvest`` with a pool of ``task_workers`` threads, made once per size: a flow's
    options rebuild its parameter schema (~40 ms per run here), and each run enters a
    duplicate of the task runner, never the one kept here."""
    return harvest.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=task_workers)  # type: ignore[arg-type]
    )


def run_here(params: HarvestParams):
    """The flow's final state, run in this thread with the thread pool ``params`` asks for
    and heartbeats that end with its work (``heartbeats``)."""
    with heartbeats.in_process():
        return for_params(params)(params, return_state=True)


def _task_workers(params: HarvestParams) -> int:
    """Each service its task_workers: several are asked at once, not one after another."""
    return params.concurrency.task_workers * len(params.all_services)


def harvest_params(params: HarvestParams, *, incremental: bool | None = None) -> Summary:
    """Run the flow in this process for ``params`` (the CLI, ``obsharvest.harvest``, tests).

    Returns the summary whether or not some images failed (``summary.ok`` says); errors
    that ended the run are raised. ``incremental`` overrides ``params.incremental``.
    """
    stopping.reset()  # a new run in this process: an earlier run's stop is not this one's
    stops.absorbed.clear()
    if incremental is not None and incremental != params.incremental:
        params = params.model_copy(update={"incremental": incremental})
    state = run_here(params)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result
