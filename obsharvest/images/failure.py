"""Why one image failed, as the one line its outcome row carries.

One image's trouble never stops its batch: every step may raise, and the batch turns
what it raised into a reason here.
"""

from __future__ import annotations

import logging

from obsharvest.errors import IntegrityError, NotFoundError, ReadError, StorageError
from obsharvest.net.retry import one_line
from obsharvest.runtime import stopping

log = logging.getLogger(__package__)  # "obsharvest.images": one logger for the package


class ImageFailure(Exception):
    """This image cannot be completed; the message becomes its failure reason."""


def reason_for(exc: Exception, key: str) -> str:
    """The failure reason of image ``key`` for what one of its steps raised.

    Retries exhausted or an unexpected reply: recorded, and the batch goes on. Anything
    not a known failure of the image, the archive or the storage is a bug in obsharvest:
    its traceback is kept in the log.
    """
    if isinstance(exc, ImageFailure | stopping.Interrupted):
        return str(exc)
    if isinstance(exc, NotFoundError):
        return "file not found at the archive (404)"
    if isinstance(exc, IntegrityError):
        return f"checksum or size mismatch: {one_line(exc)}"
    if stopping.requested():  # a consequence of the stop (the archive went away)
        return stopping.describe()
    expected = isinstance(exc, StorageError | ReadError | OSError)
    log.warning("image %s failed: %s", key, one_line(exc), exc_info=False if expected else exc)
    return one_line(exc)
