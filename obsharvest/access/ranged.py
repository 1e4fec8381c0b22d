"""A read-only file over HTTP made of explicit ``Range`` GETs: never a HEAD.

Astropy's ``fits.open(url, use_fsspec=True)`` goes through fsspec's HTTP file system,
which sends a HEAD before its first range read to learn the size. Real archives do not
all answer HEAD: GAVO DaCHS 2.7 accepts the connection and never sends a status line on
its product and SODA URLs, while a ``Range: bytes=0-2879`` GET on the same URL answers
206 at once. So the size comes from what the archive already said (Datalink's
``content_length``) or from the first 206's ``Content-Range: bytes 0-N/<size>``.

A server that ignores ``Range`` answers 200 with the whole body. Then only the bytes the
reader needs are taken from the stream and the connection is closed (a header read of a
2 GB file must not download it); a later read further into the file streams from the
start again and skips, at most ``max_skip`` bytes, which is enough for headers at the
front of a file and refuses to download a whole image to find a late extension.

Every request has connect and read timeouts (the read timeout bounds the pause between
two bytes, so a body that stalls fails too); errors are the header-read family of
:mod:`obsharvest.verify.containment`, which says what is worth retrying.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping

import requests

from obsharvest.errors import (
    CorruptHeaderError,
    ReadError,
    TransientReadError,
    read_error,
    without_query,
)
from obsharvest.net.http import retry_after
from obsharvest.runtime import stopping

DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (longest pause between two bytes) seconds
DEFAULT_MAX_SKIP = 64 * 2**20  # bytes streamed and dropped to reach an offset without Range
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_TRANSPORT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
    TimeoutError,
)


class RangedHttpFile(io.RawIOBase):
    """Seekable, read-only bytes of one URL, fetched ``block_size`` bytes at a time.

    ``size`` may be given (Datalink ``content_length``); otherwise the first reply tells.
    ``content_type`` is the first reply's ``Content-Type`` (decides unlabelled access
    URLs); ``ranges`` is False once the server has shown it ignores ``Range``.
    """

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        block_size: int = 32768,
        size: int | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        max_skip: int = DEFAULT_MAX_SKIP,
    ) -> None:
        super().__init__()
        self.url = url
        self._session = session or requests.Session()
        self._own_session = session is None
        self._headers = {"Accept-Encoding": "identity", **(headers or {})}
        self.block_size = max(2880, int(block_size))
        self.timeout = timeout
        self.max_skip = max_skip
        self.size = size
        self.content_type: str | None = None
        self.ranges = True
        self.requests = 0
        self._blocks: dict[int, bytes] = {}
        self._pos = 0
        self._fetch_block(0)  # learn size and type now: astropy asks for the size first

    # -- io.RawIOBase ----------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._known_size() + offset
        else:
            raise ValueError(f"invalid whence {whence}") from None
        if pos < 0:
            raise ValueError("negative seek position") from None
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read_range(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if self._own_session and not self.closed:
            self._session.close()
        super().close()

    # -- ranges ------------------------------------------------------------------------
    def read_range(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the file)."""
        if self.size is not None:
            length = max(0, min(length, self.size - start))
        if length <= 0:
            return b""
        out = bytearray()
        first, last = start // self.block_size, (start + length - 1) // self.block_size
        for index in range(first, last + 1):
            block = self._blocks.get(index)
            if block is None:
                block = self._fetch_block(index)
            lo = max(start, index * self.block_size) - index * self.block_size
            hi = min(start + length, (index + 1) * self.block_size) - index * self.block_size
            out += block[lo:hi]
            if len(block) < self.block_size:  # the end of the file
                break
        return bytes(out)

    def read_exact(self, start: int, length: int) -> bytes:
        """Exactly the bytes asked, in one request of that size (a mask pixel): no block
        read-ahead, since 4 bytes must not cost ``block_size``."""
        if self.ranges:
            return self._get(start, start + length - 1)
        return self.read_range(start, length)

    def _known_size(self) -> int:
        if self.size is None:
            raise ReadError(
                f"the size of {without_query(self.url)} is unknown (no Content-Range, no "
                "Content-Length)",
                url=self.url,
            ) from None
        return self.size

    def _fetch_block(self, index: int) -> bytes:
        start = index * self.block_size
        end = start + self.block_size - 1
        if self.size is not None:
            end = min(end, self.size - 1)
        block = self._get(start, end) if start <= end else b""
        self._blocks[index] = block
        return block

    def _get(self, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (inclusive) with one GET; a 200 is read only as far as needed."""
        stopping.check()
        headers = {**self._headers, "Range": f"bytes={start}-{end}"}
        where = without_query(self.url)
        self.requests += 1
        try:
            response = self._session.get(
                self.url, headers=headers, stream=True, timeout=self.timeout
            )
        except requests.TooManyRedirects:
            raise ReadError(
                f"too many redirects (a redirect loop?) for {where}", url=self.url
            ) from None
        except _TRANSPORT as exc:
            raise TransientReadError(
                f"reading {where} failed: {type(exc).__name__}", url=self.url
            ) from None
        except requests.RequestException as exc:  # a bad URL, an unsupported scheme
            raise ReadError(f"cannot read {where}: {type(exc).__name__}", url=self.url) from None
        try:
            status = response.status_code
            if status == 416 and start == 0:
                raise CorruptHeaderError(f"{where} is empty (HTTP 416)", url=self.url) from None
            if status not in (200, 206):
                error = read_error(status, self.url, response.reason or "")
                if isinstance(error, TransientReadError):
                    error.retry_after = retry_after(response)
                raise error from None
            if self.content_type is None:
                self.content_type = response.headers.get("Content-Type", "")
            try:
                if status == 206:
                    return self._partial(response, start, end)
                return self._whole(response, start, end)
            except _TRANSPORT as exc:
                raise TransientReadError(
                    f"reading {where} failed mid-body: {type(exc).__name__}", url=self.url
                ) from None
        finally:
            _finish(response)

    def _partial(self, response: requests.Response, start: int, end: int) -> bytes:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != start:
            raise ReadError(
                f"{without_query(self.url)} answered 206 with Content-Range "
                f"{response.headers.get('Content-Range')!r} for bytes {start}-{end}",
                url=self.url,
            ) from None
        if match.group(3) != "*":
            self.size = int(match.group(3))
        expected = int(match.group(2)) - start + 1
        data = response.raw.read(expected, decode_content=False)
        if len(data) != expected:
            raise TransientReadError(
                f"{without_query(self.url)}: {len(data)} of {expected} bytes arrived", url=self.url
            ) from None
        return data

    def _whole(self, response: requests.Response, start: int, end: int) -> bytes:
        """A 200 to a Range request: skip to ``start``, take what is asked, hang up."""
        self.ranges = False
        length = response.headers.get("Content-Length", "")
        if self.size is None and length.isdigit():
            self.size = int(length)
        if start > self.max_skip:
            raise ReadError(
                f"{without_query(self.url)} ignores HTTP Range and the header is beyond "
                f"{self.max_skip // 2**20} MiB: not downloading the file to read it",
                url=self.url,
            ) from None
        skipped = 0
        while skipped < start:
            chunk = response.raw.read(min(2**20, start - skipped), decode_content=False)
            if not chunk:
                return b""
            skipped += len(chunk)
        wanted = end - start + 1
        parts, got = [], 0
        while got < wanted:
            chunk = response.raw.read(wanted - got, decode_content=False)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        if len(data) < wanted and self.size is None:
            self.size = start + len(data)  # the body ended: that is the file's size
        return data  # _finish drops the connection: the rest of the file is never read


def _finish(response: requests.Response) -> None:
    """Keep the connection alive when its body was read to the end (a 206 of the exact
    length: the next range read of the batch reuses it); otherwise close it, so an
    unread body (a 200 that ignored Range, an error page) is never downloaded."""
    raw = response.raw
    if getattr(raw, "length_remaining", None) == 0 and hasattr(raw, "release_conn"):
        raw.release_conn()
    else:
        response.close()
