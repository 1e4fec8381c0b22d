"""Cutout mode: a SODA cutout per (target, image) instead of the whole image.

Datalink's ``#cutout`` row points at a SODA sync service descriptor (``cutout-sync`` on
the RSP); one ID and one circle per request, answered with a redirect to object storage.
The request carries the service's bearer token; the redirect to the storage host does
not (requests drops Authorization when the host changes), so the signed URL needs none.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import urlencode

from obsharvest.models import StoredObject, Target
from obsharvest.storage.download import DEFAULT_TIMEOUT, download
from obsharvest.storage.keys import sanitize_part
from obsharvest.storage.store import ObjectStore


@dataclass(frozen=True)
class CutoutRequest:
    """Where and what to cut: the SODA endpoint, the dataset ID and the circle (deg)."""

    soda_url: str
    dataset_id: str
    ra: float
    dec: float
    radius: float

    @property
    def circle(self) -> str:
        return f"{self.ra!r} {self.dec!r} {self.radius!r}"

    @property
    def url(self) -> str:
        return f"{self.soda_url}?{urlencode({'ID': self.dataset_id, 'CIRCLE': self.circle})}"


def cutout_radius(target: Target, default: float | None) -> float:
    """The circle to cut: the target's own radius, else the configured default."""
    radius = target.radius or default
    if not radius or radius <= 0:
        raise ValueError(f"target {target.name!r}: cutout mode needs a radius (target or default)")
    return float(radius)


def cutout_key(image_key: str, target_name: str) -> str:
    """``{collection}/{subtype}/{band}/{obs_id}/{target}.fits`` from the image's key."""
    stem = image_key[: -len(".fits")] if image_key.endswith(".fits") else image_key
    return posixpath.join(stem, sanitize_part(target_name) + ".fits")


def fetch_cutout(
    request: CutoutRequest,
    store: ObjectStore,
    key: str,
    *,
    headers: dict[str, str] | None = None,
    session=None,
    timeout: tuple[float, float] | None = None,
) -> StoredObject:
    """Stream one cutout into the store (verified against the ETag MD5 when given).

    ``timeout`` is ``(connect, read)``: a SODA service computes the cutout before its first
    byte, so a service that never answers must still end the attempt. ``None`` takes the
    session's own timeout (a :class:`~obsharvest.net.http.ServiceSession`), else the default.
    """
    if timeout is None:
        timeout = getattr(session, "timeout", None) or DEFAULT_TIMEOUT
    return download(request.url, store, key, session=session, headers=headers, timeout=timeout)
