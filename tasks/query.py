"""ObsCore queries, one task per batch of targets."""

from __future__ import annotations

from astropy.table import Table
from prefect import get_run_logger, task

from obsharvest.models import Target
from obsharvest.net.http import Connection
from obsharvest.query.adql import Constraints
from obsharvest.query.batch import query_batch
from obsharvest.query.obscore import QueryOptions, Strategy

from . import progress
from .slots import archive_slot


@task(name="query-obscore", task_run_name="query-{label}")
def query_obscore(
    conn: Connection,
    targets: list[Target],
    constraints: Constraints,
    strategy: Strategy,
    options: QueryOptions,
    timeout: tuple[float, float],
    label: str,
    slot: str | None = None,
) -> Table:
    with archive_slot(slot):
        rows, queries = query_batch(conn, targets, constraints, strategy, options, timeout)
    get_run_logger().info(
        "%d targets: %d queries, %d (target, image) rows", len(targets), queries, len(rows)
    )
    progress.advance("query", len(targets))
    return rows
