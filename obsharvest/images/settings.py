"""How a batch of images is worked: one record, built once per run from the parameters
and the archive the images come from (its retries, timeouts and politeness are the
archive's: ``obsharvest.net.archive.Archive``).

Every value the parameters (``flows/params.py``) define has no default here: a default
lives in one place, the parameters, and the record takes what they say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import requests

from obsharvest.models import ProductMode, VerificationMode
from obsharvest.net.retry import RetryPolicy


@dataclass(kw_only=True)
class ImageSettings:
    verification: VerificationMode
    margin_px: float
    block_size: int  # bytes per range read of a header, at most (see header_block)
    plan: bool
    verify_workers: int  # images in flight per host to start with
    download_workers: int
    max_per_host: int  # ... and at most, as replies keep coming (net.pacing)
    retry: RetryPolicy
    mask: bool  # also require the target pixel not to be flagged NO_DATA
    mode: ProductMode
    cutout_radius: float | None  # deg, for point targets in cutout mode
    quicklook: bool  # a PNG next to every stored image or cutout
    timeout: tuple[float, float]  # connect, read (between bytes) seconds
    image_deadline: float  # seconds for all the steps and attempts of one image
    cutout_fallback: bool  # cutout mode, no SODA offered: store the whole image
    datalink_batch: int  # IDs per Datalink request (fewer if the service answers fewer)
    datalink_workers: int  # Datalink requests in flight
    processes: int  # >0: a batch runs in a worker process, this many at once (processes.py)
    auth_headers: Callable[[str], dict[str, str]] | None = None  # service-host auth only

    def headers_for(self, url: str) -> dict[str, str]:
        """The token for a service host (a direct file URL may live there), else nothing:
        signed URLs on other hosts must never see it."""
        return self.auth_headers(url) if self.auth_headers else {}

    def reader_options(self, session: requests.Session, url: str, size: int | None) -> dict:
        """What :class:`obsharvest.access.ranged.RangedHttpFile` needs for one URL."""
        return {
            "session": session,
            "headers": self.headers_for(url),
            "size": size,
            "timeout": self.timeout,
        }


def header_block(limit: int, content_length: int | None) -> int:
    """Bytes per range read of a header: at most ``limit``, and at most ~0.5% of the file
    when its size is known, so small files are not read in large part (FITS headers come
    in 2880-byte blocks; 8 kB holds a primary header and the start of the next)."""
    if not content_length:
        return limit
    return max(8192, min(limit, content_length // 200))
