"""Cutout mode: a SODA cutout per (target, image) instead of the whole image.

SODA is found by its descriptor's standardID (``obsharvest.access.kinds``): the RSP
points Datalink's ``#cutout`` row at ``cutout-sync``, GAVO DaCHS a ``#proc`` row at a
descriptor listing ``CIRCLE``/``POS``/``POLYGON``, and a TAP result may carry one for
its rows. One ID and one shape per request, as the descriptor takes it: ``CIRCLE`` if
listed (exact), else ``POS=CIRCLE ...``, else a ``POLYGON`` around the circle.

The request is a GET (SODA sync takes GET and POST, but DaCHS 2.7 answered a form POST
with HTTP 500 here), a POST only when the service refuses GET with 405; never a HEAD,
which DaCHS does not answer. The service may answer with the FITS (DaCHS) or a redirect
to object storage (the RSP). The request carries the service's bearer token; the
redirect to the storage host does not (requests drops Authorization when the host
changes), so the signed URL needs none.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from obsharvest.errors import NoOverlapError, ReadError
from obsharvest.models import StoredObject, Target
from obsharvest.storage.download import DEFAULT_TIMEOUT, download
from obsharvest.storage.keys import sanitize_part
from obsharvest.storage.store import ObjectStore

POLYGON_VERTICES = 8  # a polygon around the circle, for services that take no circle


@dataclass(frozen=True)
class CutoutRequest:
    """Where and what to cut: the SODA endpoint (with the descriptor's fixed params), the
    dataset ID, the circle (deg) and the shape parameter the descriptor takes."""

    soda_url: str
    dataset_id: str
    ra: float
    dec: float
    radius: float
    shape: str = "CIRCLE"  # CIRCLE, POS or POLYGON

    @property
    def circle(self) -> str:
        return f"{self.ra!r} {self.dec!r} {self.radius!r}"

    @property
    def params(self) -> list[tuple[str, str]]:
        """``ID`` and the shape: ``CIRCLE=ra dec r``, ``POS=CIRCLE ra dec r`` or
        ``POLYGON=ra1 dec1 ...`` (a regular polygon whose edges touch the circle, so the
        cutout still covers all of it)."""
        shape = self.shape.upper()
        if shape == "POS":
            return [("ID", self.dataset_id), ("POS", f"CIRCLE {self.circle}")]
        if shape == "POLYGON":
            return [("ID", self.dataset_id), ("POLYGON", self.polygon)]
        return [("ID", self.dataset_id), ("CIRCLE", self.circle)]

    @property
    def polygon(self) -> str:
        reach = math.radians(self.radius) / math.cos(math.pi / POLYGON_VERTICES)
        ra0, dec0 = math.radians(self.ra), math.radians(self.dec)
        points = []
        for i in range(POLYGON_VERTICES):  # north, then east: counter-clockwise on the sky
            bearing = 2 * math.pi * i / POLYGON_VERTICES
            dec = math.asin(
                math.sin(dec0) * math.cos(reach)
                + math.cos(dec0) * math.sin(reach) * math.cos(bearing)
            )
            ra = ra0 + math.atan2(
                math.sin(bearing) * math.sin(reach) * math.cos(dec0),
                math.cos(reach) - math.sin(dec0) * math.sin(dec),
            )
            points.append(f"{math.degrees(ra) % 360.0!r} {math.degrees(dec)!r}")
        return " ".join(points)

    @property
    def url(self) -> str:
        """The GET URL: the endpoint's own query (fixed params) and then ours."""
        parts = urlsplit(self.soda_url)
        query = parse_qsl(parts.query, keep_blank_values=True) + self.params
        return urlunsplit(parts._replace(query=urlencode(query)))


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
    try:
        try:
            return download(
                request.url, store, key, session=session, headers=headers, timeout=timeout
            )
        except ReadError as exc:
            if exc.status != 405:
                raise
        # the service refuses GET: the same fields as a form POST to the endpoint as given
        return download(
            request.soda_url,
            store,
            key,
            session=session,
            headers=headers,
            timeout=timeout,
            form=request.params,
        )
    except ReadError as exc:
        if exc.status != 204:
            raise
        # no content: the shape misses the image (GAVO DaCHS; SODA's NoOverlap)
        raise NoOverlapError(
            f"SODA found no overlap of {request.circle} with {request.dataset_id}",
            status=204,
            url=exc.url,
        ) from None
