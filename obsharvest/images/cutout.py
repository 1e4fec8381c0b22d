"""Cutout mode: one SODA cutout per wanted target of an image, verified and stored like
images.

SODA is found by the standard: a service descriptor whose standardID is SODA sync, named
by any Datalink row's ``service_def`` (the RSP's ``#cutout``, DaCHS' ``#proc``) or carried
by the TAP result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

from obsharvest.access.datalink import DatalinkResolver
from obsharvest.access.kinds import Kind
from obsharvest.access.soda import CutoutRequest, cutout_key, cutout_radius, fetch_cutout
from obsharvest.errors import CutoutUnavailableError, NoOverlapError
from obsharvest.models import Containment, ImageOutcome, ImageWork, StoredObject, Target, Verdict

from .context import Batch
from .failure import ImageFailure
from .links import Links
from .quicklook import quicklook

log = logging.getLogger(__package__)  # "obsharvest.images": one logger for the package

SODA_LOOKED_FOR = (
    "a service descriptor with standardID ivo://ivoa.net/std/SODA#sync-1.0 (or #sync-1)"
)
NO_SODA = (
    "no SODA cutout service offered for this image: no Datalink row (#cutout, #proc or "
    f"other) names {SODA_LOOKED_FOR}, and the TAP result carries none"
)


def cutouts(batch: Batch, work: ImageWork, verdicts: dict[str, Containment]) -> ImageOutcome:
    """One SODA cutout per wanted target of the image, verified and stored like images."""
    settings = batch.settings
    link = batch.links.get(work.key)
    if not link.soda_url or not link.soda_id:
        raise ImageFailure(NO_SODA)
    stored: dict[str, StoredObject] = {}
    circles: dict[str, str] = {}
    looks: dict[str, str] = {}
    for target in work.targets:
        v = verdicts.get(target.name)
        if settings.verification == "skip" and (v is None or v.verdict != Verdict.CONTAINS):
            continue
        request = CutoutRequest(
            link.soda_url,
            link.soda_id,
            target.ra,
            target.dec,
            cutout_radius(target, settings.cutout_radius),
            link.soda_shape,
        )
        key = cutout_key(work.storage_key, target.name)
        found = _cutout(batch, work, target, request, key)
        if found is None:  # the service says the target misses the image: no cutout
            continue
        stored[target.name] = found
        circles[target.name] = request.circle
        if settings.quicklook:
            looks[target.name] = quicklook(batch.store, found, key, target, work, verdicts)
    return ImageOutcome(
        work.key,
        verdicts,
        cutouts=stored,
        cutout_circles=circles,
        content_length=link.content_length,
        downloaded=any(not c.skipped for c in stored.values()),
        quicklooks=looks,
        access=link.access,
    )


def _cutout(
    batch: Batch, work: ImageWork, target: Target, request: CutoutRequest, key: str
) -> StoredObject | None:
    """The target's cutout as an earlier run stored it, else fetched now (holding a
    download slot); None when the service says the target misses the image."""
    prior = work.priors.get(target.name)
    if prior and prior.stored and prior.size is not None:
        found = batch.store.exists_same(key, prior.size, prior.sha256)
        if found is not None:
            return found
    settings = batch.settings
    cut = partial(
        fetch_cutout,
        request,
        batch.store,
        key,
        headers=settings.auth_headers(request.soda_url) if settings.auth_headers else None,
        session=batch.session,
        timeout=settings.timeout,
    )
    try:
        with batch.downloads:
            return settings.retry.call(cut, f"cutout of {work.key} for {target.name}")
    except NoOverlapError:
        log.debug("no overlap: %s for %s", work.key, target.name)
        return None


def check_cutouts_offered(works: Sequence[ImageWork], resolver: DatalinkResolver) -> None:
    """Cutout mode needs SODA: said at plan time, before any work, not once per image.

    Direct files need it in the TAP result; Datalink images are asked once, for the first
    of them.
    """
    fix = "set products.cutout_fallback=image to store whole images instead"
    direct = [w for w in works if w.kind != Kind.DATALINK]
    if any(not (w.soda_url and w.soda_id) for w in direct):
        raise CutoutUnavailableError(
            f"cutout mode: {len(direct)} images are reached through their access_url itself "
            f"and the TAP result carries no SODA service descriptor for them "
            f"({SODA_LOOKED_FOR}, with an ID param); {fix}"
        )
    datalink = [w for w in works if w.kind == Kind.DATALINK]
    if not datalink:
        return
    first = datalink[0]
    link = Links(resolver, [first]).get(first.key)
    if link.error:
        return  # the image's own failure will say why; nothing to learn about SODA
    if not (link.soda_url and link.soda_id):
        raise CutoutUnavailableError(
            f"cutout mode: the archive offers no SODA cutout service for {first.key}: no row "
            f"of its Datalink document (#cutout, #proc or other) names {SODA_LOOKED_FOR}, "
            f"and the TAP result carries none; {fix}"
        )
