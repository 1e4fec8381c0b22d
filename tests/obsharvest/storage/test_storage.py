"""obsharvest.storage.store: safe keys, no partial objects ever visible, resumed downloads over HTTP."""

from __future__ import annotations

import hashlib
import posixpath
import re
import tracemalloc
import uuid
from collections.abc import Iterator

import fsspec
import pytest
import requests
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem
from fsspec.spec import AbstractBufferedFile

from obsharvest.errors import (
    IntegrityError,
    NotFoundError,
    StorageKeyError,
    TransientReadError,
    UrlExpiredError,
)
from obsharvest.models import StoredObject
from obsharvest.storage.keys import MAX_PART_LENGTH
from obsharvest.storage.store import ObjectStore, download, object_key

PREFIX = "/data/harvest"
ALLOWED = re.compile(r"^[A-Za-z0-9._+-]+$")

# -- keys ------------------------------------------------------------------------------

HOSTILE = [
    ("../../etc/passwd",),
    ("/abs",),
    ("/abs", "x"),
    ("a/../b",),
    ("s3://other-bucket/x",),
    ("file:///etc/shadow",),
    ("dp02", "calexp", "r", "a\x00b"),
    ("..",),
    ("..", "..", "x"),
    ("", "calexp", "", "obs"),
    (".",),
    (".hidden",),
    ("x" * 300,),
    ("dp02", "y" * 300),
    ("Ångström", "ναι", "日本"),
    ("..\\..\\windows\\system32",),
    ("C:\\temp\\x",),
    ("~/x", "$HOME", "a b\tc\n"),
    ("-rf", "--", "...."),
    ("a%2F..%2Fb",),
]


def _check_key(key: str) -> None:
    joined = posixpath.normpath(posixpath.join(PREFIX, key))
    assert joined.startswith(PREFIX + "/"), key
    assert joined == f"{PREFIX}/{key}", key  # nothing for normpath to collapse
    for part in key.split("/"):
        assert part and part not in (".", "..") and not part.startswith("."), key
        assert ALLOWED.match(part), key
        assert len(part) <= MAX_PART_LENGTH + len(".fits"), key


@pytest.mark.parametrize("parts", HOSTILE, ids=lambda p: repr(p)[:30])
def test_hostile_parts_stay_under_the_prefix(parts):
    try:
        key = object_key(*parts)
    except StorageKeyError:
        # only when nothing usable is left
        assert all(not re.sub(r"[^A-Za-z0-9]", "", p) for p in parts), parts
        return
    _check_key(key)
    assert key.endswith(".fits")


@pytest.mark.parametrize("parts", [("",), ("..",), (".", "..", "/"), ("\x00",), ("///",), ()])
def test_nothing_usable_raises(parts):
    with pytest.raises(StorageKeyError):
        object_key(*parts)


def test_clean_parts_are_kept_verbatim():
    key = object_key("2.2i", "calexp", "r", "calexp_LSSTCam-imSim_r_r_sim_1_4_191406_R01_S22")
    assert key == "2.2i/calexp/r/calexp_LSSTCam-imSim_r_r_sim_1_4_191406_R01_S22.fits"
    assert object_key("a", "b", suffix=".fits.gz") == "a/b.fits.gz"


def test_changed_parts_stay_distinct():
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert object_key(long_a) != object_key(long_b)
    assert object_key("a/b") != object_key("a:b") != object_key("a_b")
    assert object_key("a_b") == "a_b.fits"
    # names in other scripts sanitise to nothing, yet must not collapse into one key
    assert object_key("r", "日本") != object_key("r", "中国")
    assert object_key("r", "日本").startswith("r/")


def test_bad_suffix_is_refused():
    with pytest.raises(StorageKeyError):
        object_key("x", suffix="/../../y")


def test_store_refuses_unsafe_keys(tmp_path):
    store = ObjectStore(str(tmp_path))
    for key in ("../x.fits", "/abs.fits", "a//b.fits", ".hidden", "a/./b", ""):
        with pytest.raises(StorageKeyError):
            store.uri(key)


# -- local and memory stores -----------------------------------------------------------


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _failing(data: bytes, after: int) -> Iterator[bytes]:
    yield data[:after]
    raise ConnectionError("archive went away")


def _all_files(store: ObjectStore) -> list[str]:
    return sorted(store.fs.find(store.root, withdirs=False))


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> ObjectStore:
    if request.param == "local":
        return ObjectStore(str(tmp_path / "store"))
    return ObjectStore(f"memory://test-{uuid.uuid4().hex}")


