"""Every service of a run asked at once: each one's query and image batches are submitted
as tasks before any is waited on, then collected; a failed batch becomes failures in the
service's own words. Used by ``harvest.py`` once per shard."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from astropy.table import Table, vstack

from obsharvest import incremental as incremental_state
from obsharvest.errors import UserError
from obsharvest.images import processes
from obsharvest.images.settings import ImageSettings
from obsharvest.models import ImageOutcome, ImageWork, ServiceSummary, Target
from obsharvest.net.archive import Archive
from obsharvest.net.retry import one_line
from obsharvest.query.adql import Constraints
from obsharvest.query.obscore import QueryOptions
from obsharvest.runtime import stopping, workers
from obsharvest.tasks import artifacts, as_is
from obsharvest.tasks.images import process_images
from obsharvest.tasks.query import query_obscore

from . import settings, stops
from .params import HarvestParams

T = TypeVar("T")


@dataclass
class ServiceRun:
    """One of the run's services while the run lasts: its archive record, its query
    constraints (its band column, its extra_where), how its images are worked, and its
    line of the summary."""

    archive: Archive
    constraints: Constraints
    image_settings: ImageSettings
    tally: ServiceSummary


def query_services(
    params: HarvestParams,
    services: list[ServiceRun],
    shard: list[Target],
    state: incremental_state.State | None,
    options: QueryOptions,
    logger,
) -> tuple[dict[str, Table], list[tuple[str, str]]]:
    """Every service's rows for the shard (all services asked at once), and the targets
    whose queries failed, each with the service's words."""
    groups = incremental_state.windows(shard, state) if state is not None else {None: shard}
    several = len(services) > 1
    submitted = []
    for watermark, group in groups.items():
        for s in services:
            constraints = _window(s.constraints, watermark, len(group), logger)
            started = time.monotonic()
            submitted.append(
                (s, _submit_queries(params, s.archive, group, constraints, options, several))
            )
            s.tally.seconds -= started  # plus the time its last batch ends, below
    tables: dict[str, list[Table]] = {s.archive.name: [] for s in services}
    failures: list[tuple[str, str]] = []
    for s, batches in submitted:
        found, failed = _collect_queries(batches, s, several, logger)
        tables[s.archive.name] += found
        failures += failed
        s.tally.seconds += time.monotonic()
    return {n: _stacked(t) for n, t in tables.items()}, failures


def _window(base: Constraints, watermark: float | None, count: int, logger) -> Constraints:
    """An incremental group's constraints: from its watermark on."""
    if watermark is None:
        return base
    start = max(watermark, base.t_min) if base.t_min is not None else watermark
    logger.info("%d targets: incremental window from MJD %.6f", count, start)
    return base.with_time(start, base.t_max)


def _as_is(params: HarvestParams, value: T) -> T:
    """``value`` unwalked by Prefect (``tasks.as_is``) where the tasks run in threads;
    prefect-dask hands a quoted argument to the task still quoted, so Dask gets it bare."""
    return as_is(value) if params.execution.runner == "threads" else value


def _submit_queries(
    params: HarvestParams,
    archive: Archive,
    targets: list[Target],
    constraints: Constraints,
    options: QueryOptions,
    several: bool,
) -> list[tuple[Any, list[Target]]]:
    """A query task per batch of targets, submitted (the services' run at once)."""
    chunks = list(workers.batches(targets, params.concurrency.targets_per_task))
    strategy = settings.strategy(params)
    prefix = f"{archive.name}-" if several else ""
    return [
        (
            query_obscore.submit(
                archive,
                _as_is(params, chunk),
                constraints,
                strategy,
                options,
                label=f"{prefix}{i + 1}-of-{len(chunks)}",
            ),
            chunk,
        )
        for i, chunk in enumerate(chunks)
    ]


def _collect_queries(
    submitted: list[tuple[Any, list[Target]]], s: ServiceRun, several: bool, logger
) -> tuple[list[Table], list[tuple[str, str]]]:
    """The batches' rows; a failed batch's targets as failures, with the service's words."""
    tables, failures = [], []
    named = f"{s.archive.name}: " if several else ""
    for future, chunk in submitted:
        try:
            tables.append(stops.result(future))
        except UserError:  # the user's to fix: ends the run (obsharvest.errors)
            raise
        except stopping.Interrupted as exc:
            failures += [(f"target {t.name}", f"{named}{exc}") for t in chunk]
        except Exception as exc:  # retries exhausted: these targets are missing, say why
            reason = f"{named}ObsCore query failed: {one_line(exc)}"
            logger.error("%d targets not queried: %s", len(chunk), reason)
            failures += [(f"target {t.name}", reason) for t in chunk]
            s.tally.failed += len(chunk)
    return [t for t in tables if len(t)], failures


def _stacked(tables: list[Table]) -> Table:
    return vstack(tables, metadata_conflicts="silent") if tables else Table()


def process_services(
    params: HarvestParams, services: list[ServiceRun], works: Mapping[str, list[ImageWork]]
) -> dict[str, ImageOutcome]:
    """Every service's image batches as tasks, all submitted before any is waited on; a
    progress artifact follows them as they finish."""
    submitted = []
    for s in services:
        started = time.monotonic()
        submitted.append((s, _submit_images(params, s, works[s.archive.name], len(services) > 1)))
        s.tally.seconds -= started
    tracker = artifacts.ProgressTracker(sum(len(w) for w in works.values()))
    outcomes: dict[str, ImageOutcome] = {}
    for s, batches in submitted:
        outcomes.update(_collect_images(batches, tracker))
        s.tally.seconds += time.monotonic()
    return outcomes


def _submit_images(
    params: HarvestParams, s: ServiceRun, works: list[ImageWork], several: bool
) -> list[tuple[Any, list[ImageWork]]]:
    batches = list(
        workers.batches(works, params.concurrency.images_per_task, params.concurrency.task_workers)
    )
    prefix = f"{s.archive.name}-" if several else ""
    settings = processes.sized(s.image_settings, len(batches))
    return [
        (
            process_images.submit(
                s.archive,
                _as_is(params, batch),
                settings,
                params.storage_url,
                params.storage_options,
                label=f"{prefix}{i + 1}-of-{len(batches)}",
            ),
            batch,
        )
        for i, batch in enumerate(batches)
    ]


def _collect_images(
    submitted: list[tuple[Any, list[ImageWork]]], tracker: artifacts.ProgressTracker
) -> dict[str, ImageOutcome]:
    """The batches' outcomes; a batch that crashed or was abandoned: failures, with why."""
    outcomes: dict[str, ImageOutcome] = {}
    for future, batch in submitted:
        try:
            result = stops.result(future, raise_on_failure=False)
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
