"""Compressed files as real archives serve them: ``.fits.fz``, ``.fits.gz`` and
``Content-Encoding: gzip``, written by astropy and served over HTTP by the embedded archive.

Header-only containment must decide exactly as on the plain file, a gzip header read must
fetch a small prefix (gzip cannot seek), files are stored as served with the checksum of
the stored bytes, and a second run fetches nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io

import pyarrow.dataset as ds
import pytest
import requests
from astropy.io import fits

from obsharvest.access.kinds import Kind, sniff
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.models import Target, Verdict
from obsharvest.net import compression
from obsharvest.products.quicklook import quicklook_png
from obsharvest.simarchive.dialect import Dialect
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from obsharvest.storage.download import download
from obsharvest.storage.store import ObjectStore
from obsharvest.verify import containment, mask
from tests.shared_files import shared

TARGETS = (("seed", 62.0, -37.0), ("near", 62.05, -36.97), ("east", 62.4, -37.1))
FILES = ("fz", "gz", "gz-encoded")


def _settings(files: str, **extra) -> ArchiveSettings:
    return shared(
        ArchiveSettings(
            seed=7, n_visits=12, binning=10, dialect=Dialect.parse([f"files={files}"]), **extra
        )
    )


@pytest.fixture(scope="module", params=FILES)
def served(request):
    """An archive serving compressed files, and a plain one over the same sky."""
    with (
        EmbeddedArchive(_settings(request.param)) as archive,
        EmbeddedArchive(_settings("fits")) as plain,
    ):
        yield request.param, archive, plain


def _products(archive: EmbeddedArchive) -> list:
    """A calexp (WCS in HDU 1, MASK in HDU 2) and a raw (one primary HDU with WCS)."""
    by_kind: dict[str, object] = {}
    for product in archive.sky.products:
        by_kind.setdefault(product.kind, product)
    return [by_kind["calexp"], by_kind["raw"]]


def _probe_targets(archive: EmbeddedArchive, product) -> list[Target]:
    """Points at the image centre, just inside and outside a corner, and far away."""
    header = fits.getheader(
        archive.files.ensure_plain(product)[0], 1 if product.kind != "raw" else 0
    )
    from astropy.wcs import WCS

    wcs = WCS(header).celestial
    nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
    pixels = {"centre": (nx / 2, ny / 2), "in": (1.0, 1.0), "out": (-3.0, -3.0)}
    out = [Target(name, *map(float, wcs.all_pix2world([xy], 0)[0])) for name, xy in pixels.items()]
    return [*out, Target("far", 10.0, 10.0)]


def test_served_files_are_really_compressed(served):
    files, archive, _ = served
    product = _products(archive)[0]
    url = archive._sign(product)
    reply = requests.get(url, headers={"Accept-Encoding": "identity"}, stream=True, timeout=30)
    body = reply.raw.read(decode_content=False)
    assert hashlib.md5(body).hexdigest() == reply.headers["ETag"].strip('"')
    if files == "fz":
        assert urlpath(url).endswith(".fits.fz")
        assert reply.headers["Content-Type"] == "application/fits"
        with fits.open(io.BytesIO(body), disable_image_compression=True) as hdul:
            table = hdul[1].header
            assert table["XTENSION"] == "BINTABLE" and table["ZIMAGE"] is True
            assert table["ZNAXIS1"] == product.naxis1 and "CTYPE1" in table
        return
    assert body[:2] == compression.GZIP_MAGIC
    if files == "gz":
        assert urlpath(url).endswith(".fits.gz")
        assert reply.headers["Content-Type"] == "application/x-gzip"
    else:
        assert urlpath(url).endswith(".fits") and reply.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body)[:9] == b"SIMPLE  ="
    partial = requests.get(url, headers={"Range": "bytes=0-99"}, stream=True, timeout=30)
    assert partial.status_code == 206
    assert partial.raw.read(decode_content=False) == body[:100]  # ranges on the wire bytes


def urlpath(url: str) -> str:
    return url.split("?")[0]


def test_header_decides_like_the_plain_file(served):
    files, archive, plain = served
    for product in _products(archive):
        targets = _probe_targets(plain, product)
        compressed = containment.verify(archive._sign(product), targets)
        reference = containment.verify(plain._sign(product), targets)
        assert {n: c.verdict for n, c in compressed.items()} == {
            n: c.verdict for n, c in reference.items()
        }
        assert compressed["centre"].verdict is Verdict.CONTAINS
        assert compressed["in"].verdict is Verdict.CONTAINS
        assert compressed["out"].verdict is Verdict.OUTSIDE
        assert compressed["centre"].x == pytest.approx(reference["centre"].x, abs=1e-6)
        assert compressed["centre"].grid == (product.naxis1, product.naxis2)


def test_a_header_read_fetches_a_small_prefix(served):
    """8 KB blocks, what the harvest asks for files this small (``header_block``): the
    calexp's WCS header is in the first two, compressed or not."""
    files, archive, _ = served
    product = _products(archive)[0]  # a calexp: WCS in HDU 1, behind the primary header
    size = archive.files.ensure(product)[0].stat().st_size
    archive.reset_stats()
    _, header, shape = containment.read_wcs_header(archive._sign(product), block_size=8192)
    stats = archive.stats()["files"]
    assert shape == (product.naxis1, product.naxis2) and header["CTYPE1"].startswith("RA---")
    assert stats["methods"]["HEAD"] == 0
    assert stats["bytes"] <= 2 * 8192 and stats["bytes"] * 20 < size, (stats, size)


