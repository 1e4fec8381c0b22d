"""Compressed FITS as archives serve it: tile-compressed ``.fits.fz`` and gzip ``.fits.gz``.

Two kinds reach a harvester, and they need opposite handling:

- **Tile compression** (fpack, ``.fits.fz``): the file is still FITS. Each image is a
  ``BINTABLE`` with ``ZIMAGE = T``, its size in ``ZNAXISn`` and its WCS in the same
  header, so header-only containment reads it with ranged GETs like any FITS file
  (astropy presents the table as a ``CompImageHDU`` whose header is the image's).
- **gzip** of a whole FITS file (``.fits.gz``), served as ``application/x-gzip`` or
  ``application/gzip``, or as plain-looking ``.fits`` with ``Content-Encoding: gzip``
  (a static server's ``AddEncoding``, an S3 object uploaded with that metadata, which is
  sent encoded whatever ``Accept-Encoding`` asks, with ranges counted in encoded bytes).
  gzip is not seekable: the header is read by decompressing the stream from byte 0, a
  reader block at a time, only as far as the FITS headers need (:func:`header_stream`).

What the bytes are is decided by the bytes (gzip's magic ``1f 8b``; a ``ZIMAGE = T``
card in the first headers), then by the URL's name and the media type: a URL suffix is
a hint a server may not follow, a magic number is not.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from typing import Protocol
from urllib.parse import unquote, urlsplit

from obsharvest.errors import ReadError, without_query

GZIP_MAGIC = b"\x1f\x8b"
GZIP_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/x-gunzip"})
PLAIN, TILED, GZIPPED = ".fits", ".fits.fz", ".fits.gz"  # stored key suffixes
FITS_SUFFIXES = (TILED, GZIPPED, PLAIN)  # longest first: ".fits" ends neither of the others
DEFAULT_GZIP_HEADER_LIMIT = 1 << 20  # compressed bytes a header read may decompress
FITS_BLOCK = 2880
_ZIMAGE = re.compile(rb"ZIMAGE  =\s+T\b")


class RangeSource(Protocol):
    """What :func:`header_stream` reads from: a :class:`~obsharvest.access.ranged.RangedHttpFile`."""

    url: str
    block_size: int

    def read_range(self, start: int, length: int) -> bytes: ...


def is_gzip(first_bytes: bytes) -> bool:
    """gzip's magic number (RFC 1952 §2.3.1)."""
    return first_bytes[:2] == GZIP_MAGIC


def is_gzip_type(content_type: str | None) -> bool:
    """``application/gzip`` and its older names, any parameters or case."""
    return (content_type or "").split(";")[0].strip().lower() in GZIP_TYPES


def is_tile_compressed(first_bytes: bytes, max_blocks: int = 40) -> bool:
    """A ``ZIMAGE = T`` card among the first header blocks: an fpacked image (the primary
    HDU of a ``.fits.fz`` is empty, so the first extension header follows at once)."""
    end = min(len(first_bytes), max_blocks * FITS_BLOCK)
    # bytes.find, not a Python loop over cards: this runs on every downloaded file's first
    # chunk (1,440 cards; ~9% of the image threads' time in a latency-bound harvest)
    at = first_bytes.find(b"ZIMAGE  =", 0, end)
    while at != -1:
        if at % 80 == 0 and at + 80 <= end and _ZIMAGE.match(first_bytes, at, at + 80):
            return True
        at = first_bytes.find(b"ZIMAGE  =", at + 1, end)
    return False


def name_suffix(url: str) -> str:
    """What the URL's path calls the file: ``.fits.gz`` for ``.gz``, ``.fits.fz`` for
    ``.fz``, else ``.fits`` (query strings, where signed URLs keep their signature, ignored)."""
    path = unquote(urlsplit(url).path).lower()
    if path.endswith((".gz", ".gzip")):
        return GZIPPED
    if path.endswith(".fz"):
        return TILED
    return PLAIN


def suffix_hint(url: str, content_type: str | None = None) -> str:
    """The key suffix expected before any byte is read: the media type, then the URL."""
    if is_gzip_type(content_type):
        return GZIPPED
    return name_suffix(url)


def stored_suffix(
    first_bytes: bytes,
    *,
    url: str = "",
    content_type: str | None = None,
    content_encoding: str | None = None,
) -> str:
    """The key suffix for bytes stored as served: ``.fits.gz`` for gzip bytes (whatever the
    labels say), ``.fits.fz`` for an fpacked file, ``.fits`` for plain FITS.

    The first chunk decides; labels only decide when it cannot (a ``ZIMAGE`` card beyond
    it, or no bytes yet).
    """
    if is_gzip(first_bytes):
        return GZIPPED
    if is_tile_compressed(first_bytes):
        return TILED
    if first_bytes[:9] == b"SIMPLE  =":
        return TILED if name_suffix(url) == TILED else PLAIN
    if (content_encoding or "").strip().lower() in ("gzip", "x-gzip"):
        return GZIPPED
    return suffix_hint(url, content_type)


