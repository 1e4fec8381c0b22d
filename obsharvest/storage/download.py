"""Fetch one file over HTTP into an :class:`~obsharvest.storage.store.ObjectStore`, resuming cut bodies.

Archives cut transfers short (proxies, load balancers, overloaded servers). Starting a
2 GB download again after 1.9 GB wastes the archive's bandwidth and ours, so when the
server advertises ``Accept-Ranges: bytes`` a body that ends early is continued with
``Range: bytes=<received>-``. ``If-Range: <ETag>`` makes the server send the whole file
(200) instead of a range if the file changed in between, and we refuse to splice then; a
206 must also start exactly where we stopped (``Content-Range``). The finished object is
still checked against the ETag's MD5 (or the caller's ``expected_md5``), so a splice
can never go unnoticed.

This is the only retrying done here: the caller wraps :func:`download` with tenacity
(``obsharvest.net.retry``) and re-resolves the signed URL on :class:`UrlExpiredError`.

Credentials: Datalink's signed URLs point at other hosts (cloud storage, a CDN) and carry
their own credentials in the query string. The archive's bearer token must not travel
there -- it would leak the user's token to a third party, and S3 rejects a presigned
request that also carries an Authorization header. So the request is built without the
session's headers, auth or cookies (the session only lends its connection pool, proxies
and TLS settings); pass ``headers=`` to send something on purpose. Query strings never
appear in messages or logs: they are the signature.

Compressed files are stored as served, byte for byte, and named by what they are
(:func:`obsharvest.net.compression.stored_suffix`: ``.fits.fz``, ``.fits.gz``). That
holds for ``Content-Encoding: gzip`` too (we ask for ``identity``; S3 objects uploaded
with that metadata and static ``.gz`` files behind ``AddEncoding`` come encoded anyway):
the gzip bytes are kept as ``.fits.gz``, not decoded to ``.fits``. Those are the bytes
``Content-Length``, Datalink's ``content_length``, a strong ETag's MD5 and ``Range``
count, so sizes, checksums and resumes all stay checkable, and the sha256 recorded is
that of the stored object. Decoding would store bytes no archive figure describes.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http.client import IncompleteRead
from typing import Protocol

import requests
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from obsharvest.errors import (
    IntegrityError,
    ReadError,
    TransientReadError,
    read_error,
)
from obsharvest.models import StoredObject
from obsharvest.net import compression
from obsharvest.net.http import retry_after
from obsharvest.net.redact import redact, strip_query
from obsharvest.runtime import stopping


class Sink(Protocol):
    """Where a download goes (an :class:`~obsharvest.storage.store.ObjectStore`)."""

    def path(self, key: str) -> str: ...

    def exists_same(
        self, key: str, size: int, sha256: str | None = None, *, md5: str | None = None
    ) -> StoredObject | None: ...

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_size: int | None = None,
        expected_md5: str | None = None,
    ) -> StoredObject: ...


log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (between bytes) seconds
_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_CUT_SHORT = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,  # includes ReadTimeout raised while streaming
    requests.exceptions.Timeout,
    IncompleteRead,
    Urllib3HTTPError,
    ConnectionError,
    TimeoutError,
)


class _ShortRead(Exception):
    """The body ended cleanly but before Content-Length bytes arrived (a condition, not raised)."""


def _safe_url(url: str) -> str:
    return strip_query(url)


def _describe(exc: BaseException, url: str) -> str:
    """One line about a transport error, with the URL's query string removed."""
    text = str(exc)
    query = url.partition("?")[2]
    if query:
        text = text.replace(query, "…")
    text = re.sub(r"\?[^\s'\"()]*", "?…", text)  # urllib3 messages quote the path + query
    return redact(f"{type(exc).__name__}: {text}")[:300]


def _raise_for_status(response: requests.Response, url: str) -> None:
    code = response.status_code
    if code in (200, 206):
        return
    response.close()
    raise read_error(code, url, response.reason or "", retry_after(response))


def _etag_md5(response: requests.Response) -> str | None:
    """The MD5 in a strong ETag of 32 hex digits (S3 single-part, the embedded archive), else None.

    Weak ETags (``W/``) and multipart S3 ETags (``"…-3"``) are not an MD5 of the body.
    """
    etag = response.headers.get("ETag", "").strip()
    # under Content-Encoding the ETag describes the encoded bytes: the ones stored
    match = _MD5_ETAG.match(etag)
    return match.group(1).lower() if match else None


