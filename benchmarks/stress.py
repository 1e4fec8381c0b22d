"""Loop the workload that used to crash, each loop in a fresh process, and report crashes.

``make stress`` (or ``python -m benchmarks.stress [options]``). Each loop is a child
process that starts embedded archives (generic and Rubin-like, Datalink replies grouped,
shuffled or answering only the first ID) and, against each, from many threads at once:
TAP queries with a TAP_UPLOAD of targets whose names have random lengths, sync and async
(UWS jobs); multi-ID Datalink requests of random batch sizes; header reads of every
image; downloads and quicklooks (matplotlib) of a few; then a full garbage collection. A
child that dies from a signal is a crash: its faulthandler trace (every thread) is printed.

This is how issue 17's "rare segfault" was pinned down: astropy's C TABLEDATA writer
writes one byte past its row buffer when a row is exactly 256, 512, 1024... bytes long
(see ``obsharvest.simarchive.votable``). ``--c-writer`` puts that writer back (the archive's replies
and the client's uploads) to show the loop catches it; with ``--malloc-debug``
(``PYTHONMALLOC=debug``) the overflow aborts at once, inside the writer.

Options: ``--loops N`` (20), ``--malloc-debug``, ``--c-writer``, ``--timeout S`` per
loop (600; a hung loop dumps its threads and counts as a failure), ``--binning B`` (10, as the tests),
``--cache-dir DIR`` (FITS kept between loops, ``.cache/stress``), ``--stop-on-crash``.
Exit status 1 when any loop crashed or failed.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRACE_LINES = 60  # of a crashed child's stderr, from the fatal error on


# -- the workload (one loop, in a child process) --------------------------------------------


def force_c_writer() -> None:
    """Make every ``VOTableFile.to_xml`` use astropy's C TABLEDATA writer again."""
    from astropy.io.votable.tree import VOTableFile

    python_to_xml = VOTableFile.to_xml

    def to_xml(self, fd, *args, _debug_python_based_parser=False, **kwargs):
        return python_to_xml(self, fd, *args, _debug_python_based_parser=False, **kwargs)

    VOTableFile.to_xml = to_xml


ARCHIVES = (  # what real archives differ in, as far as the suspects are concerned
    {"profile": "rubin"},  # ivo:// IDs: many Datalink rows of exactly 512 bytes
    {"profile": "generic", "datalink_order": "shuffled"},
    {"profile": "rubin", "naming": "dp1", "datalink_multi_id": "first"},
)


def one_archive(settings: dict, rng: random.Random, binning: int, cache: str) -> dict:
    import pyvo
    import requests
    from astropy.io.votable import parse_single_table

    from benchmarks.workload import spread_targets
    from obsharvest.access.datalink import DatalinkResolver
    from obsharvest.models import Target
    from obsharvest.net.retry import RetryPolicy
    from obsharvest.products import quicklook
    from obsharvest.query.adql import TARGET_COLUMN, Constraints
    from obsharvest.query.capabilities import probe_features
    from obsharvest.query.obscore import QueryOptions, Strategy, query_targets
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
    from obsharvest.verify import containment

    counts = dict.fromkeys(("rows", "links", "did_links", "headers", "quicklooks"), 0)
    archive_settings = ArchiveSettings(binning=binning, cache_dir=cache, **settings)
    with EmbeddedArchive(archive_settings) as archive:
        targets = [
            Target(f"{t.name}-".ljust(rng.randint(8, 420), "x"), t.ra, t.dec)
            for t in spread_targets(rng.randint(6, 12), radius=0.8)
        ]
        service = pyvo.dal.TAPService(archive.tap_url, session=requests.Session())
        features = probe_features(service, RetryPolicy())
        constraints = Constraints(bands=("i",), calib_levels=(2,))

        def query(mode: str, batch: int):
            return query_targets(
                service,
                targets,
                constraints,
                Strategy(kind="upload", batch_size=batch),
                features,
                QueryOptions(mode=mode, poll_wait=1),
            )

        with ThreadPoolExecutor(4) as pool:  # UWS jobs and sync queries at the same time
            results = list(
                pool.map(query, ["async", "sync", "async", "sync"], [rng.randint(1, 6)] * 4)
            )
        rows = results[0]
        counts["rows"] = sum(len(r) for r in results)
        if not len(rows):
            return counts
        by_key = {str(r["obs_publisher_did"]): r for r in rows}
        resolver = DatalinkResolver(
            requests.Session(), batch_size=rng.randint(1, 40), workers=rng.randint(2, 8)
        )
        links = resolver.resolve({k: str(r["access_url"]) for k, r in by_key.items()})
        links = {k: v for k, v in links.items() if v.url}
        counts["links"] = len(links)
        keys = list(by_key)
        rng.shuffle(keys)
        batches, start = [], 0
        while start < len(keys):  # and by publisher DID, as pyvo users ask, in random batches
            size = rng.randint(1, 20)
            batches.append(keys[start : start + size])
            start += size

        def by_did(ids: list[str]) -> int:
            reply = requests.post(archive.datalink_url, data=[("ID", i) for i in ids], timeout=60)
            reply.raise_for_status()
            return len(parse_single_table(io.BytesIO(reply.content)).array)

        with ThreadPoolExecutor(4) as pool:
            counts["did_links"] = sum(pool.map(by_did, batches))
        named = {t.name: t for t in targets}

        def header(key: str):
            target = named[str(by_key[key][TARGET_COLUMN])]
            return key, containment.verify(links[key].url, [target])[target.name]

        with ThreadPoolExecutor(8) as pool:
            verdicts = dict(pool.map(header, links))
        counts["headers"] = len(verdicts)
        contained = [k for k, v in verdicts.items() if v.verdict == "contains"]
        session = requests.Session()

        def look(key: str) -> int:
            data = session.get(links[key].url, timeout=60).content
            target = named[str(by_key[key][TARGET_COLUMN])]
            out = io.BytesIO()
            quicklook.quicklook_png(data, target, str(by_key[key]["s_region"]), out)
            return len(out.getvalue())

        with ThreadPoolExecutor(4) as pool:
            counts["quicklooks"] = len(list(pool.map(look, contained[: rng.randint(2, 6)])))
    return counts


