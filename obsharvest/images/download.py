"""Image mode: the whole file, streamed to the store (and its quicklook beside it)."""

from __future__ import annotations

from functools import partial

from obsharvest.models import Containment, ImageOutcome, ImageWork, StoredObject
from obsharvest.storage.download import download

from .context import Batch, Deadline
from .links import with_fresh_url
from .quicklook import first_wanted, quicklook


def stored_image(
    batch: Batch, work: ImageWork, verdicts: dict[str, Containment], deadline: Deadline
) -> ImageOutcome:
    """Store the image (holding a download slot) and say what was stored."""
    length = batch.links.get(work.key).content_length
    with batch.downloads:
        stored = with_fresh_url(
            batch.links,
            work.key,
            partial(_download, batch, work),
            deadline.budget(),
            f"download of {work.key}",
        )
    looks = {}
    if batch.settings.quicklook:
        first = first_wanted(work, verdicts)
        looks = {
            first.name: quicklook(batch.store, stored, work.storage_key, first, work, verdicts)
        }
    return ImageOutcome(
        work.key,
        verdicts,
        stored=stored,
        content_length=length,
        downloaded=not stored.skipped,
        quicklooks=looks,
        access=batch.links.get(work.key).access,
        kept_for_all=batch.settings.verification != "skip",
    )


def _download(batch: Batch, work: ImageWork, url: str) -> StoredObject:
    """One attempt: the file at ``url``, checked against the size Datalink announced."""
    return download(
        url,
        batch.store,
        work.storage_key,
        session=batch.session,
        headers=batch.settings.headers_for(url),
        expected_size=batch.links.get(work.key).content_length,
        timeout=batch.settings.timeout,
    )