class _Transfer:
    """One GET and up to ``max_resumes`` ranged continuations, as a chunk iterator."""

    def __init__(
        self,
        session: requests.Session,
        url: str,
        headers: Mapping[str, str],
        *,
        chunk_size: int,
        max_resumes: int,
        timeout: float | tuple[float, float],
        form: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.session = session
        self.url = url
        self.form = list(form) if form is not None else None  # a POST, never resumed
        self.headers = {"Accept-Encoding": "identity", **headers}
        self.chunk_size = chunk_size
        self.max_resumes = max_resumes
        self.timeout = timeout
        self.resumes = 0
        self.received = 0
        self.response = self._get(self.headers)
        _raise_for_status(self.response, url)
        if self.response.status_code == 206:  # the caller asked for a range: not ours to splice
            self.response.close()
            raise ReadError(f"unexpected 206 for {_safe_url(url)}", status=206, url=url)
        head = self.response.headers
        self.content_type = head.get("Content-Type", "")
        self.content_encoding = head.get("Content-Encoding", "")  # kept: bytes stored as sent
        length = head.get("Content-Length")
        self.total = int(length) if length and length.isdigit() else None  # encoded bytes
        self.etag = head.get("ETag")
        self.md5 = _etag_md5(self.response)
        strong = bool(self.etag and not self.etag.startswith("W/"))
        # If-Range needs a strong validator; without one a changed file could be spliced
        self.resumable = (
            head.get("Accept-Ranges", "").lower() == "bytes" and strong and self.form is None
        )

    def _get(self, headers: Mapping[str, str]) -> requests.Response:
        """A GET (a POST of ``form``) built without the session's headers, auth and
        cookies (see module doc)."""
        method = "GET" if self.form is None else "POST"
        prepared = requests.Request(
            method, self.url, headers=dict(headers), data=self.form
        ).prepare()
        settings = self.session.merge_environment_settings(prepared.url, {}, True, None, None)
        try:
            return self.session.send(prepared, timeout=self.timeout, **settings)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise TransientReadError(
                f"cannot fetch {_safe_url(self.url)}: {_describe(exc, self.url)}"
            ) from None
        except requests.RequestException as exc:  # invalid URL, schema, ...: messages hold it
            raise ReadError(
                f"cannot fetch {_safe_url(self.url)}: {_describe(exc, self.url)}"
            ) from None

    def _resume(self, cause: BaseException) -> None:
        where = _safe_url(self.url)
        if not self.resumable or self.resumes >= self.max_resumes:
            why = "server does not support resuming" if not self.resumable else "resumes used up"
            raise TransientReadError(
                f"body of {where} cut off after {self.received} bytes ({why}): "
                f"{_describe(cause, self.url)}"
            )
        self.resumes += 1
        log.info(
            "resuming %s at byte %d (%d/%d): %s",
            where,
            self.received,
            self.resumes,
            self.max_resumes,
            _describe(cause, self.url),
        )
        assert self.etag is not None  # resumable: a strong ETag was sent
        headers = {**self.headers, "Range": f"bytes={self.received}-", "If-Range": self.etag}
        response = self._get(headers)
        _raise_for_status(response, self.url)
        if response.status_code != 206:
            response.close()
            raise TransientReadError(
                f"{where} changed or ignored Range while resuming at byte {self.received}"
            )
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
        total = int(match.group(3)) if match and match.group(3) != "*" else None
        if (
            match is None
            or int(match.group(1)) != self.received
            or (self.total is not None and total is not None and total != self.total)
            or (response.headers.get("ETag") not in (None, self.etag))
        ):
            response.close()
            raise TransientReadError(
                f"{where}: resumed range does not continue at byte {self.received}"
            )
        self.response = response

    def _body(self) -> Iterator[bytes]:
        """The current response's body in chunks of ``chunk_size``, losing nothing on a cut.

        ``iter_content`` would not do: urllib3 2 fills each chunk with repeated reads and,
        when the connection dies half-way, raises ``IncompleteRead`` with the bytes it
        already has still in its buffer -- the resume would then start up to a whole
        chunk too early. ``read1`` returns what has arrived; we gather it into chunks
        ourselves and hand out the last partial one before reporting the cut.
        """
        raw = self.response.raw
        read1 = getattr(raw, "read1", None)
        if read1 is None:  # urllib3 1.x: small reads bound what a cut can lose
            yield from raw.stream(min(self.chunk_size, 1 << 16), decode_content=False)
            return
        buffer = bytearray()
        cut: BaseException | None = None
        try:
            # the bytes as sent: a Content-Encoding is kept, not undone (see module doc)
            while data := read1(self.chunk_size - len(buffer), decode_content=False):
                buffer += data
                if len(buffer) >= self.chunk_size:
                    yield bytes(buffer)
                    buffer.clear()
        except _CUT_SHORT as exc:
            cut = exc
        if buffer:
            yield bytes(buffer)
        if cut is not None:
            raise cut

    def chunks(self) -> Iterator[bytes]:
        try:
            while True:
                cut: BaseException | None = None
                try:
                    for chunk in self._body():
                        stopping.check()  # a stopping run abandons the transfer (no publish)
                        self.received += len(chunk)
                        yield chunk
                    if self.total is not None and self.received < self.total:
                        cut = _ShortRead(f"{self.received} of {self.total} bytes")
                except _CUT_SHORT as exc:
                    cut = exc
                if cut is None:
                    return
                self.response.close()
                # outside the except block: the transport error (whose text may hold the
                # URL) must not ride along as __context__ into logged tracebacks
                self._resume(cut)
        finally:
            self.response.close()


def _suffix(first: bytes, url: str, transfer: _Transfer) -> str:
    return compression.stored_suffix(
        first,
        url=url,
        content_type=transfer.content_type,
        content_encoding=transfer.content_encoding,
    )


def _stored_already(
    url: str, store: Sink, key: str, expected_size: int, wanted_md5: str | None, named: bool
) -> StoredObject | None:
    """An identical object already in the store, looked up without contacting the server
    (a FITS key under the suffix the URL suggests)."""
    hinted = compression.with_suffix(key, compression.suffix_hint(url)) if named else key
    return store.exists_same(hinted, expected_size, md5=wanted_md5)


def _check_announced(
    where: str,
    size: int | None,
    md5: str | None,
    expected_size: int | None,
    wanted_md5: str | None,
) -> None:
    """Refuse before reading the body when the server's own size or ETag MD5 already
    contradicts what the metadata promised."""
    if expected_size is not None and size is not None and size != expected_size:
        raise IntegrityError(f"{where} is {size} bytes, expected {expected_size}")
    if wanted_md5 and md5 and wanted_md5 != md5:
        raise IntegrityError(f"{where}: server ETag MD5 {md5} differs from {wanted_md5}")


def _store_body(
    transfer: _Transfer,
    url: str,
    store: Sink,
    key: str,
    *,
    named: bool,
    expected_size: int | None,
    wanted_md5: str | None,
) -> StoredObject:
    """Stream the transfer into ``store``, checked against the sizes and MD5s announced;
    a FITS key is named by what the first bytes show it is (``.fits.gz``, ...). The
    response is closed however it ends."""
    where = _safe_url(url)
    size, md5 = transfer.total, transfer.md5
    try:
        _check_announced(where, size, md5, expected_size, wanted_md5)
        chunks = transfer.chunks()
        first = next(chunks, b"")
        if named:
            key = compression.with_suffix(key, _suffix(first, url, transfer))
        stored = store.put_stream(
            key,
            itertools.chain([first], chunks),
            expected_size=expected_size if expected_size is not None else size,
            expected_md5=md5 or wanted_md5,
        )
    finally:
        transfer.response.close()
    if transfer.resumes:
        log.info("%s stored after %d resume(s)", where, transfer.resumes)
    return stored


def download(
    url: str,
    store: Sink,
    key: str,
    *,
    session: requests.Session | None = None,
    headers: Mapping[str, str] | None = None,
    expected_size: int | None = None,
    expected_md5: str | None = None,
    chunk_size: int = 1 << 20,
    max_resumes: int = 3,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    skip_existing: bool = True,
    form: Sequence[tuple[str, str]] | None = None,
) -> StoredObject:
    """Stream ``url`` into ``store`` under ``key``; verified, resumed if cut off.

    ``expected_size`` is Datalink's ``content_length``; ``expected_md5`` a checksum from
    the metadata. When ``skip_existing`` and the size is known, an identical object
    already in the store is returned (``skipped=True``) without contacting the server.

    Raises :class:`UrlExpiredError` (403), :class:`NotFoundError` (404/410),
    :class:`TransientReadError` (429/5xx/network/unresumable cut),
    :class:`IntegrityError` (size or MD5 mismatch), :class:`ReadError` (other).
    With ``form``, the request is a POST of those fields (a SODA service that refuses
    GET), and a cut body is not resumed.
    """
    store.path(key)  # refuse an unsafe key before touching the network
    wanted_md5 = expected_md5.strip().strip('"').lower() if expected_md5 else None
    named = compression.suffix_of(key) is not None  # a FITS key: named by what arrives
    if skip_existing and expected_size is not None:
        found = _stored_already(url, store, key, expected_size, wanted_md5, named)
        if found is not None:
            return found
    own = session is None
    session = session or requests.Session()
    try:
        transfer = _Transfer(
            session,
            url,
            dict(headers or {}),
            chunk_size=chunk_size,
            max_resumes=max_resumes,
            timeout=timeout,
            form=form,
        )
        return _store_body(
            transfer,
            url,
            store,
            key,
            named=named,
            expected_size=expected_size,
            wanted_md5=wanted_md5,
        )
    finally:
        if own:
            session.close()
