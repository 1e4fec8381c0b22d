"""The library's settings, built once per run from the parameters.

Tasks take these small immutable records, never ``HarvestParams``: the library and the
tasks stay unaware of how a value was given (profile, ``--set``, flag, Prefect form).
"""

from __future__ import annotations

from obsharvest.images import ImageSettings
from obsharvest.net.retry import RetryPolicy
from obsharvest.query.obscore import QueryOptions, Strategy

from .params import HarvestParams


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


def image_settings(params: HarvestParams) -> ImageSettings:
    c, v, p = params.concurrency, params.verification, params.products
    return ImageSettings(
        verification=v.mode,
        margin_px=v.margin_px,
        block_size=v.header_block_size,
        plan=params.plan,
        verify_workers=c.verify_workers,
        download_workers=c.download_workers,
        max_per_host=c.max_per_host,
        retry=retry_policy(params),
        mask=v.mask,
        mode=p.mode,
        cutout_radius=p.cutout_radius,
        quicklook=p.quicklook,
        timeout=timeouts(params),
        image_deadline=params.retry.image_deadline_seconds,
        cutout_fallback=p.cutout_fallback == "image",
        datalink_batch=c.datalink_batch,
        datalink_workers=c.datalink_workers,
    )
