"""Harvesting from a real GAVO DaCHS (Debian's gavodachs2-server), run as a user runs it.

DaCHS publishes a collection of its own (``tests/interop``): eight images with the pixels
in HDU 1 and padded s_regions, once with Datalink URLs as ObsCore ``access_url`` and once
with direct file URLs. For each, ``obsharvest run`` (the CLI, with the generic ObsTAP
profile) harvests seven targets -- one on one image, one in an overlap of two, one where
four overlap, two only in s_region padding, one on an image and in another's padding, one
outside everything -- and must store exactly the images whose pixels contain a target,
byte for byte, with the right verdicts; a rerun must fetch nothing.

Several services at once (issue 24): one run over three embedded archives (RSP-like with
Datalink, its mirror serving files directly, another sky with slow queries) plus DaCHS
stores exactly the WCS truth per target, each distinct image once, with every serving
service on its rows; DaCHS' two collections as two services (the same files under two
publisher DIDs) store each file once.

Skipped only when the machine cannot install Debian packages (not root, no apt), with the
reason ``tests/interop/install_deps.sh`` gives; ``make interop`` installs DaCHS first.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urljoin

import pytest
import requests

from tests.interop.collection import TARGET_NAME, sha256
from tests.obscore_check import assert_every_obscore_column_kept

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("obsharvest")
PROFILE = "config/generic-obstap.yaml"
RUN_TIMEOUT = 300.0  # s per `obsharvest run`: a hang (e.g. an unanswered HEAD) must end
HTTP_TIMEOUT = (5.0, 30.0)
DATALINK = "application/x-votable+xml;content=datalink"


@pytest.fixture(scope="session")
def dachs():
    from tests.interop.dachs import SetupError, Unavailable, dachs_session

    try:
        with dachs_session() as running:
            yield running
    except Unavailable as exc:
        pytest.skip(str(exc))
    except SetupError as exc:
        pytest.fail(f"DaCHS setup: {exc}", pytrace=False)


def _tap_rows(dachs, query: str):
    import pyvo

    service = pyvo.dal.TAPService(dachs.tap_url, session=_Timeouts())
    return service.run_sync(query)


class _Timeouts(requests.Session):
    """pyvo's requests, each with a timeout."""

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return super().request(*args, **kwargs)


# ------------------------------------------------------------------ the test bench itself


@pytest.mark.timeout(1500)  # includes installing DaCHS when `make interop-deps` did not run
def test_dachs_publishes_both_collections_as_intended(dachs):
    """What the client will see: padded s_regions, Datalink vs direct access_url, Range
    reads answered with 206 (DaCHS never answers HEAD on these URLs)."""
    from astropy.io.votable import parse_single_table

    collection = dachs.collection
    for kind, published in dachs.collections.items():
        result = _tap_rows(
            dachs,
            f"SELECT * FROM ivoa.obscore WHERE obs_collection = '{published.obs_collection}'",
        )
        rows = {row["obs_id"]: row for row in result.to_table()}
        assert set(rows) == {image.frame_id for image in collection.images}, kind
        # the TAP result announces a Datalink service for obs_publisher_did
        meta = [r for r in result.votable.resources if r.type == "meta"]
        assert any(r.utype == "adhoc:service" for r in meta), kind
        for frame_id, row in rows.items():
            assert row["target_name"] == TARGET_NAME
            assert row["dataproduct_type"] == "image" and row["calib_level"] == 2
            published_region = _polygon(row["s_region"])
            expected = collection.image(frame_id).padded_region()
            assert len(published_region) == len(expected) == 4
            for (ra, dec), (era, edec) in zip(published_region, expected, strict=True):
                assert abs(ra - era) < 1e-6 and abs(dec - edec) < 1e-6, (frame_id, row["s_region"])
            local = published.files[frame_id]
            if kind == "datalink":
                assert row["access_format"] == DATALINK
                links = requests.get(row["access_url"], timeout=HTTP_TIMEOUT)
                assert links.status_code == 200, links.text[:500]
                table = parse_single_table(_bytes_io(links.content)).to_table()
                this = [r for r in table if r["semantics"] == "#this"]
                assert len(this) == 1 and not this[0]["error_message"], table
                file_url = urljoin(row["access_url"], str(this[0]["access_url"]))
                assert this[0]["content_type"] == "image/fits"
            else:
                assert row["access_format"] == "image/fits"
                file_url = row["access_url"]
            head = requests.get(file_url, headers={"Range": "bytes=0-2879"}, timeout=HTTP_TIMEOUT)
            assert head.status_code == 206, (file_url, head.status_code)
            assert head.content == local.read_bytes()[:2880]


