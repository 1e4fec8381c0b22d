"""A PNG beside each stored image or cutout: the target, the footprint, the verdict."""

from __future__ import annotations

import io
import logging

from obsharvest.models import Containment, ImageWork, StoredObject, Target, Verdict
from obsharvest.net.retry import one_line
from obsharvest.products import quicklook as render
from obsharvest.storage.store import ObjectStore

log = logging.getLogger(__package__)  # "obsharvest.images": one logger for the package


def first_wanted(work: ImageWork, verdicts: dict[str, Containment]) -> Target:
    """The target a whole image's picture is drawn for: the first it contains."""
    for target in work.targets:
        v = verdicts.get(target.name)
        if v is not None and v.verdict == Verdict.CONTAINS:
            return target
    return work.targets[0]


def quicklook(
    store: ObjectStore,
    stored: StoredObject,
    key: str,
    target: Target,
    work: ImageWork,
    verdicts: dict[str, Containment],
) -> str:
    """Render the PNG beside the stored FITS; a failure here never fails the image."""
    png_key = key[: -len(".fits")] + ".png" if key.endswith(".fits") else key + ".png"
    try:
        buffer = io.BytesIO()
        with store.fs.open(store.path(stored.key), "rb") as fh:
            data = fh.read()
        render.quicklook_png(
            data,
            target,
            work.s_region or None,
            buffer,
            containment=verdicts.get(target.name),
            title=work.key,
        )
        return store.put_stream(png_key, [buffer.getvalue()]).uri
    except Exception as exc:  # the image is stored; only its picture is missing
        log.warning("quicklook for %s failed: %s", work.key, one_line(exc))
        return ""
