"""The stricter verdict: a point on a NO_DATA pixel is not on the data."""

from __future__ import annotations

from functools import partial

from obsharvest.models import Containment, ImageWork, Verdict
from obsharvest.verify import mask as pixel_mask

from .context import Batch
from .links import with_fresh_url
from .settings import header_block


def mask_checked(
    batch: Batch, work: ImageWork, verdicts: dict[str, Containment]
) -> dict[str, Containment]:
    """The verdicts, with each point on a NO_DATA pixel (a dead amplifier, seed §1.1) no
    longer CONTAINS. Circles are left alone: they may still reach good pixels."""
    out = dict(verdicts)
    for target in work.targets:
        verdict = verdicts.get(target.name)
        if verdict is None or verdict.verdict != Verdict.CONTAINS or target.radius:
            continue
        check = with_fresh_url(
            batch.links,
            work.key,
            partial(_flags, batch, work, verdict),
            batch.settings.retry,
            f"mask of {work.key}",
        )
        out[target.name] = pixel_mask.apply_mask(verdict, check)
    return out


def _flags(batch: Batch, work: ImageWork, verdict: Containment, url: str) -> pixel_mask.MaskCheck:
    """One attempt: the mask flags at the verdict's pixel."""
    # a point CONTAINS from containment.verify has its HDU and pixel position
    assert verdict.hdu is not None and verdict.x is not None and verdict.y is not None
    size = batch.links.get(work.key).content_length
    return pixel_mask.mask_flags(
        url,
        verdict.hdu,
        verdict.x,
        verdict.y,
        block_size=header_block(batch.settings.block_size, size),
        storage_options=batch.settings.reader_options(batch.session, url, size),
    )
