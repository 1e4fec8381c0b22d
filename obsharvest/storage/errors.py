"""What can go wrong when a file is fetched and stored, as types the caller acts on.

- :class:`UrlExpiredError` (403): the signed URL expired or was refused; resolve it again
  through Datalink and retry.
- :class:`NotFoundError` (404/410): the archive no longer has the file; do not retry.
- :class:`TransientDownloadError` (429, 5xx, connection trouble, a cut-off body that could
  not be resumed): retry later, after ``retry_after`` seconds when the server said so. It
  is a :class:`obsharvest.net.retry.TransientError`, so the shared retry policy handles it.
- :class:`IntegrityError`: the bytes do not match the announced size or MD5. Usually the
  transfer, occasionally the archive; worth one more attempt, not a loop.

Messages never contain a URL's query string: signed URLs carry their credentials there.
"""

from __future__ import annotations

from obsharvest.net.retry import TransientError


class StorageError(Exception):
    """Base of everything this module raises on purpose."""


class StorageKeyError(StorageError, ValueError):
    """No safe object key can be made from the given parts."""


class IntegrityError(StorageError):
    """Stored or received bytes do not match the expected size or checksum."""


class DownloadError(StorageError):
    """An HTTP fetch failed in a way that retrying the same URL will not fix."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UrlExpiredError(DownloadError):
    """403: the signed URL is no longer (or never was) accepted; re-resolve it."""


class NotFoundError(DownloadError):
    """404/410: the file is gone."""


class TransientDownloadError(TransientError, StorageError):
    """A failure that a later attempt may not meet (429, 5xx, network)."""

    def __init__(
        self, message: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, retry_after)
        self.status = status
