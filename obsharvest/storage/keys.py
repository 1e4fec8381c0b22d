"""Object keys built from archive-supplied strings that can never leave the storage root.

ObsCore values (``obs_collection``, ``dataproduct_subtype``, ``obs_id``, band names) come
from a remote service and end up as path components on a local disk or as S3 keys. A
value such as ``../../etc/passwd``, ``/abs``, ``s3://other-bucket/x`` or one with a NUL
byte must not move the object out of the configured prefix, and nothing may create a
hidden file (the store's own ``.part-`` temps are hidden, so real keys must not be).

Each part is therefore reduced to ``[A-Za-z0-9._+-]``. A part that had to be changed
(characters replaced, leading dots stripped, unicode folded, length capped) gets a short
hash of the original appended, so that ``a/b`` and ``a:b`` -- or two 300-character names
sharing a prefix -- still map to different keys: two images sharing a key would make the
second one a silent "already present" skip.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from obsharvest.errors import StorageKeyError

MAX_PART_LENGTH = 100  # characters per path component, before the suffix (< 32 chars): file
# systems allow 255 bytes per name, and the temp name adds "." + ".part-" + 32 hex digits
HASH_LENGTH = 8  # hex digits of sha256 appended to a part that had to be changed
_DISALLOWED = re.compile(r"[^A-Za-z0-9._+-]")
_RUNS = re.compile(r"_{2,}")
_NAVIGATION = re.compile(r"[\s./\\:_\x00-]")
_SUFFIX = re.compile(r"^(\.[A-Za-z0-9+-]+)*$")


def _short_hash(original: str) -> str:
    data = original.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:HASH_LENGTH]


def sanitize_part(part: str, *, max_length: int = MAX_PART_LENGTH) -> str:
    """One path component, safe and recognisable; ``""`` when nothing usable remains."""
    original = str(part)
    folded = unicodedata.normalize("NFKD", original)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    clean = _DISALLOWED.sub("_", folded)
    clean = _RUNS.sub("_", clean)
    # no hidden names, no "." / "..", nothing that reads as a command-line option
    clean = clean.lstrip("._-").rstrip("._")
    if not clean:
        # dots and separators only ("..", "/", ""): path navigation, nothing to keep. Real
        # content in other scripts ("日本") keeps its identity as a hash instead.
        return _short_hash(original) if _NAVIGATION.sub("", original) else ""
    if clean == original and len(clean) <= max_length:
        return clean
    tag = _short_hash(original)
    keep = max(1, max_length - HASH_LENGTH - 1)
    return f"{clean[:keep].rstrip('._')}-{tag}"


def object_key(*parts: str, suffix: str = ".fits") -> str:
    """``{collection}/{subtype}/{band}/{obs_id}.fits`` from untrusted strings.

    Parts that sanitise to nothing (``""``, ``"."``, ``".."``, ``None``) are dropped, so
    give a placeholder (``"none"``) for NULL columns if the layout depth matters. Raises
    :class:`StorageKeyError` only when no part survives or the suffix is malformed.
    """
    if not _SUFFIX.match(suffix):
        raise StorageKeyError(f"key suffix {suffix!r} must look like '.fits' or '.fits.gz'")
    if len(suffix) > 32:
        raise StorageKeyError(f"key suffix {suffix!r} is too long")
    cleaned = [sanitize_part(p) for p in parts if p is not None]
    cleaned = [p for p in cleaned if p]
    if not cleaned:
        raise StorageKeyError(f"no usable key from parts {[str(p)[:40] for p in parts]!r}")
    cleaned[-1] = cleaned[-1] + suffix
    return "/".join(cleaned)


def is_safe_key(key: str) -> bool:
    """True when ``key`` is made of parts that sanitising would leave unchanged."""
    if not key or len(key) > 1024:
        return False
    parts = key.split("/")
    return all(p and sanitize_part(p, max_length=255) == p for p in parts)
