"""The workload every contender runs: targets, the archive that serves them, warm caches.

The targets sit on a sunflower spiral around the seed's point (RA 62, Dec -37), so they
spread evenly over the field whatever N is; how many images each one has comes from the
archive's data (the seed's §4.1.1 query: i-band calexps whose ``s_region`` contains it).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyvo
import requests

from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

CENTRE = (62.0, -37.0)  # the seed tutorial's point (§1.4)
BAND = "i"  # the seed's §4.1 query: i-band calexps
CALIB_LEVEL = 2
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


@dataclass(frozen=True)
class BenchTarget:
    name: str
    ra: float
    dec: float


def spread_targets(n: int, radius: float = 1.0, centre: tuple[float, float] = CENTRE):
    """``n`` points evenly over a disc of ``radius`` degrees (a sunflower spiral)."""
    ra0, dec0 = centre
    out = []
    for k in range(n):
        r = radius * math.sqrt((k + 0.5) / n)
        theta = k * GOLDEN_ANGLE
        dec = dec0 + r * math.sin(theta)
        ra = ra0 + r * math.cos(theta) / math.cos(math.radians(dec))
        out.append(BenchTarget(f"t{n}-{k:03d}", round(ra, 6), round(dec, 6)))
    return out


def write_targets_csv(targets: Sequence[BenchTarget], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["name,ra,dec", *(f"{t.name},{t.ra},{t.dec}" for t in targets)]
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_query(ra: float, dec: float) -> str:
    """The seed's §4.1.1 query, for one position."""
    return (
        f"SELECT * FROM ivoa.ObsCore WHERE CONTAINS(POINT('ICRS', {ra}, {dec}), s_region) = 1 "
        f"AND lsst_band = '{BAND}' AND calib_level = {CALIB_LEVEL}"
    )


def fault_items(latency: float, bandwidth: float, extra: Sequence[str] = ()) -> list[str]:
    items = []
    if latency > 0:
        items.append(f"*.latency={latency}")
    if bandwidth > 0:
        items.append(f"total.bandwidth={bandwidth}")
    return [*items, *extra]


@dataclass
class Catalogue:
    """What the archive holds for a set of targets: candidate rows, sizes, true matches."""

    rows: dict[str, list[str]] = field(default_factory=dict)  # target name -> dids
    sizes: dict[str, int] = field(default_factory=dict)  # did -> bytes of the file
    truth: dict[str, frozenset[str]] = field(default_factory=dict)  # target -> dids on pixels
    paths: dict[str, str] = field(default_factory=dict)  # did -> the archive's file (cache)

    def subset(self, targets: Sequence[BenchTarget]) -> Catalogue:
        names = [t.name for t in targets]
        dids = {d for n in names for d in self.rows[n]}
        return Catalogue(
            {n: self.rows[n] for n in names},
            {d: self.sizes[d] for d in dids},
            {n: self.truth[n] for n in names},
            {d: self.paths[d] for d in dids if d in self.paths},
        )

    @property
    def n_rows(self) -> int:
        return sum(len(v) for v in self.rows.values())

    @property
    def images(self) -> set[str]:
        return {d for v in self.rows.values() for d in v}

    @property
    def matches(self) -> set[str]:
        return {d for n, v in self.rows.items() for d in v if d in self.truth[n]}

    def bytes_of(self, dids) -> int:
        return sum(self.sizes[d] for d in dids)


def start_archive(n_visits: int, binning: int, cache_dir: Path, seed: int = 42) -> EmbeddedArchive:
    """An archive with no faults yet (warm-up is not timed): call :func:`set_network` next."""
    settings = ArchiveSettings(
        seed=seed, n_visits=n_visits, binning=binning, cache_dir=str(cache_dir)
    )
    return EmbeddedArchive(settings).start()