def test_mask_of_a_compressed_file_is_read_or_honestly_not_checked(served):
    files, archive, plain = served
    product = _products(archive)[0]
    target = _probe_targets(plain, product)[0]
    verdict = containment.verify(archive._sign(product), [target])[target.name]
    check = mask.mask_flags(archive._sign(product), verdict.hdu, verdict.x, verdict.y)
    if files == "fz":  # astropy's section reads the one tile
        expected = mask.mask_flags(plain._sign(product), verdict.hdu, verdict.x, verdict.y)
        assert (check.value, check.bit, check.no_data) == (
            expected.value,
            expected.bit,
            expected.no_data,
        )
    else:
        assert not check.no_data and check.reason == mask.GZIP_NOT_CHECKED


def test_download_stores_the_bytes_as_served_under_their_suffix(served, tmp_path):
    files, archive, _ = served
    product = _products(archive)[0]
    store = ObjectStore(str(tmp_path))
    stored = download(archive._sign(product), store, "c/x/calexp_1.fits")
    wire = archive.files.ensure(product)[0].read_bytes()
    assert stored.key == "c/x/calexp_1" + (".fits.fz" if files == "fz" else ".fits.gz")
    assert stored.sha256 == hashlib.sha256(wire).hexdigest() and stored.size == len(wire)
    assert (tmp_path / stored.key).read_bytes() == wire
    again = download(archive._sign(product), store, "c/x/calexp_1.fits", expected_size=len(wire))
    if files != "gz-encoded":  # the URL names the suffix: found before any request
        assert again.skipped and again.key == stored.key
    picture = io.BytesIO()
    quicklook_png(wire, Target("t", product.s_ra, product.s_dec), None, picture)
    assert picture.getvalue()[:4] == b"\x89PNG"


def test_gzip_bytes_are_recognised_as_a_file():
    raw = fits.PrimaryHDU().header.tostring().encode()
    packed = gzip.compress(raw, mtime=0)
    assert sniff("application/x-gzip", packed[:2880]) == Kind.FILE
    assert sniff(None, gzip.compress(b"<VOTABLE/>")) == Kind.UNKNOWN
    assert compression.stored_suffix(packed, url="https://h/x.fits") == ".fits.gz"
    assert compression.stored_suffix(raw, url="https://h/x.fits.fz?sig=1") == ".fits.fz"
    assert compression.stored_suffix(raw, url="https://h/x.fits.gz") == ".fits"
    assert compression.with_suffix("a/b.fits.gz", ".fits.fz") == "a/b.fits.fz"
    assert compression.stored_key("a/b.fits", "file:///o/a/b.fits.gz") == "a/b.fits.gz"


