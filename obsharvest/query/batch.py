"""One batch of targets against a TAP service: the unit of work of a query task."""

from __future__ import annotations

from collections.abc import Sequence

from astropy.table import Table

from obsharvest.models import Target
from obsharvest.net.archive import Archive
from obsharvest.query.adql import Constraints
from obsharvest.query.capabilities import probe_features
from obsharvest.query.obscore import QueryOptions, Strategy, query_targets
from obsharvest.query.service import TapService


def query_batch(
    archive: Archive,
    targets: Sequence[Target],
    constraints: Constraints,
    strategy: Strategy,
    options: QueryOptions,
) -> tuple[Table, int]:
    """The (target, image) rows of ``targets`` and how many queries it took, over a
    session of its own (a task may run in another thread or a Dask worker)."""
    service = TapService(archive.tap_url, session=archive.session())
    features = probe_features(service, options.retry)
    queries: list[str] = []
    rows = query_targets(
        service, list(targets), constraints, strategy, features, options, on_query=queries.append
    )
    return rows, len(queries)