class ArchiveProcess:
    """The embedded archive as its own process (``obsharvest archive``), as a real archive
    is another machine: in-process, the server's threads would compete for the client's
    GIL, and the client that does more work (hashing, writing, Prefect) would be charged
    for the server's scheduling delays too. Same seed and cache directory as the warmed
    in-process archive, so the same products and files. Counters and faults go over the
    archive's own test endpoints (``/_stats``, ``/_stats/reset``, ``/_faults``)."""

    def __init__(self, n_visits: int, binning: int, cache_dir: Path, seed: int = 42) -> None:
        root = Path(__file__).resolve().parent.parent
        cmd = [
            sys.executable, "-m", "obsharvest.flows.cli", "archive", "--host", "127.0.0.1", "--port", "0",
            "--seed", str(seed), "--visits", str(n_visits), "--binning", str(binning),
            "--cache-dir", str(cache_dir),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.tap_url = self._line("TAP service:")
        self.datalink_url = self._line("Datalink:")
        self.base_url = self.tap_url.rsplit("/tap", 1)[0]
        self._http = requests.Session()
        # keep reading what it prints, so a full pipe can never block the server
        threading.Thread(target=self._proc.stdout.read, daemon=True).start()

    def _line(self, prefix: str) -> str:
        deadline = time.monotonic() + 120
        assert self._proc.stdout is not None
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"archive process exited ({self._proc.poll()}) before {prefix}")
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
        raise RuntimeError(f"archive process did not print {prefix!r} within 120 s")

    def stats(self) -> dict:
        reply = self._http.get(f"{self.base_url}/_stats", timeout=30)
        reply.raise_for_status()
        endpoints = reply.json()["endpoints"]
        for counters in endpoints.values():  # JSON made the status codes strings
            if isinstance(counters.get("status"), dict):
                counters["status"] = {int(k): v for k, v in counters["status"].items()}
        return endpoints

    def reset_stats(self) -> None:
        self._http.post(f"{self.base_url}/_stats/reset", timeout=30).raise_for_status()

    def set_faults(self, items: Sequence[str], seed: int = 0) -> None:
        data = [("fault", i) for i in items] + [("seed", str(seed))]
        self._http.post(f"{self.base_url}/_faults", data=data, timeout=30).raise_for_status()

    def stop(self) -> None:
        self._http.close()
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def warmed_server(archive: EmbeddedArchive, own_process: bool) -> EmbeddedArchive | ArchiveProcess:
    """The archive the timed runs talk to: the warmed one, or (``own_process``) the same
    archive restarted as its own process over the warmed cache."""
    if not own_process:
        return archive
    s = archive.settings
    archive.stop()
    return ArchiveProcess(s.n_visits, s.binning, Path(s.cache_dir), s.seed)


def set_network(archive: EmbeddedArchive | ArchiveProcess, items: Sequence[str]) -> None:
    if isinstance(archive, ArchiveProcess):
        archive.set_faults(list(items))
    else:
        archive.set_faults(FaultPlan.parse(list(items)))


def warm(archive: EmbeddedArchive, targets: Sequence[BenchTarget]) -> Catalogue:
    """Query each target (no faults yet) and make sure every candidate FITS is on disk.

    Generated files live under the archive's ``cache_dir`` (``.cache/`` by default), so
    later runs of the benchmark find them and generation is never part of a timing.
    """
    by_did = {p.obs_publisher_did: p for p in archive.sky.products}
    service = pyvo.dal.TAPService(archive.tap_url)
    cat = Catalogue()
    for t in targets:
        table = service.run_sync(seed_query(t.ra, t.dec)).to_table()
        dids = [str(d) for d in table["obs_publisher_did"]]
        cat.rows[t.name] = dids
        cat.truth[t.name] = archive.truth(t.ra, t.dec)
        for did in dids:
            if did not in cat.sizes:
                path, _ = archive.files.ensure(by_did[did])
                cat.sizes[did] = path.stat().st_size
                cat.paths[did] = str(path)
    return cat
