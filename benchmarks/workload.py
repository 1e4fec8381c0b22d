"""The workload every contender runs: targets, the archive that serves them, warm caches.

The targets sit on a sunflower spiral around the seed's point (RA 62, Dec -37), so they
spread evenly over the field whatever N is; how many images each one has comes from the
archive's data (the seed's §4.1.1 query: i-band calexps whose ``s_region`` contains it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyvo

from simarchive.faults import FaultPlan
from simarchive.server import ArchiveSettings, EmbeddedArchive

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

    def subset(self, targets: Sequence[BenchTarget]) -> Catalogue:
        names = [t.name for t in targets]
        dids = {d for n in names for d in self.rows[n]}
        return Catalogue(
            {n: self.rows[n] for n in names},
            {d: self.sizes[d] for d in dids},
            {n: self.truth[n] for n in names},
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


def set_network(archive: EmbeddedArchive, items: Sequence[str]) -> None:
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
    return cat
