"""The ``obsharvest`` command line.

User errors (bad options, a port in use) end in one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence


def _archive(args: argparse.Namespace) -> int:
    from simarchive.faults import FaultPlan
    from simarchive.server import ArchiveSettings, EmbeddedArchive

    try:
        settings = ArchiveSettings(
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
        )
    except ValueError as exc:
        print(f"obsharvest archive: {exc}", file=sys.stderr)
        return 2
    try:
        archive = EmbeddedArchive(settings)
    except OSError as exc:
        print(
            f"obsharvest archive: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    print(f"TAP service: {archive.tap_url}", flush=True)
    print(f"Datalink:    {archive.datalink_url}", flush=True)
    print(f"ObsCore:     {len(archive.tables['ivoa.obscore'])} rows (seed {args.seed})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        archive.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        archive.jobs.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="obsharvest", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    archive = commands.add_parser(
        "archive",
        help="run the embedded ObsTAP archive (TAP, UWS, Datalink, FITS) in the foreground",
    )
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
        "files.bandwidth=5e6, total.bandwidth=2e7 (repeatable)",
    )
    archive.set_defaults(func=_archive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