def test_put_then_exists_same_skips(store):
    data = bytes(range(256)) * 1000
    key = object_key("dp02", "calexp", "r", "obs1")
    stored = store.put_stream(key, _chunks(data), expected_size=len(data))
    assert isinstance(stored, StoredObject)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.md5 == hashlib.md5(data).hexdigest()
    assert stored.size == len(data) and not stored.skipped
    assert store.fs.cat_file(store.path(key)) == data
    assert stored.uri == store.uri(key)

    again = store.exists_same(key, len(data))
    assert again is not None and again.skipped
    assert (again.sha256, again.md5, again.size) == (stored.sha256, stored.md5, stored.size)
    assert store.exists_same(key, len(data), stored.sha256) is not None
    assert store.exists_same(key, len(data), "0" * 64) is None
    assert store.exists_same(key, len(data), md5="0" * 32) is None
    assert store.exists_same(key, len(data) + 1) is None
    assert store.exists_same(object_key("dp02", "calexp", "r", "other"), len(data)) is None
    # no temps left, only the object and its sidecar
    assert [posixpath.basename(p) for p in _all_files(store)] == ["obs1.fits", "obs1.fits.sha256"]


def test_missing_sidecar_is_rebuilt_from_the_object(store):
    data = b"SIMPLE  =                    T" * 100
    stored = store.put_stream("a/b.fits", [data])
    store.fs.rm_file(store.path("a/b.fits") + ".sha256")
    again = store.exists_same("a/b.fits", len(data), stored.sha256)
    assert again is not None and again.sha256 == stored.sha256
    assert store.fs.exists(store.path("a/b.fits") + ".sha256")
    store.fs.pipe_file(store.path("a/b.fits") + ".sha256", b"{not json")
    assert store.exists_same("a/b.fits", len(data), stored.sha256) is not None


def test_failure_mid_stream_leaves_nothing(store):
    data = b"x" * 100_000
    with pytest.raises(ConnectionError):
        store.put_stream("a/b.fits", _failing(data, 50_000))
    assert _all_files(store) == []
    assert store.exists_same("a/b.fits", 50_000) is None


def test_failure_keeps_the_previous_object(store):
    old = b"old" * 1000
    store.put_stream("a/b.fits", [old])
    with pytest.raises(ConnectionError):
        store.put_stream("a/b.fits", _failing(b"new" * 1000, 10))
    assert store.fs.cat_file(store.path("a/b.fits")) == old
    assert len(_all_files(store)) == 2


def test_md5_mismatch_is_an_integrity_error_and_nothing_is_visible(store):
    data = b"y" * 10_000
    with pytest.raises(IntegrityError, match="MD5"):
        store.put_stream("a/b.fits", _chunks(data), expected_md5="0" * 32)
    assert _all_files(store) == []


def test_size_mismatch_is_an_integrity_error(store):
    data = b"z" * 10_000
    with pytest.raises(IntegrityError):
        store.put_stream("a/b.fits", _chunks(data), expected_size=9_999)
    with pytest.raises(IntegrityError):
        store.put_stream("a/b.fits", _chunks(data), expected_size=10_001)
    assert _all_files(store) == []
    ok = store.put_stream(
        "a/b.fits", _chunks(data), expected_size=10_000, expected_md5=hashlib.md5(data).hexdigest()
    )
    assert ok.size == 10_000


def test_delete_partials_removes_stale_temps(tmp_path):
    store = ObjectStore(str(tmp_path))
    store.put_stream("a/keep.fits", [b"1234"])
    stale = tmp_path / "a" / f".b.fits.part-{uuid.uuid4().hex}"
    stale.write_bytes(b"half")
    assert store.delete_partials() == []  # fresh: maybe a concurrent run's
    removed = store.delete_partials(older_than=0)
    assert [posixpath.basename(p) for p in removed] == [stale.name]
    assert not stale.exists() and (tmp_path / "a" / "keep.fits").exists()


