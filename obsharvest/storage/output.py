"""A harvest's output location as one record: its URL, its storage options, its file system.

Everything a run leaves besides the FITS -- the Parquet under ``metadata/``, the
incremental state under ``state/``, the gallery under ``gallery/`` -- lives under one
output URL, reached with one set of fsspec storage options (credentials included). The
run opens that location once, here, and hands the record down: every writer uses the same
file system object, with the same connect/read timeouts, instead of each rebuilding it
from a URL and a dict (and each forgetting the timeouts in its own way).

An :class:`Output` pickles (fsspec file systems do, by their constructor arguments), so a
Dask worker gets it as a task argument and reconnects on its side. Its ``repr`` shows the
URL only: the options may hold secrets, and records end up in logs and tracebacks.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec

from obsharvest.storage.download import DEFAULT_TIMEOUT
from obsharvest.storage.store import with_timeouts

__all__ = ["METADATA_DIR", "Output"]

METADATA_DIR = "metadata"
"""Where the Parquet dataset lives in an output (``obsharvest.metadata`` re-exports it)."""


@dataclass(frozen=True)
class Output:
    """Where a run writes its Parquet, state and gallery, opened once.

    ``options`` are fsspec storage options (for S3 they carry the AwsCredentials block's
    keys, merged in by the flow): kept out of ``repr`` and out of the hash. ``timeout``
    is the (connect, read) seconds given to an object store's client where the options set
    none (:func:`~obsharvest.storage.store.with_timeouts`); a bucket endpoint that accepts
    a connection and then says nothing must fail the call, not hang the run.

    The file system is opened when the record is made, not on first use: threads of one
    run then never race to open it, and a URL nobody can open fails where it enters.
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)
    timeout: tuple[float, float] | None = DEFAULT_TIMEOUT
    fs: fsspec.AbstractFileSystem = field(init=False, repr=False, compare=False)
    root: str = field(init=False, repr=False, compare=False)  # the URL's path in ``fs``

    def __post_init__(self) -> None:
        options = dict(self.options or {})
        timeout = None if self.timeout is None else (float(self.timeout[0]), float(self.timeout[1]))
        fs, root = fsspec.core.url_to_fs(self.url, **with_timeouts(self.url, options, timeout))
        # frozen: the derived fields are set once, here, as a frozen dataclass must
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "fs", fs)
        object.__setattr__(self, "root", root.rstrip("/") or root)

    @classmethod
    def of(cls, output: Output | str) -> Output:
        """``output`` itself, or a plain URL (a path, ``memory://...``) with no options:
        what the CLI, notebooks and tests pass."""
        return output if isinstance(output, Output) else cls(output)

    def path(self, *parts: str) -> str:
        """A path inside the output, in the file system's own terms (no protocol)."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def uri(self, path: str | None = None) -> str:
        """The URL of ``path`` (default: the output's root) with its protocol, as stored in
        the Parquet and linked from the gallery."""
        return self.fs.unstrip_protocol(self.root if path is None else path)

    @property
    def metadata_url(self) -> str:
        """The Parquet dataset's URL (what a run's summary reports)."""
        return self.url.rstrip("/") + "/" + METADATA_DIR

    def under(self, *parts: str) -> Output:
        """The output at a prefix inside this one (a shard's), on the same open file
        system: the options and timeouts are this one's."""
        inner = copy.copy(self)
        object.__setattr__(inner, "url", "/".join([self.url.rstrip("/"), *parts]))
        object.__setattr__(inner, "root", self.path(*parts))
        return inner
