"""Object storage through fsspec: stream in, checksum, never show a partial object.

A nightly harvest gets killed, loses its network and meets archives that cut bodies
short. Whatever happens, a reader of the store must see either no object or a complete,
verified one under a key -- a half FITS file that a rerun then skips as "present" is the
worst outcome. How that is achieved depends on the file system:

- Object stores (s3/s3a, gs/gcs, az/abfs/adl) publish an object only when the upload is
  completed, i.e. when the fsspec file is closed. On S3 and GCS we write to the final key
  directly and, on failure, call the file's ``discard()`` (s3fs aborts the multipart
  upload, gcsfs cancels the resumable upload session) instead of ``close()``. Each upload
  there is a session of its own: two runs writing one key at once both succeed, the last
  completed wins (measured on SeaweedFS and fake-gcs-server). Incomplete multipart uploads
  that a killed process leaves behind are invisible and billed; a bucket lifecycle rule
  (AbortIncompleteMultipartUpload) reaps them (GCS expires resumable sessions after a
  week). The write buffer, which is also the part size, is set to
  :data:`WRITE_BLOCK_SIZE`: s3fs's default (50 MiB) would hold that much per upload in
  memory, times the download workers. ``mv`` is not used there (on S3 it is copy + delete).
- Azure Blob (az/abfs/abfss/adl) publishes a block blob only when its block list is
  committed, but the staged blocks belong to the *blob name*, not to an upload: when one
  writer commits, the other writer's uncommitted blocks of that name are dropped and its
  commit then fails with ``InvalidBlockList`` (measured on Azurite with two adlfs writers;
  Azure documents the garbage collection of uncommitted blocks at commit). Runs at once do
  write one key (an image that serves targets of both), so here the blocks go to a unique
  temporary key ``.{name}.part-{uuid}`` (invisible until committed, nothing committed on
  failure), which a server-side copy then puts under the final key, whole, in one step
  (the copy is waited for until Azure reports it complete), and the temporary is deleted.
  The alternative, spooling to a local file for one ``Put Blob``, would hold the whole
  file in memory in the Azure SDK (its single-shot upload reads the stream at once) or
  fall back to block lists above 64 MiB: the copy costs one server-side request instead.
- Everything else (local disk, memory, ...) shows bytes as they are written, so we write
  ``.{name}.part-{uuid}`` in the same directory and ``mv`` it into place after
  verification (a rename on a local disk: atomic). :meth:`ObjectStore.delete_partials`
  removes temps left by killed runs.

After an object is committed a sidecar ``{key}.sha256`` is written in the format
``sha256sum -c`` reads (``<hex>  <name>``, plus a ``#`` comment line with the size and MD5),
so a person can check a download with standard tools and a rerun decides "already there,
identical" from two small reads instead of rereading gigabytes (JSON sidecars of earlier
versions are still read). The old sidecar is removed *before* a new object is committed, so a
crash between the two leaves an object without a sidecar (rehashed on the next check),
never an object described by a stale sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import posixpath
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import fsspec

from obsharvest.errors import (
    IntegrityError,
    NotFoundError,
    ReadError,
    StorageError,
    StorageKeyError,
    TransientReadError,
    UrlExpiredError,
)
from obsharvest.models import StoredObject
from obsharvest.runtime.crashpoints import crashpoint
from obsharvest.storage.download import DEFAULT_TIMEOUT, download
from obsharvest.storage.keys import is_safe_key, object_key, sanitize_part

__all__ = [
    "DIRECT_WRITE_PROTOCOLS",
    "ReadError",
    "IntegrityError",
    "NotFoundError",
    "ObjectStore",
    "StorageError",
    "StorageKeyError",
    "TransientReadError",
    "UrlExpiredError",
    "download",
    "object_key",
    "sanitize_part",
    "with_timeouts",
]

log = logging.getLogger(__name__)

# file systems whose writes become visible only when the file is closed successfully
DIRECT_WRITE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
# ... of which those where two uploads of one key at once collide (Azure block lists): an
# object that several writers may write goes to a temporary key and is copied into place
COPY_PUBLISH_PROTOCOLS = frozenset({"az", "abfs", "abfss", "adl"})
COPY_WAIT_SECONDS = 600.0  # a server-side copy still pending after this has failed
SIDECAR_SUFFIX = ".sha256"
PART_MARKER = ".part-"
STALE_PARTIAL_SECONDS = 3600.0  # a temp older than this belongs to a dead run
_READ_BLOCK = 1 << 20
# buffer per direct write = multipart part size: >= S3's 5 MiB minimum, a multiple of GCS's
# 256 KiB resumable-upload granule; 10,000 parts of it allow objects up to 80 GiB
WRITE_BLOCK_SIZE = 8 << 20


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)


def _normalise_md5(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().strip('"').lower()
    return value or None


def mtime_of(info: dict[str, Any]) -> float | None:
    """Modification time in epoch seconds from an fsspec info dict, whatever its backend."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created", "modified"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def with_timeouts(
    url: str,
    storage_options: Mapping[str, Any] | None,
    timeout: tuple[float, float] | None = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """``storage_options`` for ``url`` with connect and read timeouts added, in the shape its
    fsspec back end takes them; what the user set always wins.

    A bucket endpoint that accepts a connection and then says nothing must end the call
    like any other stalled transfer (a transient failure). The back ends differ:

    - s3fs: botocore's ``connect_timeout``/``read_timeout`` in ``config_kwargs`` (merged
      under the user's ``config_kwargs``);
    - gcsfs: ``requests_timeout``, passed to every aiohttp request; without it aiohttp gets
      ``timeout=None``, i.e. none at all;
    - adlfs: ``connection_timeout``/``read_timeout`` (whole seconds);
    - fsspec's HTTP: an aiohttp ``ClientTimeout`` in ``client_kwargs`` (no total: a large
      file may take long, as long as bytes keep coming).

    Local, memory and unknown file systems are left as they are. ``timeout=None`` adds
    nothing.
    """
    options = dict(storage_options or {})
    if timeout is None or "::" in url:
        return options
    connect, read = float(timeout[0]), float(timeout[1])
    protocol = (fsspec.core.split_protocol(url)[0] or "file").lower()
    if protocol in ("s3", "s3a"):
        user = dict(options.get("config_kwargs") or {})
        options["config_kwargs"] = {"connect_timeout": connect, "read_timeout": read, **user}
    elif protocol in ("gs", "gcs"):
        if options.get("requests_timeout") is None:
            options["requests_timeout"] = _aiohttp_timeout(connect, read)
    elif protocol in ("az", "abfs", "abfss"):
        options.setdefault("connection_timeout", max(1, math.ceil(connect)))
        options.setdefault("read_timeout", max(1, math.ceil(read)))
    elif protocol in ("http", "https"):
        client = dict(options.get("client_kwargs") or {})
        client.setdefault("timeout", _aiohttp_timeout(connect, read))
        options["client_kwargs"] = client
    return options


def _aiohttp_timeout(connect: float, read: float) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


def sidecar_text(name: str, sha256: str, md5: str | None, size: int) -> str:
    """A ``.sha256`` sidecar that ``sha256sum -c`` reads in the object's directory
    (``<hex>  <name>``; GNU's escaping for a name with a backslash or a line break), and a
    comment line (``sha256sum`` skips lines starting with ``#``) with what obsharvest also
    checks on a rerun: the size and the MD5 an archive's ETag is compared with."""
    escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    lead = "\\" if escaped != name else ""
    extra = f"size={size}" + (f" md5={md5}" if md5 else "")
    return f"{lead}{sha256}  {escaped}\n# obsharvest: {extra}\n"


_SUM_LINE = re.compile(r"^\\?([0-9a-fA-F]{64}) [ *].+$")
_EXTRA = re.compile(r"\b(size|md5)=([0-9a-fA-F]+)")


def parse_sidecar(raw: bytes) -> dict[str, Any] | None:
    """``{"sha256", "md5", "size"}`` from a sidecar: the ``sha256sum`` format (md5 and size
    None when a foreign one does not say them) or the JSON of earlier obsharvest versions;
    None when it is neither."""
    text = raw.decode("utf-8", "replace")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            return {
                "sha256": str(data["sha256"]).lower(),
                "md5": _normalise_md5(data.get("md5")),
                "size": int(data["size"]),
            }
        except (ValueError, KeyError, TypeError):
            return None
    sha256, extra = None, {}
    for line in text.splitlines():
        if line.startswith("#"):
            extra.update(dict(_EXTRA.findall(line)))
            continue
        match = _SUM_LINE.match(line)
        if match and sha256 is None:
            sha256 = match.group(1).lower()
    if sha256 is None:
        return None
    try:
        size = int(extra["size"]) if "size" in extra else None
    except ValueError:
        size = None
    return {"sha256": sha256, "md5": _normalise_md5(extra.get("md5")), "size": size}


class ObjectStore:
    """Objects under one root URL (``/data/harvest``, ``s3://bucket/prefix``, ``memory://x``).

    ``storage_options`` go to fsspec (credentials, endpoint_url, ...), with ``timeout``
    (connect, read seconds) added where they set none (:func:`with_timeouts`).
    ``publish`` is how an object appears under its key: ``"direct"`` (written there, the
    upload completed at the end: S3, GCS), ``"copy"`` (written to a temporary key, then a
    server-side copy: Azure) or ``"rename"`` (a temporary file renamed: local disks and the
    rest); ``None`` decides by protocol. ``direct_write`` (True: direct, False: rename) is
    the older switch for the same (tests, or a file system this module does not know).
    """

    def __init__(
        self,
        root: str,
        storage_options: dict[str, Any] | None = None,
        *,
        direct_write: bool | None = None,
        publish: str | None = None,
        write_block_size: int = WRITE_BLOCK_SIZE,
        timeout: tuple[float, float] | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.root_url = root
        self.write_block_size = write_block_size
        self.fs, path = fsspec.core.url_to_fs(root, **with_timeouts(root, storage_options, timeout))
        self.root = path.rstrip("/") or path
        if publish is None and direct_write is not None:
            publish = "direct" if direct_write else "rename"
        if publish is None:
            protocols = _protocols(self.fs)
            if protocols & COPY_PUBLISH_PROTOCOLS:
                publish = "copy"
            elif protocols & DIRECT_WRITE_PROTOCOLS:
                publish = "direct"
            else:
                publish = "rename"
        if publish not in ("direct", "copy", "rename"):
            raise ValueError(f"publish must be direct, copy or rename, not {publish!r}")
        self.publish = publish

    @property
    def direct_write(self) -> bool:
        """Whether objects are written under their final key (no temporary to clean up)."""
        return self.publish == "direct"

    def __repr__(self) -> str:
        mode = {"direct": "direct", "copy": "temp+copy", "rename": "temp+rename"}[self.publish]
        return f"ObjectStore({self.root_url!r}, {mode})"

    # -- naming ---------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The file system path of ``key``; refuses keys that could leave the root."""
        if not is_safe_key(key):
            raise StorageKeyError(f"unsafe object key {key[:80]!r}: build keys with object_key()")
        return f"{self.root}/{key}" if self.root not in ("", "/") else f"{self.root}{key}"

    def uri(self, key: str) -> str:
        """The full fsspec URL of ``key`` (what :class:`StoredObject` records)."""
        return self.fs.unstrip_protocol(self.path(key))

    def _sidecar(self, key: str) -> str:
        return self.path(key) + SIDECAR_SUFFIX

    # -- reading --------------------------------------------------------------------
    def _read_sidecar(self, key: str) -> dict[str, Any] | None:
        try:
            raw = self.fs.cat_file(self._sidecar(key))
        except FileNotFoundError:
            return None
        meta = parse_sidecar(raw)
        if meta is None:  # half-written or foreign: ignore it
            log.warning("ignoring unreadable checksum sidecar of %s", key)
        return meta

    def _write_sidecar(self, key: str, sha256: str, md5: str, size: int) -> None:
        body = sidecar_text(posixpath.basename(self.path(key)), sha256, md5, size).encode()
        try:
            self.fs.pipe_file(self._sidecar(key), body)
        except Exception as exc:  # the object is fine; the next check rehashes it
            log.warning("could not write checksum sidecar of %s: %s", key, exc)

    def _rehash(self, path: str) -> tuple[str, str, int]:
        sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        with self.fs.open(path, "rb") as fh:
            while block := fh.read(_READ_BLOCK):
                sha.update(block)
                md5.update(block)
                size += len(block)
        return sha.hexdigest(), md5.hexdigest(), size

    def exists_same(
        self, key: str, size: int, sha256: str | None = None, *, md5: str | None = None
    ) -> StoredObject | None:
        """The stored object if ``key`` holds ``size`` bytes with matching checksums, else None.

        With a sidecar this costs two small requests. An object without one (written by
        something else, or a crash between object and sidecar) is read back once to
        compute its checksums, and the sidecar is written for next time.
        """
        path = self.path(key)
        # s3fs and friends answer info() from a cached listing of the parent when they have
        # one; another process (a Dask worker, a concurrent run) may have written since.
        # s3fs and gcsfs drop the parents' listings with the path's, adlfs only the path's
        for stale in (path, posixpath.dirname(path)):
            self.fs.invalidate_cache(stale)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type", "file") != "file" or int(info.get("size") or 0) != size:
            return None
        meta = self._read_sidecar(key)
        if meta is None or meta["size"] not in (None, size):
            digest, md5_hex, actual = self._rehash(path)
            if actual != size:
                return None
            meta = {"sha256": digest, "md5": md5_hex, "size": actual}
            self._write_sidecar(key, digest, md5_hex, actual)
        if sha256 is not None and meta["sha256"] != sha256.lower():
            return None
        wanted_md5 = _normalise_md5(md5)
        if wanted_md5 is not None and meta["md5"] is not None and meta["md5"] != wanted_md5:
            return None
        return StoredObject(
            uri=self.uri(key),
            key=key,
            size=size,
            sha256=meta["sha256"],
            md5=meta["md5"],
            skipped=True,
        )

    # -- writing --------------------------------------------------------------------
    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_size: int | None = None,
        expected_md5: str | None = None,
    ) -> StoredObject:
        """Write ``chunks`` to ``key``, verified, in memory bounded by one chunk (+ the
        write buffer on object stores: about twice ``write_block_size``).

        Raises :class:`IntegrityError` when the size or MD5 differs from what was expected
        (the size as soon as it is exceeded); any exception from ``chunks`` propagates.
        Either way nothing is visible under ``key`` afterwards -- but an *earlier* object
        under the same key is replaced only on success.
        """
        path = self.path(key)
        wanted_md5 = _normalise_md5(expected_md5)
        if self.publish == "direct":
            target = path
        else:
            parent, name = posixpath.split(path)
            target = f"{parent}/.{name}{PART_MARKER}{uuid.uuid4().hex}"
        sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        if self.publish == "rename":
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            handle = self.fs.open(target, "wb")
        else:
            handle = self.fs.open(target, "wb", block_size=self.write_block_size)
        committed = uploaded = False
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if expected_size is not None and size > expected_size:
                    raise IntegrityError(
                        f"{key}: received more than the expected {expected_size} bytes"
                    )
                sha.update(chunk)
                md5.update(chunk)
                handle.write(chunk)
                crashpoint("download")
            if expected_size is not None and size != expected_size:
                raise IntegrityError(f"{key}: received {size} bytes, expected {expected_size}")
            md5_hex = md5.hexdigest()
            if wanted_md5 is not None and md5_hex != wanted_md5:
                raise IntegrityError(f"{key}: MD5 {md5_hex} differs from expected {wanted_md5}")
            self._drop_sidecar(key)
            handle.close()  # completes the upload: direct, the object appears whole
            uploaded = True
            if self.publish == "rename":
                self.fs.mv(target, path)
            elif self.publish == "copy":
                self._copy_into_place(target, path)
                self._remove_temp(target)
            committed = True
        finally:
            if not committed:
                self._abort(handle, target, uploaded)
        digest = sha.hexdigest()
        self._write_sidecar(key, digest, md5_hex, size)
        return StoredObject(uri=self.uri(key), key=key, size=size, sha256=digest, md5=md5_hex)

    def _drop_sidecar(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._sidecar(key))

    def _copy_into_place(self, temp: str, path: str) -> None:
        """Server-side copy of the committed temporary onto the final key, waited for."""
        copy = getattr(self.fs, "service_client", None) and getattr(self.fs, "split_path", None)
        if copy:  # adlfs: the Azure SDK's copy, whose completion fsspec's cp_file skips
            from obsharvest.storage.azure import copy_blob

            copy_blob(self.fs, temp, path, COPY_WAIT_SECONDS)
        else:
            self.fs.cp_file(temp, path)
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(posixpath.dirname(path))

    def _remove_temp(self, temp: str) -> None:
        try:
            self.fs.rm_file(temp)
        except FileNotFoundError:
            pass
        except Exception as exc:  # the object is published; delete_partials reaps it later
            log.warning("could not remove temp %s: %s", temp, exc)

    def _abort(self, handle: Any, target: str, uploaded: bool = False) -> None:
        """Throw the write away; must not raise over the error that got us here."""
        if self.publish == "copy" and uploaded:  # the copy failed: only the temp exists
            self._remove_temp(target)
            return
        if self.publish in ("direct", "copy"):
            try:
                discard = getattr(handle, "discard", None)
                if discard is not None:
                    discard()
            except Exception as exc:
                log.warning("discarding the upload of %s failed: %s", target, exc)
            # keep close() (from __del__ or a with-block) from committing what is left
            with contextlib.suppress(Exception):
                handle.closed = True
            return
        with contextlib.suppress(Exception):
            handle.close()
        try:
            self.fs.rm_file(target)
        except FileNotFoundError:
            pass
        except Exception as exc:
            log.warning("could not remove temp %s: %s", target, exc)

    def delete(self, key: str) -> None:
        """Remove an object and its sidecar (missing ones are fine)."""
        self._drop_sidecar(key)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def delete_partials(self, older_than: float = STALE_PARTIAL_SECONDS) -> list[str]:
        """Remove ``.part-`` temps older than ``older_than`` seconds; return their paths.

        The age guard keeps a concurrent run's temps alive; pass 0 when no other run can
        be writing. Temps whose age the file system does not report are kept unless
        ``older_than`` is 0. Direct-write stores make no temps: nothing to list (Azure's
        do: a run killed between a temporary's upload and its copy leaves one).
        """
        if self.publish == "direct":
            return []
        now = time.time()
        removed = []
        for path, info in self._hidden_partials():
            if older_than > 0:
                mtime = mtime_of(info)
                if mtime is None or now - mtime < older_than:
                    continue
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)
                removed.append(path)
        if removed:
            log.info("removed %d stale partial uploads under %s", len(removed), self.root_url)
        return removed

    def _hidden_partials(self) -> Iterator[tuple[str, dict]]:
        """The ``.part-`` temps in the store, listed a directory at a time: a store of
        100,000 files is not held as one listing. A missing root holds none."""
        try:
            for folder, _, files in self.fs.walk(self.root, detail=True, on_error="raise"):
                for name, info in files.items():
                    if name.startswith(".") and PART_MARKER in name:
                        yield posixpath.join(folder, name), info
        except FileNotFoundError:
            return
