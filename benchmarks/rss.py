"""Peak memory of one obsharvest run, measured in a process of its own.

``python -m benchmarks.rss TAP_URL TARGETS_CSV OUTPUT`` runs the harvest against an
archive served by the parent (so the server's memory is not counted) and prints one JSON
line: peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``), the RSS once everything is
imported, and what was stored. The parent passes its Prefect API URL in the environment.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RssRun:
    peak_mb: float
    imported_mb: float  # RSS after imports, before the run: the floor of any peak
    stored: int
    stored_bytes: int
    file_mb: float  # mean size of a stored file


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(tap_url: str, targets_csv: Path, output: Path, env: dict[str, str]) -> RssRun:
    """Run the child and read its JSON line."""
    cmd = [sys.executable, "-m", "benchmarks.rss", tap_url, str(targets_csv), str(output)]
    root = Path(__file__).resolve().parent.parent
    full_env = {**os.environ, **env, "PYTHONPATH": str(root)}
    done = subprocess.run(
        cmd, cwd=root, env=full_env, capture_output=True, text=True, timeout=600, check=False
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"RSS child failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(lines[-1])
    return RssRun(**data)


def main(argv: list[str]) -> int:
    tap_url, targets_csv, output = argv
    import obsharvest.flows.harvest  # noqa: F401 - import everything before the floor is read

    from .harvest_run import run_harvest

    imported = _current_rss_mb()
    run = run_harvest(tap_url, Path(targets_csv), Path(output))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    sizes = [p.stat().st_size for p in Path(output, "fits").rglob("*.fits")]
    result = RssRun(
        peak_mb=peak,
        imported_mb=imported,
        stored=len(run.stored),
        stored_bytes=sum(sizes),
        file_mb=(sum(sizes) / len(sizes) / 1e6) if sizes else 0.0,
    )
    print(json.dumps(result.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