def child(loop: int, binning: int, cache: str, c_writer: bool, timeout: float) -> int:
    faulthandler.enable(all_threads=True)
    faulthandler.dump_traceback_later(max(timeout - 10, 1), exit=True)  # a hang: stacks, exit
    if c_writer:
        force_c_writer()
    import matplotlib

    matplotlib.use("Agg")
    rng = random.Random(loop)
    started = time.monotonic()
    totals: dict[str, int] = {}
    with ThreadPoolExecutor(2) as pool:  # two archives serving at once, then the third
        futures = [
            pool.submit(one_archive, s, random.Random(rng.random()), binning, cache)
            for s in ARCHIVES
        ]
        for future in futures:
            for name, n in future.result().items():
                totals[name] = totals.get(name, 0) + n
            gc.collect()
    gc.collect()
    totals["archives"] = len(ARCHIVES)
    totals["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(totals), flush=True)
    return 0


# -- the loop (parent) ---------------------------------------------------------------------


def trace_of(stderr: str) -> str:
    """The fatal error and the crashing thread's stack (faulthandler's "Current thread"
    block; the other threads stay in the log), or the stderr's tail."""
    lines = stderr.splitlines()
    heads = ("Fatal Python error", "Debug memory block", "Timeout (")
    fatal = next((i for i, line in enumerate(lines) if line.startswith(heads)), None)
    if fatal is None:
        return "\n".join(lines[-20:])
    current = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), None)
    if current is None:
        return "\n".join(lines[fatal : fatal + TRACE_LINES])
    block = []
    for line in lines[current:]:
        if not line.strip():
            break
        block.append(line)
    others = sum(line.startswith("Thread 0x") for line in lines)
    head = [line for line in lines[fatal:current] if line.strip()]
    head = [*head[:3], *(line for line in head[3:] if line.startswith("Fatal Python error"))]
    return "\n".join([*head, *block[:TRACE_LINES], f"(+ {others} other threads in the log)"])


def describe(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.stress", description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20)
    parser.add_argument("--malloc-debug", action="store_true", help="PYTHONMALLOC=debug")
    parser.add_argument("--c-writer", action="store_true", help="astropy's C VOTable writer")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per loop")
    parser.add_argument("--binning", type=int, default=10)
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "stress"))
    parser.add_argument("--stop-on-crash", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child(args.child, args.binning, args.cache_dir, args.c_writer, args.timeout)
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "MPLBACKEND": "Agg"}
    if args.malloc_debug:
        env["PYTHONMALLOC"] = "debug"
    mode = ", ".join(
        m
        for m, on in (("C writer", args.c_writer), ("PYTHONMALLOC=debug", args.malloc_debug))
        if on
    )
    print(f"stress: {args.loops} loops{f' ({mode})' if mode else ''}", flush=True)
    crashes, failures, seconds = 0, 0, []
    logs = Path(tempfile.mkdtemp(prefix="obsharvest-stress-"))
    started = time.monotonic()
    for loop in range(args.loops):
        command = [sys.executable, "-m", "benchmarks.stress", "--child", str(loop)]
        command += ["--binning", str(args.binning), "--cache-dir", args.cache_dir]
        command += ["--timeout", str(args.timeout)] + (["--c-writer"] if args.c_writer else [])
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                command,
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=args.timeout + 30,
            )
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            code, out, err = 1, "", f"Timeout ({args.timeout:.0f} s): killed\n{exc.stderr or ''}"
        took = time.monotonic() - t0
        seconds.append(took)
        log = logs / f"loop{loop:03d}.stderr"
        log.write_text(err if isinstance(err, str) else err.decode(errors="replace"))
        if code == 0:
            summary = out.strip().splitlines()[-1] if out.strip() else ""
            print(f"loop {loop + 1:3d}/{args.loops}: ok in {took:5.1f} s  {summary}", flush=True)
            continue
        crashed = code < 0
        crashes += crashed
        failures += not crashed
        what = "CRASH" if crashed else "FAILED"
        print(f"loop {loop + 1:3d}/{args.loops}: {what} ({describe(code)}) after {took:.1f} s")
        print("    " + trace_of(log.read_text()).replace("\n", "\n    "), flush=True)
        print(f"    (whole stderr: {log})", flush=True)
        if crashed and args.stop_on_crash:
            break
    total = time.monotonic() - started
    ran = len(seconds)
    print(
        f"stress: {ran} loops in {total:.0f} s (median {sorted(seconds)[ran // 2]:.1f} s per "
        f"loop): {crashes} crashed, {failures} failed{f' ({mode})' if mode else ''}"
    )
    return 1 if crashes or failures else 0


if __name__ == "__main__":
    sys.exit(main())
