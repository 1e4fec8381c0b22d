"""The ``obsharvest`` command line.

User errors (bad options, a port in use) end in one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from obsharvest.errors import Interrupted, UserError
from obsharvest.simarchive import cli as archive_cli

if TYPE_CHECKING:
    from obsharvest.models import Summary
    from obsharvest.storage.output import Output

    from .params import HarvestParams

    # what ArgumentParser.add_subparsers returns
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

T = TypeVar("T")


def _quiet_prefect(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def _overrides(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """The command line as dotted overrides, and where each came from (``--dec -97``,
    ``--set query.maxrec=0``), so an error blames the argument, not the profile."""
    from .config import parse_override

    _refuse_flags(args)
    overrides: dict = {}
    sources: dict[str, str] = {}

    def put(key: str, value, label: str) -> None:
        overrides[key] = value
        sources[key] = label

    if args.targets:
        put("targets", args.targets, f"--targets {args.targets}")
    if args.ra is not None or args.dec is not None:
        given = f"--ra {args.ra}" if args.ra is not None else f"--dec {args.dec}"
        put("ra", args.ra, f"--ra {args.ra}" if args.ra is not None else given)
        put("dec", args.dec, f"--dec {args.dec}" if args.dec is not None else given)
    if args.radius is not None:
        put("radius", args.radius, f"--radius {args.radius:g}")
    if args.output:
        put("output_url", args.output, f"--output {args.output}")
    if args.tap:  # one or more services, named from their hosts; no token unless named
        given = " ".join(f"--tap {u}" for u in args.tap)
        put("services", [{"tap_url": u} for u in args.tap], given)
    if args.plan:
        put("plan", True, "--plan")
    for name in ("bands", "subtypes"):
        value = getattr(args, name)
        if value:
            values = [v.strip() for v in value.split(",") if v.strip()]
            put(f"constraints.{name}", values, f"--{name} {value}")
    if args.calib_levels:
        levels = [v.strip() for v in args.calib_levels.split(",")]
        put("constraints.calib_levels", levels, f"--calib-levels {args.calib_levels}")
    for item in args.set:
        key, value = parse_override(item)
        put(key, value, f"--set {item}")
    return overrides, sources


def _refuse_flags(args: argparse.Namespace) -> None:
    """Flags that contradict each other or mean nothing, refused in one line: a position
    with a target file would harvest one and silently drop the other."""
    from obsharvest.errors import ConfigError

    if args.targets and (args.ra is not None or args.dec is not None):
        given = " ".join(
            f"--{name} {getattr(args, name)}"
            for name in ("ra", "dec")
            if getattr(args, name) is not None
        )
        raise ConfigError(
            f"--targets {args.targets} and {given}: give a target file or one position, not both"
        )
    if not args.progress_interval >= 0:  # NaN too
        raise ConfigError(
            f"--progress-interval {args.progress_interval:g}: must be 0 (no progress lines) "
            "or more seconds"
        )


def _on_stop_signal(signum: int, _frame) -> None:
    """First SIGINT/SIGTERM: stop cleanly (what is decided is written, the summary
    printed). A second one: leave at once."""
    from obsharvest.runtime import stopping

    if stopping.request_for_signal(signum):
        print(
            f"obsharvest run: {signal.Signals(signum).name}: stopping; writing what is "
            "decided (signal again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
    else:
        _leave(128 + signum)


def _leave(code: int) -> None:
    """Exit now, without waiting for threads stuck in network reads that a stopped run
    abandoned, but after the exit handlers (the temporary Prefect server is stopped
    there, so no process outlives the run)."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        atexit._run_exitfuncs()
    finally:
        os._exit(code)


def _run(args: argparse.Namespace) -> int:
    from obsharvest.runtime import stopping

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _on_stop_signal)
    code = _run_harvest(args)
    if stopping.requested():
        _leave(stopping.exit_code(code))
    return code


