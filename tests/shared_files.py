"""One FITS file cache per test process, shared by the archives the tests start.

Most of an end-to-end test's time is the embedded archive writing its FITS files (and
tile-compressing or gzipping them): a file is made on its first request, into a fresh
temporary directory per archive. Tests that start many archives over the same sky (every
access style, every dialect) make the same files again and again. ``shared(settings)``
gives an archive a cache directory of this process for its sky: the files are
deterministic for a sky (seed, visits, binning, naming, publisher), so the bytes served
are the same, only made once. Not for archives that change their sky while running
(``add_visits``): their later files would land in the cache of the sky they started with.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import shutil
import tempfile
from pathlib import Path

from obsharvest.simarchive.server import ArchiveSettings

_root: Path | None = None


def _cache_root() -> Path:
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="obsharvest-test-fits-"))
        atexit.register(shutil.rmtree, _root, ignore_errors=True)
    return _root


def shared(settings: ArchiveSettings) -> ArchiveSettings:
    """``settings`` with the file cache of this process for its sky."""
    key = hashlib.sha256(repr(settings.sky_config()).encode()).hexdigest()[:16]
    return dataclasses.replace(settings, cache_dir=str(_cache_root() / key))
