"""An image's containment verdicts: from its header (one ranged read), or from an earlier
run over the same output.

Pairs decided and stored by an earlier run are not touched again: no Datalink, no header
bytes (:func:`reusable`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from obsharvest.access.ranged import RangedHttpFile
from obsharvest.access.soda import cutout_key
from obsharvest.models import Containment, ImageOutcome, ImageWork, Prior, Verdict
from obsharvest.net import compression
from obsharvest.storage.store import ObjectStore
from obsharvest.verify import containment

from .context import Batch, Deadline
from .links import with_fresh_url
from .settings import ImageSettings, header_block

DECIDED = {Verdict.CONTAINS.value, Verdict.OUTSIDE.value, Verdict.NO_WCS.value}


def prior_verdicts(work: ImageWork) -> dict[str, Containment] | None:
    """The verdicts of an earlier run, if it decided every pair of this image."""
    if not work.priors or any(t.name not in work.priors for t in work.targets):
        return None
    verdicts: dict[str, Containment] = {}
    for t in work.targets:
        p = work.priors[t.name]
        if p.verdict is None or p.verdict not in DECIDED:
            return None
        verdicts[t.name] = Containment(Verdict(p.verdict), p.x, p.y, p.hdu, p.reason)
    return verdicts


def reusable(work: ImageWork, store: ObjectStore, settings: ImageSettings) -> ImageOutcome | None:
    """An outcome rebuilt from an earlier run, if every pair is decided and the file is there."""
    verdicts = prior_verdicts(work)
    if verdicts is None:
        return None
    priors = [work.priors[t.name] for t in work.targets]
    needs_file = not settings.plan and (
        settings.verification != "skip" or any(p.verdict == Verdict.CONTAINS.value for p in priors)
    )
    if not needs_file:
        return ImageOutcome(work.key, verdicts, reused=True)
    if settings.mode == "cutout":
        return _reused_cutouts(work, verdicts, priors, store, settings)
    return _reused_image(work, verdicts, priors, store, settings)


def _reused_cutouts(
    work: ImageWork,
    verdicts: dict[str, Containment],
    priors: Sequence[Prior],
    store: ObjectStore,
    settings: ImageSettings,
) -> ImageOutcome | None:
    cutouts = {}
    for target, prior in zip(work.targets, priors, strict=True):
        if prior.verdict != Verdict.CONTAINS.value and settings.verification == "skip":
            continue
        if not prior.stored or prior.size is None:
            return None
        found = store.exists_same(
            cutout_key(work.storage_key, target.name), prior.size, prior.sha256
        )
        if found is None:
            return None
        cutouts[target.name] = found
    return ImageOutcome(
        work.key,
        verdicts,
        cutouts=cutouts,
        reused=True,
        cutout_circles={n: "" for n in cutouts},
    )


def _reused_image(
    work: ImageWork,
    verdicts: dict[str, Containment],
    priors: Sequence[Prior],
    store: ObjectStore,
    settings: ImageSettings,
) -> ImageOutcome | None:
    sized = next((p for p in priors if p.stored and p.size is not None), None)
    if sized is None or sized.size is None:
        return None
    key = compression.stored_key(work.storage_key, sized.storage_uri)  # .fits.gz, .fits.fz
    found = store.exists_same(key, sized.size, sized.sha256)
    if found is None:
        return None
    return ImageOutcome(
        work.key,
        verdicts,
        stored=found,
        content_length=found.size,
        reused=True,
        kept_for_all=settings.verification != "skip",
    )


class Handoff:
    """The reader a sniffing GET opened (:func:`.links.settle`), handed to the first
    header read, which reuses it if it reads the same URL; later attempts open their own."""

    def __init__(self, reader: RangedHttpFile | None) -> None:
        self._reader = reader

    def take(self, url: str) -> RangedHttpFile | None:
        reader, self._reader = self._reader, None
        return reader if reader is not None and reader.url == url else None

    def close(self) -> None:
        """Close the reader if no header read took it."""
        if self._reader is not None:
            self._reader.close()


def read_verdicts(
    batch: Batch,
    work: ImageWork,
    known: dict[str, Containment] | None,
    opened: RangedHttpFile | None,
    deadline: Deadline,
) -> dict[str, Containment]:
    """The image's verdicts: those ``known`` (e.g. decided by a plan run: no header read
    again), else from its header, else none (verification off)."""
    handoff = Handoff(opened)
    verdicts: dict[str, Containment] = {}
    if known is not None:
        verdicts = known
    elif batch.settings.verification != "off":
        verdicts = with_fresh_url(
            batch.links,
            work.key,
            partial(_read_header, batch, work, handoff),
            deadline.budget(),
            f"header of {work.key}",
        )
    handoff.close()
    return verdicts


def _read_header(
    batch: Batch, work: ImageWork, handoff: Handoff, url: str
) -> dict[str, Containment]:
    """One attempt: every target's verdict from one header read of ``url``."""
    opened = handoff.take(url)
    size = batch.links.get(work.key).content_length
    settings = batch.settings
    return containment.verify(
        url,
        list(work.targets),
        margin_px=settings.margin_px,
        block_size=header_block(settings.block_size, size),
        storage_options=settings.reader_options(batch.session, url, size),
        opened=opened,
    )
