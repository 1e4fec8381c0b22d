"""``obsharvest discover``: which archives have images of these targets?

Asks a RegTAP registry for the TAP services with ObsCore (``obsharvest.registry.search``),
counts each one's images for the targets in parallel within ``--timeout``
(``obsharvest.registry.probe``), prints one line per service, and with
``--write-profile`` writes the services that answered as a profile's ``services:`` list,
which ``obsharvest run --config`` takes as it is. Importing this module is cheap: the
registry and query code is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from obsharvest.registry import FoundService, Probe

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_TIMEOUT = 30.0
HEADER = ("service", "ivoid", "rows", "images per band", "time")


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    discover = commands.add_parser(
        "discover",
        help="find ObsCore services in the IVOA Registry and count their images of the targets",
    )
    discover.add_argument(
        "--targets", required=True, help="target list: CSV, ECSV, Parquet or VOTable"
    )
    discover.add_argument(
        "--registry",
        default=None,
        metavar="URL",
        help="TAP URL of a RegTAP service (default: pyvo's, IVOA_REGISTRY or GAVO's)",
    )
    discover.add_argument(
        "--write-profile",
        default=None,
        metavar="PATH",
        help="write the services that answered as a profile (services: list) for run --config",
    )
    discover.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"time each service (and the registry) has to answer (default {DEFAULT_TIMEOUT:g})",
    )
    discover.set_defaults(func=discover_command)
    return discover


def discover_command(args: argparse.Namespace) -> int:
    """0 when at least one service answered, 1 when none did, 2 for a user's mistake
    (unreadable targets, a bad or unreachable registry, an unwritable profile)."""
    from obsharvest.errors import UserError
    from obsharvest.registry import find_obscore_services, probe_all
    from obsharvest.targets import read_targets

    if not args.timeout > 0:
        return _fail(f"--timeout {args.timeout:g} must be more than 0 seconds")
    try:
        targets = read_targets(args.targets)
        found = find_obscore_services(args.registry, timeout=args.timeout)
    except UserError as exc:
        return _fail(str(exc))
    probes = probe_all([s.tap_url for s in found], targets, timeout=args.timeout)
    print(format_table(found, probes))
    answered = sum(p.answered for p in probes)
    print(f"{answered} of {len(found)} ObsCore services answered for {len(targets)} targets")
    if args.write_profile and not answered:  # an empty services: list is no profile to run
        print(f"no service answered: {args.write_profile} not written")
    elif args.write_profile:
        try:
            write_profile(Path(args.write_profile), found, probes)
        except OSError as exc:
            return _fail(f"--write-profile {args.write_profile}: {exc.strerror or exc}")
        print(f"profile written: {args.write_profile} ({answered} services)")
    return 0 if answered else 1


def _fail(message: str) -> int:
    print(f"obsharvest discover: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _bands(probe: Probe) -> str:
    if not probe.bands:
        return "-"
    return " ".join(f"{band}:{n}" for band, n in sorted(probe.bands.items()))


def table_rows(found: Sequence[FoundService], probes: Sequence[Probe]) -> list[tuple[str, ...]]:
    """One row per service: the columns of ``HEADER``, and why it could not be asked."""
    from obsharvest.registry import service_names

    names = service_names([s.tap_url for s in found])
    out: list[tuple[str, ...]] = []
    for name, service, probe in zip(names, found, probes, strict=True):
        rows = "-" if probe.rows is None else f"{'~' if probe.approximate else ''}{probe.rows}"
        cells = (name, service.ivoid, rows, _bands(probe), f"{probe.seconds:.1f} s")
        out.append((*cells, f"not asked: {probe.problem}" if probe.problem else ""))
    return out


def format_table(found: Sequence[FoundService], probes: Sequence[Probe]) -> str:
    rows = table_rows(found, probes)
    if not rows:
        return "no TAP service with ObsCore in the registry"
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = []
    for row in [HEADER, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, *row[len(HEADER) :]]).rstrip())
    return "\n".join(lines)


def write_profile(path: Path, found: Sequence[FoundService], probes: Sequence[Probe]) -> None:
    """The services that answered, as a profile's ``services:`` list (name and tap_url
    only: what a run accepts); the ivoid and count of each go in a comment."""
    import yaml

    from obsharvest.registry import service_names

    names = service_names([s.tap_url for s in found])
    chosen = [
        (name, service, probe)
        for name, service, probe in zip(names, found, probes, strict=True)
        if probe.answered
    ]
    lines = ["# written by obsharvest discover: the ObsCore services that answered", "services:"]
    for name, service, probe in chosen:
        entry = yaml.safe_dump(
            [{"name": name, "tap_url": service.tap_url}], default_flow_style=False, sort_keys=False
        )
        lines.append(f"  # {service.ivoid}: {probe.rows} rows")
        lines.extend(f"  {line}" for line in entry.splitlines())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
