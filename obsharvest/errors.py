"""Everything obsharvest raises on purpose, in one hierarchy (as pyvo's ``DALAccessError``).

::

    ObsharvestError
    ├── UserError (also a ValueError)     the user's to fix: the run stops with ONE line,
    │   │                                 the CLI exits 2, never retried
    │   ├── ConfigError                   a profile, ``--set``, flag or Prefect parameter
    │   ├── TargetError                   a target list (file, row, column, value)
    │   ├── AdqlValueError                a value that cannot go into ADQL safely
    │   ├── CredentialsError, TokenError  a credentials block or token that cannot be had
    │   ├── PreflightError                a check before the run (output, storage, service)
    │   ├── RunnerError                   the task runner asked for cannot be built here
    │   ├── CutoutUnavailableError        cutout mode on an archive without SODA
    │   ├── MetadataFormatError           an output written by something else
    │   ├── QueryError                    a query failed for good (bad ADQL, deadline)
    │   └── ServiceRefusedError           the TAP service refuses every request (also a
    │       ├── NotTapServiceError        RefusedError below): token, URL, not TAP
    │       └── DatalinkAuthError         Datalink refuses the token
    ├── RemoteError                       a service answered badly or not at all; carries
    │   │                                 ``status`` and ``url`` (never its query string)
    │   ├── TransientError                another attempt may succeed (timeouts, dropped
    │   │                                 connections, 429, 5xx): what the retry policy retries
    │   ├── RefusedError                  a reply another attempt will not change
    │   ├── ServiceError                  the TAP service kept failing until retries ran out
    │   └── ReadError                     reading one file: header, mask, download, cutout
    │       ├── UrlExpiredError           403 on a signed URL: resolve Datalink again
    │       ├── UnauthorizedError         401: token missing or rejected
    │       ├── NotFoundError             404/410: the archive does not have the file
    │       ├── TransientReadError        (also a TransientError) retry with backoff
    │       ├── NoOverlapError            a SODA cutout shape misses the image (204)
    │       ├── IntegrityError            bytes differ from the announced size or MD5
    │       ├── CorruptHeaderError        bytes arrived, but no readable FITS header
    │       └── NoWcsError                no HDU with a celestial 2-D WCS
    ├── StorageError                      object storage (fsspec) could not do its part
    │   └── StorageKeyError               no safe object key can be made from the parts
    ├── SRegionError                      an ``s_region`` that is not one usable region
    └── Interrupted                       the run is stopping (signal, deadline, cancel)

Anything else is a bug, shown with its traceback. Messages never contain a URL's query
string or userinfo: signed URLs carry their signature there, and these errors end up in
logs, Prefect results and reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit, urlunsplit


class ObsharvestError(Exception):
    """The root: raised on purpose by obsharvest."""


# -- the user's to fix ------------------------------------------------------------------


class UserError(ObsharvestError, ValueError):
    """Stops the run with its message as one line; retrying cannot help."""


class ConfigError(UserError):
    """A bad parameter value, named with where it came from (file and key, flag, --set)."""


class _Problem(Protocol):
    row: int | None
    column: str | None


class TargetError(UserError):
    """A user error in a target list: str(err) is ONE line naming the file, the row and
    the column, e.g. ``targets.csv: row 7, column 'dec': 95.0 is outside [-90, 90]``.

    When several rows are wrong the line ends "(and 12 more problems)"; ``problems`` keeps
    the first of them (``obsharvest.targets.Problem``) and ``count`` the total.
    """

    def __init__(self, source: str, problems: Sequence[Any], count: int | None = None):
        if not problems:
            raise ValueError("TargetError needs at least one problem")
        self.source = source
        self.problems = list(problems)
        self.count = count if count is not None else len(self.problems)
        first = self.problems[0]
        self.row, self.column = first.row, first.column
        line = f"{source}: {first}"
        if self.count > 1:
            more = self.count - 1
            line += f" (and {more} more problem{'s' if more > 1 else ''})"
        # One line, always: a value quoted from the file must not break it.
        super().__init__(line.replace("\r", " ").replace("\n", " "))

    def __reduce__(self):  # keep the problems across pickling (Prefect, Dask)
        return (type(self), (self.source, self.problems, self.count))


class AdqlValueError(UserError):
    """A value that cannot be put into ADQL safely; the message names the value."""


class CredentialsError(UserError):
    """A credentials block cannot be used (missing extra, unknown name, wrong type)."""


class TokenError(UserError):
    """The token cannot be had (a Secret block that does not exist)."""


class PreflightError(UserError):
    """A check before the run failed (output, storage, service, mode inputs)."""


class RunnerError(UserError):
    """The requested task runner cannot be built here (a missing extra, a bad name)."""


class CutoutUnavailableError(UserError):
    """Cutout mode was asked of an archive that offers no SODA service."""


class MetadataFormatError(UserError):
    """A reply or a Parquet file whose columns obsharvest will not mix with its own; the
    message says what to do (e.g. ``obsharvest migrate``)."""


class QueryError(UserError):
    """A query failed for good (bad ADQL, deadline passed, cannot split): not retried."""


# -- what a service did -----------------------------------------------------------------


def without_query(url: str) -> str:
    """The URL without query, fragment and userinfo: never log a signature or password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RemoteError(ObsharvestError):
    """A service answered badly or not at all.

    ``status`` is the HTTP status when there was one, ``url`` the address asked without
    its query string, ``retry_after`` the seconds the service asked to wait (429, 503).
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        *,
        status: int | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        self.url = without_query(url) if url else None

    def __reduce__(self):  # keep the attributes across pickling (Prefect, Dask)
        state = {"retry_after": self.retry_after, "status": self.status, "url": self.url}
        return (type(self), (self.args[0] if self.args else "",), state)


class TransientError(RemoteError):
    """A failure a later attempt may not meet: the shared retry policy retries it."""

    retryable = True


class RefusedError(RemoteError):
    """A reply another attempt will not change (400, 401, 403, 404, 405, not a VOTable)."""


class ServiceRefusedError(RefusedError, UserError):
    """The TAP service refused or misunderstood what every request of the run would ask:
    a token or a URL, so the run ends with this one line."""


class NotTapServiceError(ServiceRefusedError):
    """The URL answers, but not as a TAP service (no VOSI capabilities with TAP)."""


class DatalinkAuthError(ServiceRefusedError):
    """Datalink refuses the credentials: every image would fail the same way."""


class ServiceError(RemoteError):
    """The service kept failing (5xx, dropped connections, HTML pages) past the retries.

    Not the user's query: the targets of that query are reported as failed, the run goes on.
    """


RETRY_STATUS = frozenset({408, 425, 429})  # the 4xx that mean "try again later"


def status_is_transient(status: int | None) -> bool:
    """Whether an HTTP status is worth another attempt (None or 0: no reply at all, yes)."""
    return status is None or status == 0 or status in RETRY_STATUS or status >= 500


class ReadError(RemoteError):
    """Reading one file (header, mask, download, cutout) failed; the subclass says whether
    and how to try again. A plain ReadError is not retried."""


class UrlExpiredError(ReadError):
    """403 on a signed URL: it expired (RSP: after 1 h) or was altered; resolve it again."""


class UnauthorizedError(ReadError):
    """401: the credentials (bearer token) are missing or rejected; not retried."""


class NotFoundError(ReadError):
    """404/410 (or a missing local file): the archive does not have this file."""


class TransientReadError(ReadError, TransientError):
    """Connection refused or dropped, timeout, truncated body, 5xx, 429: worth retrying."""


class NoOverlapError(ReadError):
    """A SODA service found none of the image in the cutout's shape: no cutout, no failure
    (SODA 1.0's ``NoOverlap``; GAVO DaCHS answers 204 No Content)."""


class IntegrityError(ReadError):
    """The bytes do not match the announced size or MD5: usually the transfer, so worth
    one more attempt, not a loop."""


class CorruptHeaderError(ReadError):
    """The bytes arrived but are not a readable FITS header (or its WCS cannot be built)."""


class NoWcsError(ReadError):
    """No HDU has a celestial WCS describing a 2-D pixel grid."""


def read_error(
    status: int, url: str, reason: str = "", retry_after: float | None = None
) -> ReadError:
    """The read error for an HTTP status other than 200/206, for every kind of file read
    (header, mask, download, cutout), so they all retry, re-sign or give up alike."""
    said = f"HTTP {status}{' ' + reason if reason else ''} for {without_query(url)}"
    if status == 403:
        return UrlExpiredError(
            f"{said}: the URL has expired or access was refused", status=status, url=url
        )
    if status == 401:
        return UnauthorizedError(f"{said}: credentials missing or rejected", status=status, url=url)
    if status in (404, 410):
        return NotFoundError(f"{said}: no such file", status=status, url=url)
    if status_is_transient(status):
        return TransientReadError(said, retry_after, status=status, url=url)
    return ReadError(said, status=status, url=url)


# -- our side ---------------------------------------------------------------------------


class StorageError(ObsharvestError):
    """Object storage could not store, list or remove what it was asked to."""


class StorageKeyError(StorageError, ValueError):
    """No safe object key can be made from the given parts."""


class SRegionError(ObsharvestError, ValueError):
    """An ``s_region`` value that cannot be used as one region on the sky."""


class Interrupted(ObsharvestError):
    """Raised where a step notices the run is stopping; never retried."""
