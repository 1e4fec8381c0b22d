"""Image work (Datalink, header reads, downloads), one task per batch of images."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from obsharvest.images import batch, processes
from obsharvest.images.settings import ImageSettings
from obsharvest.models import ImageOutcome, ImageWork
from obsharvest.net.archive import Archive
from obsharvest.runtime import stopping

from . import progress
from .slots import archive_slot

LOG_LINE_CAP = 300  # characters of one failed image's log line (a reason can be long)


@task(name="process-images", task_run_name="images-{label}", cache_policy=NO_CACHE)
def process_images(
    archive: Archive,
    works: list[ImageWork],
    settings: ImageSettings,
    storage_url: str,
    storage_options: Mapping,
    label: str,
) -> list[ImageOutcome]:
    """A batch's outcomes; a Failed state (with the outcomes as its data) when some images
    failed, so the UI shows the batch red while every decided image is kept."""
    with archive_slot(archive.politeness.slot):
        harvest = (
            processes.harvest_images if processes.wanted(settings, works) else batch.harvest_images
        )
        outcomes = harvest(
            archive,
            works,
            settings,
            storage_url,
            storage_options,
            on_done=lambda o: progress.advance(
                "images", 1, o.stored.size if o.stored and o.downloaded else 0
            ),
        )
    outcomes = BatchOutcomes(outcomes)
    failed = [o for o in outcomes if o.failure]
    logger = get_run_logger()
    unfinished = 0  # left by a stop: counted, not a line each (the flow says it once)
    for outcome in failed:  # one line each: the key and why, never the outcome's repr
        if (outcome.failure or "").startswith(stopping.INTERRUPTED):
            unfinished += 1
        else:
            logger.warning(capped(f"image {outcome.key} failed: {outcome.failure}"))
    logger.info(
        "%d images: %d stored, %d failed, %d not finished",
        len(works),
        sum(1 for o in outcomes if o.stored),
        len(failed) - unfinished,
        unfinished,
    )
    if failed:
        _drop_empty_tracebacks(logging.getLogger("prefect.task_runs"))
        # Prefect makes a returned State the task's final state; its data are the outcomes
        return Failed(  # type: ignore[return-value]
            message=capped(
                f"{len(failed)} of {len(works)} images failed; first: "
                f"{failed[0].key}: {failed[0].failure}"
            ),
            data=outcomes,
        )
    return outcomes


@task(name="check-cutouts", cache_policy=NO_CACHE)
def check_cutouts(archive: Archive, works: list[ImageWork], settings: ImageSettings) -> None:
    """Before any image work: does the archive offer SODA at all? (one Datalink request)"""
    batch.check_cutouts(archive, works, settings)


def capped(text: str, limit: int = LOG_LINE_CAP) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BatchOutcomes(list):
    """An image batch's outcomes, with a one-line repr.

    Prefect logs the repr of a Failed state a task returns, and that repr holds the state's
    data: with a plain list, the repr of every ImageOutcome of the batch on one line (20 kB
    for a few dozen images). The reasons are already logged one line per image.
    """

    def __repr__(self) -> str:
        failed = sum(1 for o in self if o.failure)
        return f"<{len(self)} image outcomes, {failed} failed>"


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a returned Failed state with ``exc_info=True`` outside any except
    block (``task_engine.handle_retry``); formatters print that as a stray ``NoneType: None``
    line. A record with no exception to show loses its empty ``exc_info``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


def _drop_empty_tracebacks(logger: logging.Logger) -> None:
    if not any(isinstance(f, _NoEmptyTraceback) for f in logger.filters):
        logger.addFilter(_NoEmptyTraceback())
