"""Slots of a Prefect global concurrency limit, held per batch."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prefect import get_run_logger
from prefect.concurrency.sync import concurrency


@contextlib.contextmanager
def archive_slot(name: str | None) -> Iterator[None]:
    """One slot of the global concurrency limit ``name`` (``execution.archive_concurrency_limit``),
    held for a whole batch: each acquire is an API call, so per batch, not per request.
    No name, no slot; a name without a limit on the server does not block (``strict=False``).
    The task's log says how long it waited and held the slot."""
    if not name:
        yield
        return
    logger = get_run_logger()
    asked = time.monotonic()
    with concurrency(name, occupy=1, strict=False):
        held = time.monotonic()
        logger.info("holding a slot of concurrency limit %r (waited %.1f s)", name, held - asked)
        try:
            yield
        finally:
            logger.info("releasing the slot of %r after %.1f s", name, time.monotonic() - held)