def _run_harvest(args: argparse.Namespace) -> int:
    from obsharvest.runtime import stopping

    _quiet_prefect(args.verbose)
    from .config import ConfigError, build_params

    try:
        overrides, sources = _overrides(args)
        params = build_params(args.config, overrides, sources)
    except ConfigError as exc:
        print(f"obsharvest run: {_one_line(exc)}", file=sys.stderr)
        return 2
    from .preflight import preflight

    try:  # before anything starts (its Prefect API, an archive): a user error costs seconds
        params = preflight(params)  # the flow takes these checked parameters as they are
    except (UserError, stopping.Interrupted) as exc:
        if stopping.requested():  # a check cut short by the stop is no finding
            return _stopped_early("during the preflight (checking the service and the outputs)")
        print(f"obsharvest run: {_one_line(exc)}", file=sys.stderr)
        return 2
    from .prefect_api import api_for_run

    try:
        with api_for_run(stopping.requested):
            return _report(args, params)
    except RuntimeError:
        if not stopping.requested():
            raise
        return _stopped_early("while starting the temporary Prefect API")


def _stopped_early(when: str, what: str = "nothing was queried or written") -> int:
    """A run stopped before its flow could sum up (before it began, or past
    ``STOP_BOUND``): an empty summary on stdout, as every stopped run prints one, and one
    line on stderr saying what was not done."""
    from obsharvest.models import Summary
    from obsharvest.report import text
    from obsharvest.runtime import stopping

    print(text(Summary(run_id="-", interrupted=stopping.describe())))
    print(f"obsharvest run: {stopping.describe()} {when}: {what}; rerun", file=sys.stderr)
    return 1


STOP_BOUND = 6.0  # seconds the CLI waits for a stopping flow before it leaves without it


def _flow_off_the_main_thread(run: Callable[[], T]) -> T | None:
    """``run()`` (the flow) in a thread of its own, the main thread waiting on it.

    Python runs signal handlers in the main thread, and a flow run there installs
    Prefect's SIGTERM handler, which raises ``TerminationSignal`` wherever the flow is (a
    Parquet write, the summary, between shards): the run crashed and its summary was lost.
    Off the main thread Prefect installs none (``signal.signal`` is refused there), so the
    CLI's handler keeps both signals, and both only ask the run to stop: the flow notices
    between steps and ends with what it decided. A flow still running ``STOP_BOUND``
    seconds after the stop is left behind: None (the exit code still says the signal).
    """
    from concurrent.futures import Future
    from concurrent.futures import TimeoutError as FutureTimeout

    from obsharvest.runtime import stopping

    future: Future[T] = Future()
    context = contextvars.copy_context()

    def body() -> None:
        try:
            future.set_result(context.run(run))
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            future.set_exception(exc)

    threading.Thread(target=body, name="harvest-flow", daemon=True).start()
    while True:
        try:
            return future.result(timeout=0.2)
        except FutureTimeout:
            if stopping.past_grace(STOP_BOUND):
                return None


def _report(args: argparse.Namespace, params: HarvestParams) -> int:
    """Run the flow and print its summary; the exit code says how it ended."""
    from obsharvest.runtime import stopping

    from .harvest import run_here
    from .progress_bars import progress_display

    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_UserErrorNoise())
    if stopping.requested():  # stopped during start-up: nothing was begun
        return _stopped_early("before the harvest began")
    with progress_display(
        terminal=sys.stderr.isatty(), verbose=args.verbose, interval=args.progress_interval
    ):
        state = _flow_off_the_main_thread(lambda: run_here(params))
    if state is None:
        return _stopped_early(
            f"and the run did not end within {STOP_BOUND:g} s",
            "its summary is lost; what was written before is kept",
        )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException) and stopping.requested():
        return _stopped_early(
            f"and the run ended without a summary ({_one_line(outcome)})",
            "what was written before is kept",
        )
    if isinstance(outcome, UserError):
        print(f"obsharvest run: {_one_line(outcome)}", file=sys.stderr)
        return 2
    if isinstance(outcome, BaseException):
        raise outcome  # a bug, not the user's doing: show the traceback
    return _print_summary(outcome)


