"""The library's settings, built once per run from the parameters.

Tasks take these small immutable records, never ``HarvestParams``: the library and the
tasks stay unaware of how a value was given (profile, ``--set``, flag, Prefect form).
"""

from __future__ import annotations

from obsharvest.images import processes
from obsharvest.images.settings import ImageSettings
from obsharvest.net.archive import Archive, Politeness
from obsharvest.net.retry import RetryPolicy
from obsharvest.query.obscore import QueryOptions, Strategy

from .params import HarvestParams, Service


def timeouts(params: HarvestParams) -> tuple[float, float]:
    """(connect, read) seconds of every network call."""
    return params.retry.connect_timeout, params.retry.read_timeout


def retry_policy(params: HarvestParams) -> RetryPolicy:
    r = params.retry
    return RetryPolicy(
        attempts=r.attempts,
        initial_wait=r.initial_wait,
        max_wait=r.max_wait,
        deadline=r.deadline_seconds,
    )


def query_options(params: HarvestParams) -> QueryOptions:
    q = params.query
    return QueryOptions(
        mode=q.mode, maxrec=q.maxrec, deadline=q.deadline_seconds, retry=retry_policy(params)
    )


def strategy(params: HarvestParams) -> Strategy:
    q = params.query
    return Strategy(kind=q.strategy, batch_size=q.batch_size, prefilter_radius=q.prefilter_radius)


def archive(
    params: HarvestParams,
    svc: Service,
    tap_url: str,
    token: str | None,
    token_source: str | None,
) -> Archive:
    """One of the run's services as one record: what belongs to it travels together."""
    c = params.concurrency
    return Archive(
        name=svc.label,
        tap_url=tap_url,
        token=token,
        token_hosts=tuple(svc.extra_token_hosts),
        token_source=token_source,
        timeout=timeouts(params),
        retry=retry_policy(params),
        politeness=Politeness(
            start_per_host=c.verify_workers,
            max_per_host=c.max_per_host,
            slot=params.execution.archive_concurrency_limit,
        ),
        band_column=svc.band_column,
    )


def image_settings(params: HarvestParams, archive: Archive) -> ImageSettings:
    """How the run's images are worked against ``archive`` (its retries, timeouts and
    politeness are the archive's own)."""
    c, v, p = params.concurrency, params.verification, params.products
    return ImageSettings(
        verification=v.mode,
        margin_px=v.margin_px,
        block_size=v.header_block_size,
        plan=params.plan,
        verify_workers=archive.politeness.start_per_host,
        download_workers=c.download_workers,
        max_per_host=archive.politeness.max_per_host,
        retry=archive.retry,
        mask=v.mask,
        mode=p.mode,
        cutout_radius=p.cutout_radius,
        quicklook=p.quicklook,
        timeout=archive.timeout,
        image_deadline=params.retry.image_deadline_seconds,
        cutout_fallback=p.cutout_fallback == "image",
        datalink_batch=c.datalink_batch,
        datalink_workers=c.datalink_workers,
        processes=image_processes(params),
    )


def image_processes(params: HarvestParams) -> int:
    """How many image worker processes may run at once: the batches that run at once
    (``task_workers``), or 0 for none (off, one core, or tasks sent to Dask, whose worker
    processes may not have children)."""
    wanted = params.concurrency.image_processes
    if wanted is False or params.execution.runner != "threads":
        return 0
    if wanted == "auto" and processes.usable_cores() < 2:
        return 0
    return params.concurrency.task_workers
