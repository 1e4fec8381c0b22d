"""Verification CPU per header (issue 25, item 3): ``containment.verify`` timed in this
process over a sample of the workload's stored FITS files, with ``time.thread_time`` (the
calling thread's CPU: the idle threads Prefect leaves in this process are not counted).
Every timed call starts cold: the WCS cache, which spares a second build of one header,
is emptied first, so each figure is header bytes to verdicts, WCS built.

Each file is read whole from the archive's cache before timing and handed to ``verify`` as
``opened=io.BytesIO(data)``, so no I/O is timed: only what verification costs the client's
CPU from header bytes to verdicts (header parse, WCS, containment of every target whose
query returned that image). ``verify`` reads from the stream only what it needs; how
many bytes it read (the most over the files) is reported.
"""

from __future__ import annotations

import io
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass


class _Reach(io.BytesIO):
    """A BytesIO that counts the bytes ``verify`` read from it (seeks past data are free)."""

    got = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.got += len(out)
        return out

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self.got += n or 0
        return n


@dataclass
class VerifyCpu:
    ms_per_header: float  # median over the sampled files of each file's median call
    fastest_ms: float
    slowest_ms: float
    files: int
    repeats: int
    targets_per_header: float  # mean targets decided per call
    bytes_read: int  # bytes verify read from the stream, largest over the files
    verdicts: dict[str, int]


def measure(
    catalogue, targets: Sequence, dids: Sequence[str], sample: int = 20, repeats: int = 5
) -> VerifyCpu:
    """Time ``verify`` on up to ``sample`` of ``dids`` (spread evenly, seeded), ``repeats``
    times each after one untimed call; every target whose query returned the image is
    decided in the same call, as in the harvest."""
    from obsharvest.models import Target
    from obsharvest.verify import containment
    from obsharvest.verify.containment import verify

    by_name = {t.name: t for t in targets}
    on_image: dict[str, list] = {}
    for name, rows in catalogue.rows.items():
        for did in rows:
            t = by_name[name]
            on_image.setdefault(did, []).append(Target(t.name, t.ra, t.dec))
    chosen = [d for d in sorted(dids) if d in catalogue.paths and d in on_image]
    if len(chosen) > sample:
        chosen = sorted(random.Random(25).sample(chosen, sample))
    per_file, counts, verdicts, reached = [], [], {}, 0
    for did in chosen:
        with open(catalogue.paths[did], "rb") as fh:
            data = fh.read()
        url = f"file://{catalogue.paths[did]}"
        tgts = on_image[did]
        probe = _Reach(data)
        first = verify(url, tgts, opened=probe)  # untimed: imports, caches
        reached = max(reached, probe.got)
        for c in first.values():
            verdicts[str(c.verdict)] = verdicts.get(str(c.verdict), 0) + 1
        times = []
        for _ in range(repeats):
            stream = io.BytesIO(data)
            containment.forget_built_wcs()
            t0 = time.thread_time()
            verify(url, tgts, opened=stream)
            times.append(time.thread_time() - t0)
        per_file.append(statistics.median(times) * 1000)
        counts.append(len(tgts))
    if not per_file:
        return VerifyCpu(float("nan"), float("nan"), float("nan"), 0, repeats, 0.0, 0, {})
    return VerifyCpu(
        ms_per_header=statistics.median(per_file),
        fastest_ms=min(per_file),
        slowest_ms=max(per_file),
        files=len(per_file),
        repeats=repeats,
        targets_per_header=sum(counts) / len(counts),
        bytes_read=reached,
        verdicts=verdicts,
    )
