"""What the steps of one image are handed: the batch's shared means, the image's deadline."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests

from obsharvest.net.retry import RetryPolicy
from obsharvest.storage.store import ObjectStore

from .failure import ImageFailure
from .links import Links
from .settings import ImageSettings


@dataclass(frozen=True, eq=False)
class Batch:
    """What the images of one batch share: how each is reached, where it goes, one HTTP
    session for header reads and downloads (keep-alive connections across images), and
    the download slots (``download_workers``)."""

    links: Links
    store: ObjectStore
    settings: ImageSettings
    session: requests.Session
    downloads: threading.Semaphore


@dataclass(frozen=True)
class Deadline:
    """One image's time for all its steps and attempts (``retry.image_deadline_seconds``),
    and the retry policy of its host (told when the host asks for less, net.pacing)."""

    policy: RetryPolicy
    seconds: float
    ends: float

    @classmethod
    def start(cls, policy: RetryPolicy, seconds: float) -> Deadline:
        return cls(policy, seconds, time.monotonic() + seconds)

    def budget(self) -> RetryPolicy:
        """The retry policy cut to what is left of the image's deadline."""
        left = self.ends - time.monotonic()
        if left <= 0:
            raise ImageFailure(
                f"image deadline of {self.seconds:.0f} s passed (retry.image_deadline_seconds)"
            )
        return self.policy.within(left)
