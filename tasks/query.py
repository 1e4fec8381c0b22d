"""ObsCore queries, one task per batch of targets."""

from __future__ import annotations

import logging

from astropy.table import Table
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from obsharvest.errors import RemoteError, UserError
from obsharvest.models import Target
from obsharvest.net.archive import Archive
from obsharvest.net.retry import one_line
from obsharvest.query.adql import Constraints
from obsharvest.query.batch import query_batch
from obsharvest.query.obscore import QueryOptions, Strategy

from . import progress
from .images import _drop_empty_tracebacks
from .slots import archive_slot


@task(name="query-obscore", task_run_name="query-{label}", cache_policy=NO_CACHE)
def query_obscore(
    archive: Archive,
    targets: list[Target],
    constraints: Constraints,
    strategy: Strategy,
    options: QueryOptions,
    label: str,
) -> Table:
    """The batch's (target, image) rows.

    A service that kept failing past the retries (``ServiceError``, or another remote
    error that is not the user's to fix) is no bug: the task ends as a Failed state that
    carries the exception instead of raising it, so Prefect logs no task traceback, the UI
    still shows the batch red, and the flow reports its targets in one line.
    """
    try:
        with archive_slot(archive.politeness.slot):
            rows, queries = query_batch(archive, targets, constraints, strategy, options)
    except RemoteError as exc:
        if isinstance(exc, UserError):
            raise  # a refused token or URL ends the run with its own line
        _drop_empty_tracebacks(logging.getLogger("prefect.task_runs"))
        # Prefect makes a returned State the task's final state; result() raises its data
        return Failed(message=one_line(exc), data=exc)
    get_run_logger().info(
        "%d targets: %d queries, %d (target, image) rows", len(targets), queries, len(rows)
    )
    progress.advance("query", len(targets))
    return rows
