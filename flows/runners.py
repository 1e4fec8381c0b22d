"""The Prefect task runner a harvest runs its batches on, from the ``execution`` parameters.

Threads are the default: the batches do network I/O and release the GIL, and a thread pool
in the flow's process costs nothing to start. Dask spreads the batches over processes or
machines (an existing scheduler, or a cluster started for the run, such as
``dask_jobqueue.SLURMCluster`` on an HPC system); the batch tasks take and return plain
picklable records, so they run there unchanged. prefect-dask and distributed are the
optional ``dask`` extra: imported only when asked for.
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from obsharvest.errors import RunnerError

from .params import Execution


def task_runner_for(execution: Execution, task_workers: int = 2) -> TaskRunner[Any]:
    """A fresh task runner for one run (task runners are entered once per flow run).

    ``task_workers`` is the thread pool size (``concurrency.task_workers``); Dask sizes
    itself from its cluster.
    """
    if execution.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=task_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise RunnerError(
            f"execution.runner 'dask' needs prefect-dask (pip install 'obsharvest[dask]'): {exc}"
        ) from None
    if execution.dask_address:
        return DaskTaskRunner(address=execution.dask_address)
    try:
        return DaskTaskRunner(
            cluster_class=execution.dask_cluster_class,
            cluster_kwargs=dict(execution.dask_cluster_kwargs),
            adapt_kwargs=dict(execution.dask_adapt_kwargs) or None,
        )
    except (ImportError, AttributeError, ValueError) as exc:
        raise RunnerError(
            f"execution.dask_cluster_class {execution.dask_cluster_class!r}: {exc}"
        ) from None