def test_a_zimage_card_is_found_only_on_a_card_boundary_and_within_the_blocks_read():
    card = b"ZIMAGE  =                    T / tile-compressed image".ljust(80)
    primary = fits.PrimaryHDU().header.tostring().encode()  # 2880 bytes: the empty primary
    assert compression.is_tile_compressed(primary + card)
    assert not compression.is_tile_compressed(primary + b" " + card)  # not a card
    assert not compression.is_tile_compressed(primary + card.replace(b"T /", b"F /"))
    assert not compression.is_tile_compressed(primary + card[:40])  # a card cut short
    assert not compression.is_tile_compressed(primary + card, max_blocks=1)  # beyond them


# -- end to end -------------------------------------------------------------------------


def _params(archive: EmbeddedArchive, output, targets_csv) -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(targets_csv),
            "constraints": {"bands": ["i"], "calib_levels": [2]},
            "output_url": str(output),
            "concurrency": {"datalink_batch": 4},
            "retry": {"read_timeout": 20.0},
            "products": {"quicklook": True},
        }
    )


@pytest.fixture(scope="module")
def targets_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "targets.csv"
    path.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in TARGETS))
    return path


@pytest.mark.usefixtures("prefect_harness")
# fz (direct), gz (datalink) and gz-encoded (descriptor) harvest in tests/e2e/test_conformance.py
# too; here Datalink for each, and gzip behind an access_url with no access_format
@pytest.mark.parametrize(("files", "style"), [("fz", "datalink"), ("gz", "unlabelled")])
@pytest.mark.timeout(240)
def test_compressed_files_harvest_exactly_the_truth(files, style, targets_csv, tmp_path):
    with EmbeddedArchive(_settings(files, access_style=style)) as archive:
        truth = {name: archive.truth(ra, dec) for name, ra, dec in TARGETS}
        summary = harvest_params(_params(archive, tmp_path, targets_csv))
        assert summary.ok, summary.failures
        stats = archive.stats()  # signed files (Datalink) or permanent ones (unlabelled)
        served_bytes = sum(stats.get(e, {}).get("bytes", 0) for e in ("files", "data"))

        rows = ds.dataset(str(tmp_path / "metadata"), format="parquet").to_table().to_pylist()
        for row in rows:
            did, name = row["obs_publisher_did"], row["obsh_target_name"]
            assert row["obsh_verdict"] == ("contains" if did in truth[name] else "outside"), row
            assert row["obsh_failure"] is None
        stored = {r["obs_publisher_did"]: r for r in rows if r["obsh_stored"]}
        queried = {r["obs_publisher_did"] for r in rows}
        assert set(stored) == set().union(*truth.values()) & queried
        assert stored, "the workload must store something to prove anything"

        suffix = ".fits.fz" if files == "fz" else ".fits.gz"
        for did, row in stored.items():
            wire = archive.files.ensure(archive._product_by_id(did))[0].read_bytes()
            assert row["obsh_storage_uri"].endswith(suffix)
            assert row["obsh_sha256"] == hashlib.sha256(wire).hexdigest()
            assert row["obsh_file_size"] == len(wire)
        on_disk = list((tmp_path / "fits").rglob(f"*{suffix}"))
        assert len(on_disk) == len(stored)
        assert not list((tmp_path / "fits").rglob("*.fits"))
        assert len(list((tmp_path / "fits").rglob("*.png"))) == len(stored)
        # every image cost its header's blocks (at most 3 range reads), never a whole file
        block = _params(archive, tmp_path, targets_csv).verification.header_block_size
        downloaded = sum(row["obsh_file_size"] for row in stored.values())
        headers = served_bytes - downloaded
        assert 0 < headers <= len(queried) * 3 * block, (headers, len(queried))
        unstored = queried - set(stored)
        whole = sum(
            archive.files.ensure(archive._product_by_id(d))[0].stat().st_size for d in unstored
        )
        assert not unstored or headers < whole, (headers, whole)

        archive.reset_stats()
        again = harvest_params(_params(archive, tmp_path, targets_csv))
        second = archive.stats()
        assert again.ok and again.downloaded == 0 and again.reused == summary.images
        assert not {"files", "data", "datalink", "product"} & set(second), second