def _print_summary(summary: Summary) -> int:
    """Print a flow's summary and, when it is not all done, one line on stderr saying
    what to do; the exit code: 0 all done, 1 interrupted or with failures."""
    from obsharvest.report import text

    print(text(summary))
    if summary.interrupted:
        print(
            f"obsharvest run: {summary.interrupted}; what was decided is written; "
            "rerun to complete the rest",
            file=sys.stderr,
        )
        return 1
    if summary.failures:
        where = (
            "see above and the Parquet 'obsh_failure' column"
            if summary.metadata_written
            else "see above; nothing was written"
        )
        print(
            f"obsharvest run: {len(summary.failures)} images or targets failed ({where}); "
            "rerun to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


class _UserErrorNoise(logging.Filter):
    """Keep Prefect's failure tracebacks for user errors off the console: the CLI says it
    in one line. A Failed state a task returned (a query batch past its retries, an image
    batch with failures) was already said in the task's or the flow's own lines: Prefect's
    repr of it would say it again. A task ended by a stop (``Interrupted``) is no failure
    to trace: the stop and what it left undone are said once, at the end. (Prefect's own
    API log handler still records everything.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (UserError, Interrupted)):
            return False
        message = record.getMessage()
        return not (
            record.levelno >= logging.ERROR
            and ("Finished in state Failed" in message or "Task run failed with state" in message)
        )


def _one_line(exc: BaseException) -> str:
    from obsharvest.net.redact import redact

    return redact(" ".join(str(exc).split()) or type(exc).__name__)


def _serve(args: argparse.Namespace) -> int:
    _quiet_prefect(args.verbose)
    from .serve import serve_deployments

    try:
        serve_deployments(args.prefect_file, only=args.only)
    except (FileNotFoundError, UserError) as exc:
        print(f"obsharvest serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Rename an output's Parquet columns to the current naming (``obsharvest.metadata``)."""
    from obsharvest.metadata import MetadataStore

    try:
        done = MetadataStore(_existing_output(args.output)).migrate()
    except (UserError, OSError) as exc:
        print(f"obsharvest migrate: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"{len(done)} metadata files migrated" if done else "nothing to migrate")
    return 0


def _compact(args: argparse.Namespace) -> int:
    """Drop the superseded rows of an output's Parquet, and fold its incremental state
    (``MetadataStore.compact``, ``incremental.fold``): safe while harvests write into it."""
    from obsharvest import incremental
    from obsharvest.metadata import MetadataStore

    try:
        output = _existing_output(args.output)
        done = MetadataStore(output).compact()
        folded = incremental.fold(output)
    except (UserError, OSError) as exc:
        print(f"obsharvest compact: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(
        f"metadata: {done.files_before} files -> {done.files_after}, "
        f"{done.rows_before - done.rows_after} superseded rows dropped"
        + (f", {len(done.temps_removed)} stale temporaries removed" if done.temps_removed else "")
        + (f"; incremental state: {len(folded)} files folded" if folded else "")
    )
    return 0


def _existing_output(url: str) -> Output:
    """The output at ``url``, opened once for the command; a mistyped output is refused,
    not reported as an output with nothing to do."""
    from obsharvest.storage.output import Output

    output = Output(url)
    if not output.fs.exists(output.root):
        raise UserError(f"{url}: no such output (the path does not exist)")
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="obsharvest", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"obsharvest {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    archive_cli.add_parser(commands)  # the embedded archive's own subcommand
    _add_run(commands)
    _add_params(commands)
    _add_discover(commands)
    _add_serve(commands)
    _add_migrate(commands)
    _add_compact(commands)
    for sub in commands.choices.values():  # `obsharvest run -v` as `obsharvest -v run`
        # SUPPRESS: not given after the command, the flag given before it stands
        sub.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )
    return parser


def _add_run(commands: Commands) -> None:
    run = commands.add_parser("run", help="harvest images for a target list (or one position)")
    _harvest_arguments(run)
    run.add_argument(
        "--progress-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (cron, workers): a progress line every SECONDS "
        "instead of bars (default 30; 0: none)",
    )
    run.set_defaults(func=_run)


def _add_params(commands: Commands) -> None:
    params = commands.add_parser(
        "params",
        help="print the validated parameters of a run as the flow's JSON parameters, e.g. "
        "for prefect deployment run --params",
    )
    _harvest_arguments(params)
    params.set_defaults(func=_params, progress_interval=0.0)


def _add_discover(commands: Commands) -> None:
    from .discover import add_parser  # its own module: the registry code loads when it runs

    add_parser(commands)


def _params(args: argparse.Namespace) -> int:
    """``{"params": {...}}``: what ``run`` would harvest, checked (no network) and
    printed, never a token (tokens are not parameters)."""
    import json

    from .config import ConfigError, build_params

    try:
        overrides, sources = _overrides(args)
        params = build_params(args.config, overrides, sources)
    except ConfigError as exc:
        print(f"obsharvest params: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps({"params": params.model_dump(mode="json", exclude_defaults=True)}))
    return 0


def _harvest_arguments(run: argparse.ArgumentParser) -> None:
    """What a harvest is given on the command line (``run`` and ``params``)."""
    run.add_argument("--config", default=None, help="YAML profile, e.g. config/local.yaml")
    run.add_argument("--targets", help="target list: CSV, ECSV, Parquet or VOTable (path or URL)")
    run.add_argument("--ra", help="one target: right ascension (deg or hh:mm:ss)")
    run.add_argument("--dec", help="one target: declination (deg or dd:mm:ss)")
    run.add_argument("--radius", type=float, help="deg: harvest images overlapping this circle")
    run.add_argument(
        "--tap",
        action="append",
        default=[],
        metavar="URL",
        help="an ObsTAP service's TAP URL, instead of the profile's (repeatable: several "
        "services in one run, into one output)",
    )
    run.add_argument("--output", help="output URL: metadata/ Parquet and, by default, fits/")
    run.add_argument(
        "--plan",
        "--dry-run",
        action="store_true",
        help="query and verify, write the Parquet, download nothing",
    )
    run.add_argument("--bands", help="comma-separated bands, e.g. i,r")
    run.add_argument("--subtypes", help="comma-separated dataproduct_subtype values")
    run.add_argument("--calib-levels", help="comma-separated calib_level values, e.g. 2,3")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any parameter, e.g. query.maxrec=5000 (repeatable)",
    )


def _add_serve(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve the deployments of deployments/prefect.yaml without a work pool"
    )
    serve.add_argument("--prefect-file", default="deployments/prefect.yaml")
    serve.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help="serve only these deployments (repeatable)",
    )
    serve.set_defaults(func=_serve)