def test_peak_memory_is_bounded(tmp_path):
    store = ObjectStore(str(tmp_path))
    block = b"\x5a" * (1 << 20)
    total = 50 << 20

    def generate() -> Iterator[bytes]:
        for _ in range(total // len(block)):
            yield block

    tracemalloc.start()
    try:
        stored = store.put_stream("big/file.fits", generate(), expected_size=total)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == total
    assert peak < 8 << 20, f"peak {peak / 1e6:.1f} MB"


# -- the direct-write path (s3/gcs/azure), with a file system that behaves like them ---------


class _DeferredFile(AbstractBufferedFile):
    """Like s3fs' S3File: parts go up as the buffer fills; the object appears on commit."""

    def _initiate_upload(self) -> None:
        self.fs.uploads[self.path] = []

    def _upload_chunk(self, final: bool = False) -> bool:
        self.fs.uploads.setdefault(self.path, []).append(self.buffer.getvalue())
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        data = b"".join(self.fs.uploads.pop(self.path, []))
        self.fs.store[self.path] = MemoryFile(self.fs, self.path, data)

    def discard(self) -> None:
        self.fs.uploads.pop(self.path, None)
        self.fs.discarded.append(self.path)


class DeferredFileSystem(MemoryFileSystem):
    protocol = "deferredtest"
    uploads: dict[str, list[bytes]] = {}
    discarded: list[str] = []

    def _open(self, path, mode="rb", block_size=None, autocommit=True, **kwargs):
        if "w" not in mode:
            return super()._open(path, mode, **kwargs)
        path = self._strip_protocol(path)
        return _DeferredFile(self, path, mode, block_size=block_size or 64 * 1024)


fsspec.register_implementation("deferredtest", DeferredFileSystem, clobber=True)


def test_direct_write_discards_on_failure():
    store = ObjectStore(f"deferredtest://bucket-{uuid.uuid4().hex}", direct_write=True)
    assert store.direct_write
    data = b"q" * 300_000  # several 64 KB parts "uploaded" before the failure
    with pytest.raises(ConnectionError):
        store.put_stream("a/b.fits", _failing(data, 200_000))
    assert store.path("a/b.fits") in DeferredFileSystem.discarded
    assert not store.fs.exists(store.path("a/b.fits"))
    with pytest.raises(IntegrityError):
        store.put_stream("a/b.fits", _chunks(data), expected_md5="0" * 32)
    assert not store.fs.exists(store.path("a/b.fits"))
    assert DeferredFileSystem.uploads == {}
    stored = store.put_stream("a/b.fits", _chunks(data))
    assert store.fs.cat_file(store.path("a/b.fits")) == data
    assert store.exists_same("a/b.fits", len(data), stored.sha256) is not None
    assert not any(".part-" in p for p in store.fs.find(store.root))


def test_protocol_decides_the_write_mode(tmp_path):
    assert not ObjectStore(str(tmp_path)).direct_write
    assert not ObjectStore("memory://x").direct_write


# -- over HTTP, against the embedded archive -------------------------------------------------


@pytest.fixture(scope="module")
def small_archive():
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings(n_visits=12)) as running:
        yield running


@pytest.fixture(scope="module")
def signed(small_archive) -> list[tuple[str, int]]:
    """(signed URL, content_length) of a few calibrated images, via TAP + Datalink."""
    import pyvo
    from pyvo.dal.adhoc import DatalinkResults

    rows = pyvo.dal.TAPService(small_archive.tap_url).search(
        "SELECT TOP 3 access_url FROM ivoa.ObsCore WHERE calib_level = 2"
    )
    out = []
    for row in rows:
        links = DatalinkResults.from_result_url(row["access_url"])
        this = next(link for link in links if link["semantics"] == "#this")
        out.append((this["access_url"], int(this["content_length"])))
    return out


@pytest.fixture
def archive_clean(small_archive):
    from obsharvest.simarchive.faults import FaultPlan

    small_archive.set_faults(FaultPlan())
    small_archive.reset_stats()
    yield small_archive
    small_archive.set_faults(FaultPlan())


def test_download_matches_the_archive(archive_clean, signed, tmp_path):
    url, size = signed[0]
    reference = requests.get(url, timeout=30)
    etag = reference.headers["ETag"].strip('"')
    store = ObjectStore(str(tmp_path))
    session = requests.Session()
    session.headers["Authorization"] = "Bearer do-not-leak-me"
    archive_clean.reset_stats()
    stored = download(url, store, "x/img.fits", session=session, expected_size=size)
    assert store.fs.cat_file(store.path("x/img.fits")) == reference.content
    assert stored.md5 == etag == hashlib.md5(reference.content).hexdigest()
    assert stored.size == size == len(reference.content)
    assert archive_clean.stats()["files"]["authorization"] == 0  # the token stayed home
    again = download(url, store, "x/img.fits", expected_size=size, expected_md5=etag)
    assert again.skipped and again.sha256 == stored.sha256
    assert archive_clean.stats()["files"]["requests"] == 1  # the skip never asked the server


def _seed_truncating_first_only() -> int:
    """A seed whose first files request is truncated at rate 0.5, and the next few are not."""
    from obsharvest.simarchive.faults import draw

    return next(
        seed
        for seed in range(10_000)
        if draw(seed, "files", 0, "truncate") < 0.5
        and all(draw(seed, "files", n, "truncate") >= 0.5 for n in (1, 2, 3))
    )