def with_suffix(key: str, suffix: str) -> str:
    """``a/b.fits`` (or ``.fits.gz``/``.fits.fz``) with its FITS suffix replaced."""
    for known in FITS_SUFFIXES:
        if key.endswith(known):
            return key[: -len(known)] + suffix
    return key + suffix


def stored_key(key: str, uri: str | None) -> str:
    """The key an earlier run stored an image under: ``key`` with the FITS suffix its
    recorded URI ends with (``.fits.gz`` for a gzip file), else ``key`` itself."""
    suffix = suffix_of(uri)
    return with_suffix(key, suffix) if suffix and suffix_of(key) else key


def suffix_of(name: str | None) -> str | None:
    """The FITS suffix a stored key or URI ends with, or None."""
    for known in FITS_SUFFIXES:
        if name and name.endswith(known):
            return known
    return None


def gunzip_prefix(data: bytes, limit: int = 4 * FITS_BLOCK) -> bytes:
    """Up to ``limit`` decompressed bytes of a gzip stream's beginning (a truncated stream
    is fine: only its start is asked for); b"" when it is not gzip."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, limit)
    except zlib.error:
        return b""


class _CompressedPrefix(io.RawIOBase):
    """The compressed bytes of ``source``, handed out at most one reader block per read.

    :class:`gzip.GzipFile` asks its file for 128 KiB at a time; through this it gets one
    block (8-32 KB) and decompresses that before asking for more, so a header read costs
    the blocks the header spans. Reading past ``limit`` bytes raises: verifying a file
    whose WCS header sits behind its pixel data would mean downloading it.
    """

    def __init__(self, source: RangeSource, limit: int) -> None:
        super().__init__()
        self._source = source
        self._limit = limit
        self._pos = 0
        self.consumed = 0  # the farthest compressed byte handed out

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("the end of a gzip stream read by range is unknown")
        self._pos = max(0, offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(FITS_BLOCK, self._source.block_size))
        if self._pos + want > self._limit:
            url = self._source.url
            raise ReadError(
                f"the FITS header of {without_query(url)} lies beyond the first "
                f"{self._limit // 1024} KiB of its gzip stream: not downloading it to verify",
                url=url,
            )
        data = self._source.read_range(self._pos, want)
        view[: len(data)] = data
        self._pos += len(data)
        self.consumed = max(self.consumed, self._pos)
        return len(data)


class _LazySeekGzipFile(gzip.GzipFile):
    """A GzipFile that moves only when read.

    Astropy seeks past an HDU's data as soon as it has read its header, to be ready for
    the next one; on a gzip stream a forward seek decompresses everything in between, so
    finding the WCS in a calexp's ``IMAGE`` header would fetch the whole image (measured:
    70% of the file). Here a seek just notes the position; the decompression happens on
    the next read, which a header walk that stops at its first hit never makes.
    """

    _pending: int | None = None

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("the end of a gzip stream read by range is unknown")
        self._pending = offset
        return offset

    def tell(self) -> int:
        # not super().tell(): IOBase's is seek(0, SEEK_CUR), which would come back here
        return self._pending if self._pending is not None else super().seek(0, io.SEEK_CUR)

    def _settle(self) -> None:
        if self._pending is not None:
            target, self._pending = self._pending, None
            super().seek(target)

    def read(self, size: int | None = -1) -> bytes:
        self._settle()
        return super().read(-1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        self._settle()
        return super().read1(size)

    def readinto(self, buffer) -> int:
        self._settle()
        return super().readinto(buffer)

    def peek(self, n: int = 0) -> bytes:
        self._settle()
        return super().peek(n)

    def readline(self, size: int | None = -1) -> bytes:
        self._settle()
        return super().readline(size)


def header_stream(
    source: RangeSource, limit: int = DEFAULT_GZIP_HEADER_LIMIT
) -> gzip.GzipFile | None:
    """A decompressing reader over ``source`` when its bytes are gzip, else None.

    Astropy recognises a :class:`gzip.GzipFile` (it does not look for gzip's magic in other
    file objects) and then never asks for the file's size; its lazy HDU walk reads the
    headers in order, and with seeks deferred to the next read (:class:`_LazySeekGzipFile`)
    only the compressed blocks holding them are fetched. The reader's block cache keeps a
    rewind (GzipFile seeks backwards by starting again) off the network.
    """
    if not is_gzip(source.read_range(0, 2)):
        return None
    return _LazySeekGzipFile(fileobj=_CompressedPrefix(source, limit), mode="rb")
