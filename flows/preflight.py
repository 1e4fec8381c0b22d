"""Everything cheap, checked before the expensive part: a user error costs seconds, not a
run. Prefect-free but for the blocks a profile names (read through ``flows/blocks.py``):
the CLI runs it before it starts anything (its Prefect API, the embedded archive) and
hands the flow the checked parameters; a flow given unchecked ones (a deployment run)
runs it first thing. Once per run either way; the targets are read here, once.

Checked, in this order, each failure one line naming what and where (the profile key, the
``--set`` argument, the flag or the Prefect parameter the value came from):

1. the inputs: the target list (or position), the query values, what each mode needs
   (cutout mode: a radius for every target; Dask: its packages), an AWS credentials block;
2. the service, for a ``tap_url``: a token when the profile says the service needs one
   (``service.token_required``), then ``GET {tap_url}/capabilities`` with the run's
   token -- it must be a VOSI capabilities document with a TAP capability -- and, when a
   token is sent, ``GET {tap_url}/async?LAST=1`` (the UWS job list): the RSP serves
   capabilities to anyone (Phalanx's ``cadc-tap`` anonymous ingress covers
   ``availability``, ``capabilities`` and ``resource-caps``), so only a request behind
   authentication tells whether the token is accepted, and a job list runs no query;
3. the output locations: a small probe object written and removed with the run's
   credentials, in ``{output_url}/metadata`` (the Parquet) and, unless it is a plan,
   ``storage.url`` (the FITS). Runs started together into one new output probe at once:
   each writes a probe object of its own (a uuid in its name) and removes only that;
   directories are created idempotently and kept (the run writes there next, and another
   run may already be writing in a directory this probe created: removing it again made a
   concurrent run's probe fail with "no such directory").

No query is sent: capabilities and the job list are the only requests to the service.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import posixpath
import re
import uuid
from typing import Any

from obsharvest.errors import (
    PreflightError,
    ServiceRefusedError,
    TargetError,
    TransientError,
)
from obsharvest.models import Target
from obsharvest.net.credentials import is_s3, merged
from obsharvest.net.http import ServiceSession
from obsharvest.net.replies import refused, said_by
from obsharvest.net.retry import RetryPolicy, is_transient, one_line
from obsharvest.query.adql import Constraints
from obsharvest.runtime import workers
from obsharvest.storage.output import METADATA_DIR, Output
from obsharvest.targets import read_targets, single_target

from .blocks import aws_storage_options
from .config import source_of
from .params import HarvestParams, Service
from .service import token_of

log = logging.getLogger(__name__)
PROBE_PREFIX = ".obsharvest-probe-"


def constraints_of(params: HarvestParams, service: Service | None = None) -> Constraints:
    """The query constraints the parameters ask for, of ``service`` (default: the first):
    its band column, and its own ``extra_where`` ANDed with the run's."""
    service = service or params.all_services[0]
    c = params.constraints
    start, end = c.mjd_range
    wheres = [w for w in (c.extra_where, service.extra_where) if w]
    extra = " AND ".join(f"({w})" for w in wheres) if len(wheres) > 1 else next(iter(wheres), None)
    return Constraints(
        bands=tuple(c.bands),
        subtypes=tuple(c.subtypes),
        calib_levels=tuple(c.calib_levels),
        t_min=start,
        t_max=end,
        extra_where=extra,
        band_column=service.band_column,
    )


def preflight(params: HarvestParams, *, network: bool = True) -> HarvestParams:
    """Check the inputs, then (``network``) the service and the output locations; the
    parameters back, carrying the targets read (``checked_targets``), so the run that
    follows in this process neither checks nor reads them again. Raises a
    :class:`~obsharvest.errors.UserError` (one line). A stop (signal, deadline) during
    the network checks raises ``Interrupted`` within ``workers.STOP_GRACE`` seconds: the
    CLI then says nothing was begun."""
    if params.checked_targets is not None:
        return params
    if not network:
        return checked(params, check_inputs(params))
    # in daemon threads, waited on with the stop: a signal during a read the service (or a
    # targets URL) never answers ends the wait in a second or two, not after its timeouts
    targets = workers.call(lambda: check_inputs(params), name="preflight-inputs")
    workers.call(lambda: check_service(params), name="preflight-service")
    workers.call(lambda: check_storage(params), name="preflight-storage")
    return checked(params, targets)