def test_truncated_body_is_resumed_not_restarted(archive_clean, signed, tmp_path):
    from obsharvest.simarchive.faults import FaultPlan

    url, size = signed[1]
    reference = requests.get(url, timeout=30).content
    archive_clean.set_faults(
        FaultPlan.parse(["files.truncate=0.5"], seed=_seed_truncating_first_only())
    )
    archive_clean.reset_stats()
    store = ObjectStore(str(tmp_path))
    stored = download(url, store, "x/img.fits", expected_size=size)
    assert archive_clean.faults.report()["files"]["truncate"] == 1
    files = archive_clean.stats()["files"]
    assert files["status"] == {200: 1, 206: 1}
    assert store.fs.cat_file(store.path("x/img.fits")) == reference
    assert stored.md5 == hashlib.md5(reference).hexdigest()
    # the archive books only bytes actually sent, so restarting from byte 0 would show up as
    # 1.5 x size; a resume that starts exactly where the cut happened sends each byte once
    assert _booked_bytes(archive_clean, size) == size


def test_every_response_truncated_still_converges(archive_clean, signed, tmp_path):
    from obsharvest.simarchive.faults import FaultPlan

    url, size = signed[2]
    archive_clean.set_faults(FaultPlan.parse(["files.truncate=1"]))
    store = ObjectStore(str(tmp_path))
    with pytest.raises(TransientReadError, match="cut off") as caught:
        download(url, store, "x/a.fits", max_resumes=3)
    assert "Signature" not in str(caught.value)
    assert _all_files(store) == []  # the partial body never became visible
    archive_clean.reset_stats()
    stored = download(url, store, "x/a.fits", max_resumes=40)  # halves each time: ~21 cuts
    assert stored.size == size
    assert _booked_bytes(archive_clean, size) == size


def _booked_bytes(archive, expected: int, bound: float = 30.0) -> int:
    """The file bytes the archive has booked, once they settle at ``expected`` or ``bound``
    seconds pass: a server thread settles a cut reply's count (bytes announced, less bytes
    never sent) after the client has seen the connection close."""
    import time

    deadline = time.monotonic() + bound
    booked = archive.stats().get("files", {}).get("bytes", 0)
    while booked != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        booked = archive.stats().get("files", {}).get("bytes", 0)
    return booked


def test_tampered_signature_is_url_expired(archive_clean, signed, tmp_path):
    url, _ = signed[0]
    tampered = re.sub(r"Signature=[^&]+", "Signature=AAAAbogus%3D", url)
    with pytest.raises(UrlExpiredError) as caught:
        download(tampered, ObjectStore(str(tmp_path)), "x/a.fits")
    assert caught.value.status == 403
    assert "Signature" not in str(caught.value) and "AAAAbogus" not in str(caught.value)
    assert "Expires" not in str(caught.value)


def test_missing_file_is_not_found(archive_clean, tmp_path):
    url = archive_clean.signer.sign(archive_clean.signed_base_url, "/files/dp02/nope/none.fits")
    with pytest.raises(NotFoundError) as caught:
        download(url, ObjectStore(str(tmp_path)), "x/a.fits")
    assert "Signature" not in str(caught.value)


def test_unavailable_is_transient_with_retry_after(archive_clean, signed, tmp_path):
    from obsharvest.simarchive.faults import FaultPlan

    archive_clean.set_faults(FaultPlan.parse(["files.unavailable=1", "files.retry_after=7"]))
    with pytest.raises(TransientReadError) as caught:
        download(signed[0][0], ObjectStore(str(tmp_path)), "x/a.fits")
    assert caught.value.status == 503 and caught.value.retry_after == 7.0
    assert "Signature" not in str(caught.value)


def test_dropped_connection_is_transient_without_the_signature(archive_clean, signed, tmp_path):
    from obsharvest.simarchive.faults import FaultPlan

    archive_clean.set_faults(FaultPlan.parse(["files.drop=1"]))
    store = ObjectStore(str(tmp_path))
    with pytest.raises(TransientReadError) as caught:
        download(signed[0][0], store, "x/a.fits")
    text = str(caught.value)
    assert "Signature" not in text and "Expires" not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert _all_files(store) == []


def test_wrong_expected_md5_is_refused_before_downloading(archive_clean, signed, tmp_path):
    url, size = signed[0]
    store = ObjectStore(str(tmp_path))
    with pytest.raises(IntegrityError):
        download(url, store, "x/a.fits", expected_size=size, expected_md5="0" * 32)
    assert _all_files(store) == []
