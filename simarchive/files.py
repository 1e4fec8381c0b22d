"""FITS files on disk, generated on first request and then served with HTTP Range.

Pixels are produced lazily because a benchmark archive can describe thousands of 200 MB
images; only the ones a client actually reads are written. Writing goes to a temporary
name and is renamed into place, so a concurrent reader never sees half a file.

Archives serve files compressed in three ways (the ``files`` dialect, :data:`SERVED`):
tile-compressed ``.fits.fz`` (still FITS, ``application/fits``), gzip ``.fits.gz``
(``application/x-gzip``), or gzip bytes of a ``.fits`` URL labelled
``Content-Encoding: gzip`` (a static server's ``AddEncoding``, an S3 object uploaded with
that metadata: sent encoded whatever ``Accept-Encoding`` says, ranges counted in the
encoded bytes). The compressed file is derived from the plain one, which stays in the
cache for SODA cutouts; HTTP Range always applies to the bytes on the wire.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from obsharvest.simarchive.httpcore import FileBody, Response
from obsharvest.simarchive.sky.fitsgen import gzip_compress, tile_compress

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
FITS_TYPE = "application/fits"
GZIP_TYPE = "application/x-gzip"


@dataclass(frozen=True)
class ServedAs:
    """How one ``files`` dialect publishes a product file."""

    url_suffix: str  # appended to the product's ``.fits`` path in URLs
    disk_suffix: str  # appended to it in the cache (what is on the wire)
    content_type: str
    content_encoding: str | None = None
    write: Callable[[str, str], None] | None = None  # (plain, dest); None: the plain file


SERVED = {
    "fits": ServedAs("", "", FITS_TYPE),
    "fz": ServedAs(".fz", ".fz", FITS_TYPE, write=tile_compress),
    "gz": ServedAs(".gz", ".gz", GZIP_TYPE, write=gzip_compress),
    "gz-encoded": ServedAs("", ".gz", FITS_TYPE, "gzip", write=gzip_compress),
}


class FitsCache:
    def __init__(self, sky, directory: Path, files: str = "fits") -> None:
        self.sky = sky  # replaced when the archive publishes new visits
        self._dir = directory
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.served = SERVED[files]

    def _lock(self, product_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(product_id, threading.Lock())

    def ensure(self, product) -> tuple[Path, str]:
        """Return the file for ``product`` as served (compressed in the ``fz``/``gz``
        dialects) and its MD5 (the ETag), writing it if needed."""
        plain, etag = self.ensure_plain(product)
        write = self.served.write
        if write is None:
            return plain, etag
        return self.ensure_derived(
            product.file_path + self.served.disk_suffix, lambda tmp: write(str(plain), tmp)
        )

    def ensure_plain(self, product) -> tuple[Path, str]:
        """The uncompressed FITS file of ``product`` (what SODA cuts from) and its MD5."""
        return self.ensure_derived(
            product.file_path, lambda tmp: self.sky.write_fits(product.id, tmp)
        )

    def url_path(self, product) -> str:
        """The product's path in file URLs (``.fits.fz``/``.fits.gz`` when so served)."""
        return product.file_path + self.served.url_suffix

    def served_size(self, product) -> int:
        """Bytes on the wire: the plain size from the headers alone; a compressed file's
        only once written (a real archive knows it; here it is made on demand)."""
        if self.served.write is None:
            return self.sky.fits_size(product.id)
        return self.ensure(product)[0].stat().st_size

    def ensure_derived(self, rel_path: str, write: Callable[[str], None]) -> tuple[Path, str]:
        """Return a cached file (and its MD5), producing it with ``write(tmp_path)`` once."""
        path = self._dir / rel_path
        md5_path = path.with_name(path.name + ".md5")
        with self._lock(rel_path):
            if not md5_path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                # per thread: archives of one process may share a cache directory (tests)
                unique = f"{os.getpid()}-{threading.get_ident()}"
                tmp = path.with_name(f".{path.name}.{unique}.tmp")
                write(str(tmp))
                digest = hashlib.md5()
                with open(tmp, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                os.replace(tmp, path)
                # the MD5 file says the file is there: it appears whole, never half written
                md5_tmp = md5_path.with_name(f".{md5_path.name}.{unique}.tmp")
                md5_tmp.write_text(digest.hexdigest())
                os.replace(md5_tmp, md5_path)
            return path, md5_path.read_text().strip()

    def existing(self, rel_path: str) -> tuple[Path, str] | None:
        """A file produced earlier by ``ensure_derived``, or None."""
        path = self._dir / rel_path
        md5_path = path.with_name(path.name + ".md5")
        if not md5_path.exists() or ".." in Path(rel_path).parts:
            return None
        return path, md5_path.read_text().strip()


def file_response(
    path: Path,
    etag: str,
    range_header: str | None,
    if_none_match: str | None,
    served: ServedAs = SERVED["fits"],
) -> Response:
    """Answer GET/HEAD for a file: 200, 206 for one satisfiable range, 416 otherwise.
    Ranges count the bytes on disk, i.e. the encoded ones under ``Content-Encoding``."""
    size = path.stat().st_size
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{etag}"',
        "Last-Modified": "Thu, 01 Dec 2022 00:00:00 GMT",
    }
    if served.content_encoding:
        headers["Content-Encoding"] = served.content_encoding
    ctype = served.content_type
    if if_none_match and if_none_match.strip('"') == etag:
        return Response(304, b"", ctype, headers)
    if range_header:
        match = _RANGE.match(range_header.strip())
        if match and (match.group(1) or match.group(2)):
            first, last = match.groups()
            if first:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(last), 0)
                end = size - 1
            if start >= size or end < start:
                headers["Content-Range"] = f"bytes */{size}"
                return Response(416, b"", ctype, headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return Response(206, FileBody(str(path), start, end - start + 1), ctype, headers)
        # multiple or malformed ranges: ignore the header and send the whole file, as RFC 9110 allows
    return Response(200, FileBody(str(path), 0, size), ctype, headers)