def checked(params: HarvestParams, targets: list[Target]) -> HarvestParams:
    """``params`` with the targets the preflight read (a copy: the private attribute is
    carried by ``model_copy``, never serialised)."""
    out = params.model_copy()
    out._checked = list(targets)
    return out


# -- 1. inputs -------------------------------------------------------------------------


def check_inputs(params: HarvestParams) -> list[Target]:
    """The targets, the query values and what the chosen modes need; returns the targets."""
    if params.targets is not None:
        targets = read_targets(params.targets, default_radius=params.radius)
    else:
        # HarvestParams: without a target file, both ra and dec are given
        assert params.ra is not None and params.dec is not None
        try:
            targets = [single_target(params.ra, params.dec, params.radius, params.target_name)]
        except TargetError as err:  # "target: dec 95.0 ...": say where the value came from
            raise TargetError(
                source_of(params, err.column or "ra"), err.problems, err.count
            ) from None
    constraints_of(params).clauses()
    _check_modes(params, targets)
    if params.storage.aws_credentials_block:
        aws_storage_options(params.storage.aws_credentials_block)
    return targets


def _check_modes(params: HarvestParams, targets: list[Target]) -> None:
    if params.products.mode == "cutout" and not params.products.cutout_radius:
        bare = [t for t in targets if not t.radius]
        if bare:
            first = bare[0]
            where = (
                f"{params.targets}: row {first.row} ({first.name!r})"
                if params.targets and first.row
                else f"target {first.name!r}"
            )
            more = f" and {len(bare) - 1} more targets" if len(bare) > 1 else ""
            raise PreflightError(
                f"{source_of(params, 'products.mode')}: cutout mode needs a radius, and "
                f"{where}{more} has none: set products.cutout_radius (deg), --radius, or a "
                "radius column"
            )
    if params.execution.runner == "dask":
        for module, extra in (("prefect_dask", "dask"), ("distributed", "dask")):
            if importlib.util.find_spec(module) is None:
                raise PreflightError(
                    f"{source_of(params, 'execution.runner')}: runner dask needs {module}: "
                    f"pip install 'obsharvest[{extra}]'"
                )
        cluster = params.execution.dask_cluster_class
        if cluster:
            module = cluster.rpartition(".")[0]
            if not module or importlib.util.find_spec(module.split(".")[0]) is None:
                raise PreflightError(
                    f"{source_of(params, 'execution.dask_cluster_class')}: cannot import "
                    f"{module or cluster!r} for {cluster!r}"
                )


# -- 2. the service --------------------------------------------------------------------


def _quick(params: HarvestParams) -> RetryPolicy:
    """The run's retry policy, cut short: a check should fail in seconds, not minutes."""
    r = params.retry
    return RetryPolicy(
        attempts=min(r.attempts, 3),
        initial_wait=min(r.initial_wait, 0.5),
        max_wait=min(r.max_wait, 2.0),
        deadline=min(r.deadline_seconds, 30.0),
        log_level=logging.DEBUG,  # the check's one line says it all
    )


def check_service(params: HarvestParams) -> None:
    """Each service: a token when one is needed, a TAP service at ``tap_url``, the token
    accepted. Of several services, one that cannot be reached now does not stop the run
    (a warning; the run asks it, and reports its targets if it still does not answer):
    the others are harvested. A missing or refused token always stops it."""
    if params.service is not None:
        _check_one(params, params.service, "service")
        return

    context = contextvars.copy_context()  # a token's Secret block is read from this API

    def check(numbered: tuple[int, Service]) -> PreflightError | None:
        i, service = numbered
        try:
            context.copy().run(_check_one, params, service, f"services.{i}")
        except PreflightError as exc:
            if "cannot reach" not in str(exc):
                raise
            return exc
        return None

    # all at once (each is a round trip or two, and a silent one waits out its timeout);
    # the warnings and the first error in the order the services are listed
    checks = workers.run_all(check, list(enumerate(params.services)), len(params.services))
    for unreachable in workers.results(checks, lambda _: None):
        if unreachable is not None:
            log.warning("%s; the other services go on", unreachable)