def _polygon(s_region: str) -> list[tuple[float, float]]:
    """Vertices of an STC-S "Polygon ICRS ra dec ..." (DaCHS' serialisation)."""
    words = s_region.split()
    assert words[0].lower() == "polygon", s_region
    numbers = [float(w) for w in words if re.fullmatch(r"[-+0-9.eE]+", w)]
    return list(zip(numbers[0::2], numbers[1::2], strict=True))


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


# ------------------------------------------------------------------------------ harvests


@dataclass
class Run:
    returncode: int | None  # None: killed after RUN_TIMEOUT
    stdout: str
    stderr: str
    seconds: float
    files: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # rel -> sha, mtime, ino
    hidden: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def explain(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.0f} s\n--- stdout\n"
            f"{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-5000:]}"
        )

    def downloaded_now(self) -> int | None:
        match = re.search(r"(\d+) downloaded now", self.stdout)
        return int(match.group(1)) if match else None


@dataclass
class Harvest:
    kind: str
    obs_collection: str
    output: Path
    first: Run
    second: Run | None


def _snapshot(output: Path, run: Run) -> Run:
    fits_root = output / "fits"
    if fits_root.exists():
        for path in sorted(fits_root.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(fits_root).as_posix()
            if any(part.startswith(".") for part in path.relative_to(fits_root).parts):
                run.hidden.append(rel)
            elif path.name.endswith(".fits"):
                stat = path.stat()
                run.files[rel] = (sha256(path), stat.st_mtime_ns, stat.st_ino)
    import pyarrow.parquet as pq

    for path in sorted((output / "metadata").rglob("*.parquet")):
        if not any(part.startswith(".") for part in path.parts):
            run.rows.extend(pq.read_table(path).to_pylist())
    return run


def _harvest(dachs, obs_collection: str, targets: Path, output: Path, *extra: str) -> Run:
    """One ``obsharvest run``, reporting to the session's Prefect API (starting a temporary
    one per run, as a first run does, is tested by test_first_contact and test_stopping)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    cmd = [
        str(CLI),
        "run",
        "--config",
        PROFILE,
        "--set",
        f"service.tap_url={dachs.tap_url}",
        "--set",
        f"constraints.extra_where=dataproduct_type = 'image' AND obs_collection = '{obs_collection}'",
        "--targets",
        str(targets),
        "--output",
        str(output),
        *extra,
    ]
    start = time.monotonic()
    # its own process group: on a timeout, the CLI's children (Prefect's ephemeral API
    # server) go too, instead of living on as orphans
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        run = Run(proc.returncode, out, err, time.monotonic() - start)
    except subprocess.TimeoutExpired:
        _end_group(proc.pid)
        out, err = proc.communicate(timeout=30)
        run = Run(None, out, err + f"\n(killed after {RUN_TIMEOUT:.0f} s)", RUN_TIMEOUT)
    finally:
        _end_group(proc.pid)  # nothing of the run outlives it
    return _snapshot(output, run)


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process left in the process group?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _end_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, whatever is left of a run's process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)


@pytest.fixture(scope="module", params=["datalink", "direct"])
def harvest(request, dachs, prefect_harness, tmp_path_factory) -> Harvest:
    """Two `obsharvest run` of the same targets into the same output, for one collection."""
    kind = request.param
    published = dachs.collections[kind]
    base = tmp_path_factory.mktemp(f"harvest-{kind}")
    targets = dachs.collection.write_targets(base / "targets.csv")
    output = base / "out"
    first = _harvest(dachs, published.obs_collection, targets, output)
    second = None
    if first.returncode is not None:  # a hang would only hang again
        second = _harvest(dachs, published.obs_collection, targets, output)
    return Harvest(kind, published.obs_collection, output, first, second)


def _frames_by_hash(dachs) -> dict[str, str]:
    files = next(iter(dachs.collections.values())).files
    return {sha256(path): frame_id for frame_id, path in files.items()}


@pytest.mark.timeout(900)
def test_harvest_stores_exactly_the_images_containing_a_target(dachs, harvest):
    run = harvest.first
    assert run.returncode == 0, run.explain()
    frames = _frames_by_hash(dachs)
    stored = {}
    for rel, (digest, _, _) in run.files.items():
        assert digest in frames, f"{rel} is not byte-identical to any file DaCHS serves"
        stored.setdefault(frames[digest], []).append(rel)
    duplicates = {frame: rels for frame, rels in stored.items() if len(rels) > 1}
    assert not duplicates, f"images stored more than once: {duplicates}"
    expected = dachs.collection.stored_frames()
    assert set(stored) == expected, (
        f"stored {sorted(stored)}, expected {sorted(expected)} "
        f"(missing {sorted(expected - set(stored))}, extra {sorted(set(stored) - expected)})"
    )
    assert not run.hidden, f"temporary files left behind: {run.hidden}"


@pytest.mark.timeout(900)
def test_verdicts_are_contains_exactly_for_the_true_pairs(dachs, harvest):
    run = harvest.first
    assert run.returncode == 0, run.explain()
    assert run.rows, "no Parquet rows under metadata/"
    collection = dachs.collection
    column = "obsh_target_name"  # the harvest's target; ObsCore's target_name is DaCHS'
    pairs = [(row[column], row["obs_id"]) for row in run.rows]
    assert len(pairs) == len(set(pairs)), "duplicate (target, image) rows"
    # one row per (target, image) whose padded s_region DaCHS matched ...
    assert set(pairs) == collection.sregion_pairs()
    # ... and 'contains' exactly where the pixels hold the target
    contains = {
        (row[column], row["obs_id"]) for row in run.rows if row["obsh_verdict"] == "contains"
    }
    assert contains == collection.truth(), (
        f"missing {sorted(collection.truth() - contains)}, "
        f"false {sorted(contains - collection.truth())}"
    )
    verdicts = {
        row["obsh_verdict"] for row in run.rows if (row[column], row["obs_id"]) not in contains
    }
    assert verdicts <= {"outside"}, verdicts
    # the WCS was read from HDU 1, where the image is, and places the target where the
    # generated WCS does (0- or 1-based, the same for every row)
    offsets = set()
    targets = {t.name: t for t in collection.targets}
    for row in run.rows:
        if "obsh_wcs_hdu" in row:
            assert row["obsh_wcs_hdu"] == 1, row
        if row.get("obsh_pixel_x") is not None:
            t = targets[row[column]]
            x, y = collection.image(row["obs_id"]).pixel(t.ra, t.dec)
            dx, dy = row["obsh_pixel_x"] - x, row["obsh_pixel_y"] - y
            assert abs(dx - round(dx)) < 0.01 and abs(dy - round(dy)) < 0.01, row
            offsets.add((round(dx), round(dy)))
    assert offsets <= {(0, 0)} or offsets == {(1, 1)}, offsets
    hashes = {frame: digest for digest, frame in _frames_by_hash(dachs).items()}
    for row in run.rows:
        if row["obsh_verdict"] == "contains":
            assert row["obsh_stored"], row
            if row.get("obsh_sha256"):
                assert row["obsh_sha256"] == hashes[row["obs_id"]], row["obs_id"]


@pytest.mark.timeout(900)
def test_rerun_exits_0_and_downloads_nothing(harvest):
    first, second = harvest.first, harvest.second
    assert first.returncode == 0, first.explain()
    assert second is not None and second.returncode == 0, second.explain() if second else ""
    assert second.files == first.files, "the rerun rewrote or changed stored files"
    assert not second.hidden, f"temporary files left behind: {second.hidden}"
    if second.downloaded_now() is not None:
        assert second.downloaded_now() == 0, second.stdout


@pytest.mark.timeout(900)
def test_parquet_keeps_the_obscore_target_name(dachs, harvest):
    """README: the Parquet holds every ObsCore column as the archive sent it. DaCHS fills
    ``target_name`` (``collection.TARGET_NAME``); the harvest's own target names are in
    ``obsh_target_name`` and replace nothing. Every column DaCHS' TAP_SCHEMA lists for
    ivoa.ObsCore is in the Parquet, with its unit, and holds DaCHS' value on sampled rows."""
    run = harvest.first
    assert run.returncode == 0, run.explain()
    assert run.rows
    names = {t.name for t in dachs.collection.targets}
    assert all(row["target_name"] == TARGET_NAME for row in run.rows), sorted(run.rows[0])
    assert {row["obsh_target_name"] for row in run.rows} <= names
    checked = assert_every_obscore_column_kept(
        dachs.tap_url, harvest.output, sample=8, session=_Timeouts()
    )
    assert checked >= 29  # ObsCore 1.1's mandatory columns, at least


# ------------------------------------------------------------------------------ cutouts

CUTOUT_RADIUS = 0.005  # deg: 18 px of the 300 px images (1"/px)


@pytest.fixture(scope="module")
def cutout_run(dachs, prefect_harness, tmp_path_factory) -> tuple[Path, Run]:
    """`obsharvest run` in cutout mode on the Datalink collection. DaCHS offers SODA as a
    ``#proc`` row naming its ``procsvc`` descriptor (standardID SODA#sync-1.0, the ID as
    the ID param's value), not as a ``#cutout`` row; its ``dlget`` answers the FITS."""
    published = dachs.collections["datalink"]
    base = tmp_path_factory.mktemp("harvest-cutout")
    targets = dachs.collection.write_targets(base / "targets.csv")
    output = base / "out"
    run = _harvest(
        dachs,
        published.obs_collection,
        targets,
        output,
        "--set",
        "products.mode=cutout",
        "--set",
        f"products.cutout_radius={CUTOUT_RADIUS}",
    )
    return output, run


@pytest.mark.timeout(900)
def test_cutout_mode_on_datalink_stores_cutouts_holding_each_target(dachs, cutout_run):
    """Exactly one cutout per (target, image) whose pixels hold the target; each cutout's
    own WCS puts the target on its pixels, and it is smaller than the image it was cut
    from (and no copy of any whole file)."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS

    from tests.interop.collection import NX, NY

    output, run = cutout_run
    assert run.returncode == 0, run.explain()
    assert "Traceback" not in run.stderr, run.explain()
    collection = dachs.collection
    column = "obsh_target_name"
    stored = {(r[column], r["obs_id"]): r for r in run.rows if r["obsh_stored"]}
    assert set(stored) == collection.truth(), (
        f"missing {sorted(collection.truth() - set(stored))}, "
        f"extra {sorted(set(stored) - collection.truth())}"
    )
    assert len(run.files) == len(stored), sorted(run.files)
    assert not run.hidden, f"temporary files left behind: {run.hidden}"
    whole = set(_frames_by_hash(dachs))
    targets = {t.name: t for t in collection.targets}
    for (name, frame), row in stored.items():
        target = targets[name]
        path = Path(row["obsh_storage_uri"].removeprefix("file://"))
        assert sha256(path) not in whole, f"{path} is the whole image of {frame}"
        with fits.open(path) as hdul:
            image = next(h for h in hdul if h.is_image and h.header.get("NAXIS") == 2)
            nx, ny = image.header["NAXIS1"], image.header["NAXIS2"]
            x, y = WCS(image.header).world_to_pixel(SkyCoord(target.ra, target.dec, unit="deg"))
        assert -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5, (name, frame, x, y, nx, ny)
        assert nx < NX and ny < NY, (name, frame, nx, ny)
        ra, dec = float(f"{target.ra:.10f}"), float(f"{target.dec:.10f}")  # as written
        assert row["obsh_cutout_circle"] == f"{ra!r} {dec!r} {CUTOUT_RADIUS!r}"


# ------------------------------------------------------------------ many services at once

EMBEDDED_TARGETS = [("seed", 62.0, -37.0), ("east", 62.3, -37.1), ("west", 61.7, -36.9)]
MANY = ["original", "mirror", "other", "dachs"]  # the run's order


@pytest.fixture(scope="module")
def embedded_archives():
    """Three embedded archives beside DaCHS: RSP-like (Datalink, creator DIDs), its mirror
    (the same images under its own publisher DIDs, files served directly) and another
    sky whose queries are slow."""
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    settings = {
        "original": ArchiveSettings(seed=7, n_visits=12, profile="rubin", creator_did=True),
        "mirror": ArchiveSettings(
            seed=7, n_visits=12, access_style="direct", publisher="mirror.example"
        ),
        "other": ArchiveSettings(seed=11, n_visits=12, query_delay=0.3),
    }
    running = {name: EmbeddedArchive(s) for name, s in settings.items()}
    try:
        for archive in running.values():
            archive.start()
        yield running
    finally:
        for archive in running.values():
            archive.stop()


def _dachs_dids(dachs, obs_collection: str) -> dict[str, str]:
    """frame_id -> obs_publisher_did, as DaCHS publishes them (asked directly)."""
    table = _tap_rows(
        dachs,
        "SELECT obs_id, obs_publisher_did FROM ivoa.obscore "
        f"WHERE obs_collection = '{obs_collection}'",
    ).to_table()
    return {str(row["obs_id"]): str(row["obs_publisher_did"]) for row in table}


@pytest.fixture(scope="module")
def many(dachs, embedded_archives, prefect_harness, tmp_path_factory):
    """One run over the three embedded archives and DaCHS' Datalink collection, for the
    targets of both skies (each service is asked for all of them)."""
    from obsharvest.flows.harvest import harvest_params
    from obsharvest.flows.params import HarvestParams

    base = tmp_path_factory.mktemp("many")
    targets = dachs.collection.write_targets(base / "targets.csv")
    with targets.open("a") as fh:
        fh.writelines(f"{n},{ra},{dec}\n" for n, ra, dec in EMBEDDED_TARGETS)
    published = dachs.collections["datalink"]
    services = [{"name": n, "tap_url": embedded_archives[n].tap_url} for n in MANY[:3]]
    services.append(
        {
            "name": "dachs",
            "tap_url": dachs.tap_url,
            "extra_where": f"obs_collection = '{published.obs_collection}'",
        }
    )
    params = HarvestParams.model_validate(
        {
            "services": services,
            "targets": str(targets),
            "constraints": {"calib_levels": [2], "extra_where": "dataproduct_type = 'image'"},
            "output_url": str(base / "out"),
        }
    )
    started = time.monotonic()
    summary = harvest_params(params)
    seconds = time.monotonic() - started
    output = base / "out"
    run = _snapshot(output, Run(0, "", "", seconds))
    return SimpleNamespace(
        summary=summary, run=run, output=output, dids=_dachs_dids(dachs, published.obs_collection)
    )


def _identities(embedded_archives, many) -> dict[str, str]:
    """Each row's obs_publisher_did -> its image: the creator DID for the embedded
    archives (the original and its mirror share them), DaCHS' publisher DID for DaCHS."""
    identity = {}
    for archive in embedded_archives.values():
        identity.update(archive.creator_dids())
    identity.update({did: did for did in many.dids.values()})
    return identity


def _many_truth(dachs, embedded_archives, many) -> dict[str, set[str]]:
    """Per target, every image of every service whose pixels contain it: the embedded
    archives' WCS truth and the DaCHS collection's (its generated WCS)."""
    truth: dict[str, set[str]] = {}
    points = [(t.name, t.ra, t.dec) for t in dachs.collection.targets] + EMBEDDED_TARGETS
    for name, ra, dec in points:
        truth[name] = set().union(*(a.creator_truth(ra, dec) for a in embedded_archives.values()))
    for name, frame in dachs.collection.truth():
        truth[name].add(many.dids[frame])
    return truth


@pytest.mark.timeout(900)
def test_many_services_with_dachs_store_exactly_the_truth_each_image_once(
    dachs, embedded_archives, many
):
    """Issue 24: three embedded archives (profiles, access styles, latencies) and DaCHS in
    one run store exactly the WCS truth per target, each distinct image once, with every
    serving service on its rows."""
    summary, rows = many.summary, many.run.rows
    assert summary.ok, summary.failures
    assert rows, "no Parquet rows"
    identity = _identities(embedded_archives, many)
    unknown = {r["obs_publisher_did"] for r in rows} - set(identity)
    assert not unknown, f"rows of images no service publishes: {sorted(unknown)[:5]}"
    assert {r["obsh_service"] for r in rows} == set(MANY)
    truth = _many_truth(dachs, embedded_archives, many)
    assert set(truth) == {r["obsh_target_name"] for r in rows} | {
        t.name for t in dachs.collection.targets if not dachs.collection.in_padded_region(t)
    }
    stored_all: set[str] = set()
    for target, on_pixels in truth.items():
        mine = [r for r in rows if r["obsh_target_name"] == target]
        asked = {identity[r["obs_publisher_did"]] for r in mine}
        stored = {identity[r["obs_publisher_did"]] for r in mine if r["obsh_stored"]}
        assert stored == asked & on_pixels, (
            f"{target}: missing {sorted(asked & on_pixels - stored)}, "
            f"extra {sorted(stored - on_pixels)}"
        )
        stored_all |= stored
    # DaCHS was asked for every image: its targets get their whole truth
    for t in dachs.collection.targets:
        dachs_truth = {many.dids[f] for n, f in dachs.collection.truth() if n == t.name}
        assert dachs_truth <= truth[t.name] and dachs_truth <= stored_all, t.name
    for name, *_ in EMBEDDED_TARGETS:
        assert truth[name] & stored_all, name  # the embedded targets stored something
    # each distinct image once: one object per image, one image per object
    assert len(many.run.files) == len(stored_all), (len(many.run.files), len(stored_all))
    uris: dict[str, set[str]] = {}
    for r in rows:
        if r["obsh_stored"]:
            uris.setdefault(identity[r["obs_publisher_did"]], set()).add(r["obsh_storage_uri"])
    assert set(uris) == stored_all
    twice = {image: u for image, u in uris.items() if len(u) != 1}
    assert not twice, f"images stored under several objects: {twice}"
    assert len(set().union(*uris.values())) == len(stored_all)
    # DaCHS' images byte for byte
    frames = _frames_by_hash(dachs)
    dachs_stored = {
        r["obsh_storage_uri"] for r in rows if r["obsh_service"] == "dachs" and r["obsh_stored"]
    }
    digests = [sha256(Path(u.removeprefix("file://"))) for u in dachs_stored]
    assert sorted(frames[d] for d in digests) == sorted(dachs.collection.stored_frames())
    assert not many.run.hidden, f"temporary files left behind: {many.run.hidden}"
    # every serving service on each row, in the run's order
    serving: dict[str, set[str]] = {}
    for r in rows:
        serving.setdefault(identity[r["obs_publisher_did"]], set()).add(r["obsh_service"])
    for r in rows:
        expected = ",".join(s for s in MANY if s in serving[identity[r["obs_publisher_did"]]])
        assert r["obsh_services"] == expected, (r["obsh_service"], r["obs_publisher_did"])
    by_service = {s: {r["obsh_services"] for r in rows if r["obsh_service"] == s} for s in MANY}
    assert by_service == {
        "original": {"original,mirror"},
        "mirror": {"original,mirror"},
        "other": {"other"},
        "dachs": {"dachs"},
    }
    # the summary: one line per service; the mirror's images were all stored by the original
    lines = {s.name: s for s in summary.services}
    assert list(lines) == MANY
    assert lines["mirror"].stored == 0
    assert lines["mirror"].also_elsewhere == lines["mirror"].images > 0
    assert lines["dachs"].stored == len(dachs.collection.stored_frames())
    assert sum(s.stored for s in lines.values()) == len(many.run.files) == summary.stored_images


@pytest.fixture(scope="module")
def two_dachs(dachs, prefect_harness, tmp_path_factory):
    """One run over DaCHS' two collections as two services: the same files (one through
    Datalink, one directly) under two publisher DIDs, no creator DID."""
    from obsharvest.flows.harvest import harvest_params
    from obsharvest.flows.params import HarvestParams

    base = tmp_path_factory.mktemp("two-dachs")
    targets = dachs.collection.write_targets(base / "targets.csv")
    services = [
        {
            "name": f"dachs-{kind}",
            "tap_url": dachs.tap_url,
            "extra_where": f"obs_collection = '{published.obs_collection}'",
        }
        for kind, published in dachs.collections.items()
    ]
    params = HarvestParams.model_validate(
        {
            "services": services,
            "targets": str(targets),
            "constraints": {"extra_where": "dataproduct_type = 'image'"},
            "output_url": str(base / "out"),
        }
    )
    summary = harvest_params(params)
    run = _snapshot(base / "out", Run(0, "", "", 0.0))
    return SimpleNamespace(summary=summary, run=run, names=[s["name"] for s in services])


@pytest.mark.timeout(900)
def test_one_file_under_two_dachs_dids_is_stored_once(dachs, two_dachs):
    """Issue 24 item 3: no creator DID, two publisher DIDs, identical bytes mean one
    stored object, and both services' rows point at it."""
    summary, run = two_dachs.summary, two_dachs.run
    assert summary.ok, summary.failures
    assert {r["obsh_service"] for r in run.rows} == set(two_dachs.names)
    frames = _frames_by_hash(dachs)
    stored = sorted(frames[digest] for digest, _, _ in run.files.values())
    assert stored == sorted(dachs.collection.stored_frames()), "each file once"
    objects: dict[str, set[str]] = {}
    services: dict[str, set[str]] = {}
    for r in run.rows:
        if r["obsh_stored"]:
            objects.setdefault(r["obs_id"], set()).add(r["obsh_storage_uri"])
            services.setdefault(r["obs_id"], set()).add(r["obsh_service"])
    assert set(objects) == dachs.collection.stored_frames()
    assert all(len(u) == 1 for u in objects.values()), objects
    assert all(s == set(two_dachs.names) for s in services.values()), services
    assert not run.hidden, f"temporary files left behind: {run.hidden}"


@pytest.mark.timeout(900)
def test_one_file_under_two_dachs_dids_names_both_services(two_dachs):
    """Issue 24 item 3: every service that serves an image is recorded on its rows --
    also when only its bytes say it is the same image."""
    stored = [r for r in two_dachs.run.rows if r["obsh_stored"]]
    assert stored
    assert {r["obsh_services"] for r in stored} == {",".join(two_dachs.names)}
