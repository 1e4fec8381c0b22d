"""``obsharvest archive``: the embedded archive run in the foreground.

The test bench owns its subcommand: its options are the archive's settings, so they live
beside ``ArchiveSettings``. The CLI (``flows/cli.py``) only registers it with
``add_parser``. Importing this module is cheap: the server, the sky and the ADQL engine
are imported when the command runs, not when ``obsharvest --help`` builds its parser.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from obsharvest.simarchive.server import ArchiveSettings

    # what ArgumentParser.add_subparsers returns
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    """Add the ``archive`` subcommand (its options and its handler) to ``commands``."""
    archive = commands.add_parser(
        "archive",
        help="run the embedded ObsTAP archive (TAP, UWS, Datalink, FITS) in the foreground",
    )
    # in this order: it is the order of the usage line and of --help
    _add_listen_and_sky(archive)
    _add_signing_and_profile(archive)
    _add_behaviour(archive)
    _add_access(archive)
    _add_publisher(archive)
    archive.set_defaults(func=_archive)
    return archive


def _add_listen_and_sky(archive: argparse.ArgumentParser) -> None:
    archive.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    archive.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    archive.add_argument("--seed", type=int, default=42, help="seed of the synthetic sky")
    archive.add_argument("--visits", type=int, default=120, help="number of visits in the field")
    archive.add_argument(
        "--binning",
        type=int,
        default=10,
        help="pixel binning: 1 gives real 4072x4000 calexps (~200 MB each)",
    )
    archive.add_argument(
        "--cache-dir",
        default=None,
        help="keep generated FITS files here across runs (default: a temp dir)",
    )


def _add_signing_and_profile(archive: argparse.ArgumentParser) -> None:
    archive.add_argument(
        "--signed-host",
        default="localhost",
        help="host name used in signed file URLs (default localhost)",
    )
    archive.add_argument(
        "--url-lifetime",
        type=float,
        default=3600.0,
        help="seconds a signed file URL stays valid (default 3600)",
    )
    archive.add_argument(
        "--profile",
        choices=["generic", "rubin"],
        default="generic",
        help="rubin: behave like the RSP (no INTERSECTS, sync time limit, ...)",
    )
    archive.add_argument(
        "--naming",
        choices=["dp02", "dp1"],
        default="dp02",
        help="data naming: DP0.2 (lsst.calexp, ...) or DP1 (lsst.visit_image, ...)",
    )


def _add_behaviour(archive: argparse.ArgumentParser) -> None:
    """What makes the archive hard to harvest: a token, slow or failing queries, faults."""
    archive.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on TAP, Datalink and SODA",
    )
    archive.add_argument(
        "--sync-timeout",
        type=float,
        default=None,
        help="seconds after which sync queries fail (rubin default 55)",
    )
    archive.add_argument(
        "--query-delay",
        type=float,
        default=0.0,
        help="seconds every query takes (to exercise async and timeouts)",
    )
    archive.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT.KIND=VALUE",
        help="inject a fault, e.g. files.drop=0.2, tap.unavailable=0.05, "
        "datalink.throttled=0.1, files.truncate=0.02, *.latency=0.02, "
        "files.bandwidth=5e6, total.bandwidth=2e7, data.head_stall=1, "
        "files.range_ignored=0.5, datalink.stall=0.1, files.stall_body=0.1 (repeatable)",
    )


def _add_access(archive: argparse.ArgumentParser) -> None:
    """How the archive points to its files and reads the standards, as real servers differ."""
    archive.add_argument(
        "--access-style",
        choices=["datalink", "product", "direct", "unlabelled", "descriptor"],
        default="datalink",
        help="what ObsCore access_url is: a Datalink URL with ID (RSP), a product URL "
        "redirecting to Datalink (DaCHS), the file (MAST/IRSA), the file without "
        "access_format, or NULL with Datalink only via the service descriptor",
    )
    archive.add_argument(
        "--datalink-multi-id",
        choices=["all", "first"],
        default="all",
        help="first: Datalink answers only the first of several IDs (old services)",
    )
    archive.add_argument(
        "--datalink-order",
        choices=["grouped", "shuffled"],
        default="grouped",
        help="shuffled: rows of a multi-ID Datalink reply come out of ID order",
    )
    archive.add_argument(
        "--dialect",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="read the standards as a real server does, e.g. capabilities=untyped, files=fz, "
        "s_region_dialect=union (repeatable; simarchive/dialect.py lists them)",
    )
    archive.add_argument(
        "--registry-entry",
        action="append",
        nargs=3,
        default=[],
        metavar=("IVOID", "TAP_URL", "OBSCORE"),
        help="also serve RegTAP's rr tables describing this TAP service (TAP_URL 'self': "
        "this archive); OBSCORE: datamodel, utype, both or none (repeatable)",
    )


def _add_publisher(archive: argparse.ArgumentParser) -> None:
    """Whose DIDs the images carry: a mirror serves another archive's images as its own."""
    archive.add_argument(
        "--publisher",
        default=None,
        metavar="AUTHORITY",
        help="act as a mirror: the same images (same --seed) under this IVOA authority's "
        "obs_publisher_did (e.g. mirror.example), the original one in obs_creator_did",
    )
    archive.add_argument(
        "--creator-did",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve ObsCore's obs_creator_did (default: only with --publisher)",
    )


def _archive(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; 2 and one line on stderr for a bad option or a
    port in use."""
    from obsharvest.simarchive.server import EmbeddedArchive

    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"obsharvest archive: {exc}", file=sys.stderr)
        return 2
    # SIGTERM as Ctrl-C, from before the archive exists: its data directory goes at stop
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        archive = EmbeddedArchive(settings)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(
            f"obsharvest archive: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    try:
        print(f"TAP service: {archive.tap_url}", flush=True)
        print(f"Datalink:    {archive.datalink_url}", flush=True)
        rows = len(archive.tables["ivoa.obscore"])
        print(f"ObsCore:     {rows} rows (seed {args.seed})", flush=True)
        archive.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        archive.stop()  # also removes its temporary data directory (70-260 MB)
    return 0


def _settings(args: argparse.Namespace) -> ArchiveSettings:
    """The command line as one ``ArchiveSettings``; a bad value is a ``ValueError``."""
    from obsharvest.simarchive.dialect import Dialect
    from obsharvest.simarchive.faults import FaultPlan
    from obsharvest.simarchive.registry import RegistryEntry
    from obsharvest.simarchive.server import ArchiveSettings

    return ArchiveSettings(
        host=args.host,
        port=args.port,
        seed=args.seed,
        n_visits=args.visits,
        binning=args.binning,
        cache_dir=args.cache_dir,
        signed_host=args.signed_host,
        url_lifetime=args.url_lifetime,
        profile=args.profile,
        naming=args.naming,
        token=args.token,
        sync_timeout=args.sync_timeout,
        query_delay=args.query_delay,
        faults=FaultPlan.parse(args.fault, seed=args.seed),
        access_style=args.access_style,
        datalink_multi_id=args.datalink_multi_id,
        datalink_order=args.datalink_order,
        dialect=Dialect.parse(args.dialect),
        registry=tuple(
            RegistryEntry(ivoid, None if url == "self" else url, form)
            for ivoid, url, form in args.registry_entry
        ),
        publisher=args.publisher,
        creator_did=args.creator_did,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
