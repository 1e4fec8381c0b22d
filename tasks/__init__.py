"""The harvest's Prefect tasks: thin wrappers over ``obsharvest`` functions.

Each task is one library call plus what Prefect adds (a name in the UI, a run logger,
progress events, an archive concurrency slot). Tasks take settings built once per run
from the parameters (``obsharvest.flows.settings``), never the parameters themselves, and handle
batches (of targets, of images), never one image.
"""

from __future__ import annotations

from typing import TypeVar, cast

from prefect.utilities.annotations import quote

T = TypeVar("T")


def as_is(value: T) -> T:
    """``value`` handed to a task without Prefect walking it (``quote``). Prefect visits
    every item of a parameter looking for futures: for a batch of images or a shard's rows
    and outcomes, that was a fifth of a 1000-target plan run's CPU (py-spy)."""
    return cast(T, quote(value))
