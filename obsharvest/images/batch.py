"""A batch of images: each one reached, decided, kept. The harvest's inner loop.

One call handles a batch of images (hundreds) with thread pools inside, so Prefect sees a
few coarse tasks, never one per image. Each image goes through the same steps in order
(:func:`process_image`); each step is a function of its own module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from functools import partial

import requests

from obsharvest.access.datalink import DatalinkResolver
from obsharvest.models import Containment, ImageOutcome, ImageWork, Verdict
from obsharvest.net import pacing
from obsharvest.net.archive import Archive
from obsharvest.runtime import stopping, workers
from obsharvest.storage.store import ObjectStore

from .context import Batch, Deadline
from .cutout import check_cutouts_offered, cutouts
from .download import stored_image
from .failure import reason_for
from .links import UNSETTLED, Links, reach
from .mask import mask_checked
from .settings import ImageSettings
from .verify import prior_verdicts, read_verdicts, reusable

log = logging.getLogger(__package__)  # "obsharvest.images": one logger for the package

OnDone = Callable[[ImageOutcome], None]


def process_images(
    works: Sequence[ImageWork],
    resolver: DatalinkResolver,
    store: ObjectStore,
    settings: ImageSettings,
    on_done: OnDone | None = None,
) -> list[ImageOutcome]:
    """Decide and store every image of the batch; never raises for one image's trouble."""
    outcomes, fresh = _reuse_decided(works, store, settings, on_done)
    if not fresh:
        return [outcomes[w.key] for w in works]
    in_flight = max(settings.verify_workers, settings.max_per_host)
    batch = Batch(
        Links(resolver, fresh),
        store,
        settings,
        _data_session(in_flight + settings.download_workers),
        threading.Semaphore(settings.download_workers),
    )
    started = time.monotonic()
    for work, future in workers.run_all(partial(paced, batch), fresh, in_flight, name="image"):
        outcome = _outcome_of(work, future)
        outcomes[work.key] = outcome
        if on_done:
            on_done(outcome)
    if not stopping.requested():  # else threads may still use it; they are abandoned
        batch.session.close()
    log.info("%d images processed in %.1f s", len(fresh), time.monotonic() - started)
    return [outcomes[w.key] for w in works]


def _reuse_decided(
    works: Sequence[ImageWork], store: ObjectStore, settings: ImageSettings, on_done: OnDone | None
) -> tuple[dict[str, ImageOutcome], list[ImageWork]]:
    """The outcomes an earlier run decided and stored, and the images left to work on."""
    outcomes: dict[str, ImageOutcome] = {}
    fresh = []
    for work in works:
        if stopping.requested():
            fresh.append(work)  # the pool records it as interrupted without touching it
            continue
        reused = reusable(work, store, settings)
        if reused is None:
            fresh.append(work)
            continue
        outcomes[work.key] = reused
        if on_done:
            on_done(reused)
    return outcomes, fresh


def _data_session(pool_size: int) -> requests.Session:
    """One session for header reads and downloads: keep-alive connections across images."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _outcome_of(work: ImageWork, future: Future[ImageOutcome]) -> ImageOutcome:
    if future.done() and not future.cancelled():
        return future.result()
    # the run stopped before this image was done
    return ImageOutcome(work.key, {}, failure=stopping.describe())


def paced(batch: Batch, work: ImageWork) -> ImageOutcome:
    """One image, holding a slot of its host's adaptive limit (net.pacing)."""
    settings = batch.settings
    try:
        stopping.check()
        link = batch.links.get(work.key)
        limit = pacing.limit_for(
            link.url or work.access_url, settings.verify_workers, settings.max_per_host
        )
        with limit.slot():
            policy = replace(settings.retry, on_throttle=limit.throttled)
            return process_image(batch, work, Deadline.start(policy, settings.image_deadline))
    except stopping.Interrupted as exc:
        return ImageOutcome(work.key, {}, failure=str(exc))


def process_image(batch: Batch, work: ImageWork, deadline: Deadline) -> ImageOutcome:
    """One image's steps: reach it, decide its verdicts (an earlier run's, or its header's,
    then its mask's), keep what they ask for. A step that raises ends the image with a
    failure row holding the verdicts decided so far."""
    verdicts: dict[str, Containment] = {}
    try:
        opened = reach(batch.links, work, batch.settings, batch.session)
        known = prior_verdicts(work)  # e.g. decided by a plan run: no header read again
        verdicts = read_verdicts(batch, work, known, opened, deadline)
        if batch.settings.mask and known is None and verdicts:
            verdicts = mask_checked(batch, work, verdicts)
        return keep(batch, work, verdicts, deadline)
    except Exception as exc:  # retries exhausted, an unexpected reply, a bug: record, go on
        return failed(work, batch.links, verdicts, reason_for(exc, work.key))


def keep(
    batch: Batch, work: ImageWork, verdicts: dict[str, Containment], deadline: Deadline
) -> ImageOutcome:
    """What the verdicts ask for: nothing (a plan, or no target on the image), a cutout per
    target, or the whole image."""
    settings = batch.settings
    wanted = settings.verification != "skip" or any(
        c.verdict == Verdict.CONTAINS for c in verdicts.values()
    )
    link = batch.links.get(work.key)
    if settings.plan or not wanted:
        return ImageOutcome(
            work.key, verdicts, content_length=link.content_length, access=link.access
        )
    if settings.mode == "cutout" and (
        (link.soda_url and link.soda_id) or not settings.cutout_fallback
    ):
        return cutouts(batch, work, verdicts)
    return stored_image(batch, work, verdicts, deadline)


def failed(
    work: ImageWork, links: Links, verdicts: dict[str, Containment], reason: str
) -> ImageOutcome:
    link = links.get(work.key)
    access = None if link.access == UNSETTLED else link.access
    return ImageOutcome(
        work.key, verdicts, failure=reason, content_length=link.content_length, access=access
    )


def _resolver(session: requests.Session, settings: ImageSettings, workers: int) -> DatalinkResolver:
    return DatalinkResolver(
        session,
        batch_size=settings.datalink_batch,
        workers=workers,
        retry=settings.retry,
        timeout=settings.timeout,
    )


def harvest_images(
    archive: Archive,
    works: Sequence[ImageWork],
    settings: ImageSettings,
    storage_url: str,
    storage_options: Mapping | None = None,
    on_done: OnDone | None = None,
) -> list[ImageOutcome]:
    """:func:`process_images` over a session and a store of its own: the unit of work of
    an image task (which may run in another thread or a Dask worker)."""
    session = archive.session(pool=max(settings.datalink_workers, 4))
    settings = replace(settings, auth_headers=session.auth_headers)
    store = ObjectStore(storage_url, dict(storage_options or {}), timeout=settings.timeout)
    resolver = _resolver(session, settings, settings.datalink_workers)
    return process_images(works, resolver, store, settings, on_done=on_done)


def check_cutouts(archive: Archive, works: Sequence[ImageWork], settings: ImageSettings) -> None:
    """:func:`check_cutouts_offered` over a session of its own (one Datalink request)."""
    session = archive.session()
    check_cutouts_offered(works, _resolver(session, settings, workers=1))
