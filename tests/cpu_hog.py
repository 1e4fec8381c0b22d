"""Run a command with every core kept busy: ``python -m tests.cpu_hog -- make test``.

A test that passes only when the machine is kind (a worker that gets scheduled in time,
a reply that comes before a fixed sleep ends) fails here first, as it would one day in
CI. One spinning process per core (``--cores`` to choose), at normal priority: the suite
gets about half of each core, as when two suites share a machine. The hogs end with the
command, whatever its outcome.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys


def _spin() -> None:
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"]
    if not command:
        parser.error("give the command to run after --")
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.cores)]
    for hog in hogs:
        hog.start()
    print(f"cpu_hog: {len(hogs)} spinning processes; running {' '.join(command)}", flush=True)
    try:
        return subprocess.call(command)
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.join(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