def _add_migrate(commands: Commands) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="rename the Parquet columns of an output written by an older obsharvest "
        "(a harvest into it does the same)",
    )
    migrate.add_argument("output", help="the output URL given to `run --output`")
    migrate.set_defaults(func=_migrate)


def _add_compact(commands: Commands) -> None:
    compact = commands.add_parser(
        "compact",
        help="rewrite an output's Parquet without superseded rows, in fewer files "
        "(safe while harvests write into it)",
    )
    compact.add_argument("output", help="the output URL given to `run --output`")
    compact.set_defaults(func=_compact)


def _version() -> str:
    """The installed distribution's version (its metadata, not a constant to keep in step)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("obsharvest")
    except PackageNotFoundError:
        return "unknown (not installed)"


_ANGLE_FLAGS = ("--ra", "--dec")
_NEGATIVE_ANGLE = re.compile(r"^-\s*[\d.]")


def angle_arguments(argv: Sequence[str]) -> list[str]:
    """``--dec -37:00:00`` as ``--dec=-37:00:00``. argparse takes an argument that starts
    with '-' for an option unless it looks like a plain negative number, so the normal
    declination of a southern field, in sexagesimal, would be refused."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if item in _ANGLE_FLAGS and nxt is not None and _NEGATIVE_ANGLE.match(nxt):
            out.append(f"{item}={nxt}")
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from .crashes import crash_traces

    crash_traces()
    from obsharvest.net.redact import install_redaction

    install_redaction()  # a token or signed URL quoted by any log line or traceback: masked
    parser = build_parser()
    args = parser.parse_args(angle_arguments(sys.argv[1:] if argv is None else argv))
    from .quiet import quiet_library_noise

    quiet_library_noise(verbose=args.verbose)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