def _check_one(params: HarvestParams, svc: Service, key: str) -> None:
    tap_url = svc.tap_url
    if svc.embedded is not None or not tap_url:
        return  # started by the run itself: nothing to ask yet
    token, source = token_of(params, svc)
    where = source_of(params, f"{key}.tap_url")
    if svc.token_required and not token:
        raise PreflightError(
            f"{source_of(params, f'{key}.token_required')}: {tap_url} needs a token "
            f"and {source} is not set: export {svc.token_env}=<token> (or name a Prefect "
            "Secret block in service.token_secret_block)"
        )
    session = ServiceSession(
        token,
        [tap_url, *svc.extra_token_hosts],
        timeout=(params.retry.connect_timeout, min(params.retry.read_timeout, 30.0)),
        token_source=source,
    )
    from obsharvest.query.capabilities import read_tap_capability

    retry = _quick(params)
    with session:
        try:
            retry.call(lambda: read_tap_capability(session, tap_url), "TAP capabilities")
        except ServiceRefusedError as exc:
            raise type(exc)(f"{where}: {exc}", status=exc.status, url=exc.url) from None
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise PreflightError(
                f"{where}: cannot reach the TAP service {tap_url}: {transport_words(exc)}"
            ) from None
        if token:
            _check_token(session, tap_url, retry)


def _check_token(session: ServiceSession, tap_url: str, retry: RetryPolicy) -> None:
    """One request behind authentication that runs no query: the UWS job list."""
    url = f"{tap_url.rstrip('/')}/async"

    def ask() -> None:
        reply = session.get(url, params={"LAST": 1})
        if reply.status_code in (401, 403):
            ctype = reply.headers.get("Content-Type", "")
            raise refused(
                "TAP service",
                url,
                reply.status_code,
                reply.reason or "",
                said_by(reply.content, ctype),
                token_source=session.token_source,
                token_sent=True,
                cls=ServiceRefusedError,
            )
        if reply.status_code == 429 or reply.status_code >= 500:
            raise TransientError(f"{url} answered {reply.status_code}")
        # anything else (200, a service that lists no jobs: 404/405) says nothing of the token

    try:
        retry.call(ask, "TAP job list")
    except ServiceRefusedError:
        raise
    except Exception as exc:  # a service too busy to list jobs: the run will find out
        if not is_transient(exc):
            raise


def transport_words(exc: BaseException) -> str:
    """Why a request got no usable reply, in a few words (not urllib3's nested reprs)."""
    text = " ".join(str(e) for e in _chain(exc))
    names = {type(e).__name__ for e in _chain(exc)}
    for cause in _chain(exc):  # a requests exception keeps urllib3's reason in its args
        names |= {type(a).__name__ for a in getattr(cause, "args", ())}
        text += " " + " ".join(repr(a) for a in getattr(cause, "args", ()))
    if "NameResolutionError" in names or "Name or service not known" in text:
        return "the host name does not resolve"
    if "Connection refused" in text or "Connect call failed" in text:
        return "connection refused (nothing listens there)"
    if "ConnectTimeout" in names or "ConnectTimeoutError" in text:
        return "no connection within the connect timeout (retry.connect_timeout)"
    if "ReadTimeout" in names or "Read timed out" in text:
        return "no answer within the read timeout (retry.read_timeout)"
    if "SSLError" in names or "CERTIFICATE" in text:
        return f"TLS failed ({one_line(exc)[:160]})"
    return one_line(exc)[:200]


# -- 3. the output locations ------------------------------------------------------------


def with_storage_credentials(params: HarvestParams) -> HarvestParams:
    """``params`` with the AwsCredentials block's options merged into the s3:// locations'
    storage options. Done inside the run, so the secrets never become flow parameters
    (which the Prefect server stores and shows); explicit options win over the block's."""
    name = params.storage.aws_credentials_block
    if not name:
        return params
    base = aws_storage_options(name)
    update: dict[str, Any] = {}
    if is_s3(params.output_url):
        update["output_storage_options"] = merged(base, params.output_storage_options)
    own = params.storage.storage_options
    if is_s3(params.storage_url) and (own or not is_s3(params.output_url)):
        update["storage"] = params.storage.model_copy(update={"storage_options": merged(base, own)})
    return params.model_copy(update=update)


def check_storage(params: HarvestParams) -> None:
    """Write and remove a probe object where the Parquet and the FITS will go."""
    run = with_storage_credentials(params)
    timeout = (params.retry.connect_timeout, params.retry.read_timeout)
    metadata = params.output_url.rstrip("/") + "/" + METADATA_DIR
    probe(metadata, run.output_storage_options, source_of(params, "output_url"), timeout)
    if not params.plan:
        key = "storage.url" if params.storage.url else "output_url"
        probe(params.storage_url, run.storage_options, source_of(params, key), timeout)


def probe(url: str, options: dict[str, Any], source: str, timeout=(10.0, 60.0)) -> None:
    """Write and remove a small object under ``url`` with ``options``; one line if not.

    Safe with other runs probing the same new output at the same moment: the probe object's
    name is unique to this call, missing directories are made with ``exist_ok`` (another run
    may make them between our look and our mkdir), and nothing but our own probe object is
    ever removed (a directory made here may already hold another run's probe or files)."""
    try:
        where = Output(url, options, timeout)  # opened as the run will open it
    except (ImportError, ValueError) as exc:
        raise PreflightError(f"{source}: cannot open {url}: {one_line(exc)}") from None
    fs, root = where.fs, where.root
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    name = posixpath.join(root, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    written = False
    try:
        if local:
            _make_dirs(fs, root)
        fs.pipe_file(name, b"obsharvest write probe\n")
        written = True
        fs.rm_file(name)
        written = False
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line saying why
        why = _why_not(exc, url, local)
        if not local and isinstance(exc, (PermissionError, FileNotFoundError)):
            bucket = root.split("/", 1)[0]
            with contextlib.suppress(Exception):  # S3-compatible stores say "denied" for both
                if not fs.exists(bucket):
                    why = f"bucket {bucket!r} does not exist (or these credentials cannot see it)"
        raise PreflightError(f"{source}: cannot write to {url}: {why}") from None
    finally:
        if written:  # written but its removal failed: one more try, never a directory
            with contextlib.suppress(Exception):
                fs.rm_file(name)
        with contextlib.suppress(Exception):
            fs.invalidate_cache(root)


def _make_dirs(fs, root: str) -> None:
    """Create ``root`` and its missing parents, idempotently (``exist_ok``: runs at once
    make the same new directories). A file in the way is named."""
    path = root
    while path and not fs.exists(path):
        parent = posixpath.dirname(path)
        if parent == path:
            break
        path = parent
    if path and fs.exists(path) and not fs.isdir(path):
        raise NotADirectoryError(f"{path} is a file, not a directory")
    fs.makedirs(root, exist_ok=True)


def _why_not(exc: BaseException, url: str, local: bool = False) -> str:
    """Why a probe write failed, in words a user acts on."""
    import errno

    names = {type(e).__name__ for e in _chain(exc)}
    text = one_line(exc)
    if "NoCredentialsError" in names or "Unable to locate credentials" in text:
        return (
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE), output_storage_options, or storage.aws_credentials_block"
        )
    if "EndpointConnectionError" in names or "ConnectTimeoutError" in names:
        endpoint = re.search(r"https?://[^/\"\s]+", text)
        return f"cannot reach the storage endpoint {endpoint.group(0) if endpoint else ''}".strip()
    if isinstance(exc, NotADirectoryError):
        return str(exc) if "is a file" in str(exc) else "a part of the path is a file"
    if isinstance(exc, FileExistsError):
        return "a file is in the way of the directory"
    if isinstance(exc, IsADirectoryError):
        return "a directory is in the way of the probe object"
    if isinstance(exc, PermissionError):
        if local:
            return f"permission denied (not writable for this user: {exc.filename or url})"
        return "access denied (these credentials may not write there)"
    if isinstance(exc, FileNotFoundError):
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        return f"bucket {bucket!r} does not exist" if "://" in url else "no such directory"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return "read-only file system"
    if isinstance(exc, NotImplementedError):
        return "this file system cannot be written to"
    return transport_words(exc)


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


__all__ = [
    "PreflightError",
    "check_inputs",
    "check_service",
    "check_storage",
    "constraints_of",
    "preflight",
    "probe",
    "with_storage_credentials",
]
