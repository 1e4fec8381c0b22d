"""The harvest flow: targets → ObsCore → Datalink → WCS check → object storage → Parquet.

Thin Prefect layer over the pure steps in ``tasks/``: a task per batch of targets (the
queries) and per batch of images (Datalink, header reads, downloads), never one per image.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyvo
from astropy.table import Table, vstack
from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner
from pyvo.dal import DALQueryError

from tasks import assemble
from tasks.adql import AdqlValueError, Constraints
from tasks.datalink import DatalinkAuthError, DatalinkResolver
from tasks.http import ServiceSession, resolve_token
from tasks.images import ImageOutcome, ImageSettings, ImageWork, process_images
from tasks.metadata import MetadataStore
from tasks.models import Target
from tasks.obscore import QueryError, QueryOptions, Strategy, probe_features, query_targets
from tasks.retry import RetryPolicy, one_line
from tasks.storage import ObjectStore
from tasks.targets import TargetError, read_targets, single_target

from . import progress
from .params import HarvestParams

log = logging.getLogger(__name__)
# Errors that are the user's to fix: they end the run; anything else fails only its batch.
USER_ERRORS = (TargetError, AdqlValueError, DatalinkAuthError, QueryError, DALQueryError)


@dataclass(frozen=True)
class Connection:
    """How to reach the service during this run (the token stays out of parameters)."""

    tap_url: str
    token: str | None
    token_hosts: tuple[str, ...]

    def session(self, pool: int = 16) -> ServiceSession:
        return ServiceSession(self.token, [self.tap_url, *self.token_hosts], pool=pool)


def _retry(params: HarvestParams) -> RetryPolicy:
    r = params.retry
    return RetryPolicy(
        attempts=r.attempts,
        initial_wait=r.initial_wait,
        max_wait=r.max_wait,
        deadline=r.deadline_seconds,
    )


def _constraints(params: HarvestParams) -> Constraints:
    c = params.constraints
    start, end = c.mjd_range
    return Constraints(
        bands=tuple(c.bands),
        subtypes=tuple(c.subtypes),
        calib_levels=tuple(c.calib_levels),
        t_min=start,
        t_max=end,
        extra_where=c.extra_where,
        band_column=params.service.band_column,
    )


@task(name="load-targets")
def load_targets(params: HarvestParams) -> list[Target]:
    if params.targets:
        targets = read_targets(params.targets, default_radius=params.radius)
    else:
        targets = [single_target(params.ra, params.dec, params.radius, params.target_name)]
    get_run_logger().info("%d targets", len(targets))
    return targets


@task(name="query-obscore", task_run_name="query-{label}")
def query_batch(
    params: HarvestParams, conn: Connection, targets: list[Target], label: str
) -> Table:
    session = conn.session()
    service = pyvo.dal.TAPService(conn.tap_url, session=session)
    retry = _retry(params)
    options = QueryOptions(
        mode=params.query.mode,
        maxrec=params.query.maxrec,
        deadline=params.query.deadline_seconds,
        retry=retry,
    )
    features = probe_features(service, retry)
    strategy = Strategy(
        kind=params.query.strategy,
        batch_size=params.query.batch_size,
        prefilter_radius=params.query.prefilter_radius,
    )
    queries: list[str] = []
    rows = query_targets(
        service, targets, _constraints(params), strategy, features, options, on_query=queries.append
    )
    get_run_logger().info(
        "%d targets: %d queries, %d (target, image) rows", len(targets), len(queries), len(rows)
    )
    progress.advance("query", len(targets))
    return rows


@task(name="process-images", task_run_name="images-{label}")
def image_batch(
    params: HarvestParams, conn: Connection, works: list[ImageWork], label: str
) -> list[ImageOutcome]:
    c = params.concurrency
    session = conn.session(pool=max(c.datalink_workers, 4))
    resolver = DatalinkResolver(
        session, batch_size=c.datalink_batch, workers=c.datalink_workers, retry=_retry(params)
    )
    store = ObjectStore(params.storage_url, params.storage_options)
    settings = ImageSettings(
        verification=params.verification.mode,
        margin_px=params.verification.margin_px,
        block_size=params.verification.header_block_size,
        plan=params.plan,
        verify_workers=c.verify_workers,
        download_workers=c.download_workers,
        retry=_retry(params),
    )
    outcomes = process_images(
        works,
        resolver,
        store,
        settings,
        on_done=lambda o: progress.advance(
            "images", 1, o.stored.size if o.stored and o.downloaded else 0
        ),
    )
    failed = [o for o in outcomes if o.failure]
    logger = get_run_logger()
    for outcome in failed[:20]:
        logger.warning("image %s failed: %s", outcome.key, outcome.failure)
    logger.info(
        "%d images: %d stored, %d failed",
        len(works),
        sum(1 for o in outcomes if o.stored),
        len(failed),
    )
    return outcomes


@task(name="write-metadata")
def write_metadata(
    params: HarvestParams,
    rows: Table,
    targets: dict[str, Target],
    outcomes: dict[str, ImageOutcome],
    run_id: str,
) -> list[str]:
    if len(rows) == 0:
        return []
    table = assemble.metadata_rows(rows, targets, outcomes, run_id)
    return MetadataStore(params.output_url, params.output_storage_options).merge(table)


def preflight(params: HarvestParams) -> None:
    """Check what can be checked before any work starts: the target list and the query
    values. Raises the same user errors the flow would, without a flow run."""
    if params.targets:
        read_targets(params.targets, default_radius=params.radius)
    else:
        single_target(params.ra, params.dec, params.radius, params.target_name)
    _constraints(params).clauses()


def _chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@contextlib.contextmanager
def _service(params: HarvestParams) -> Iterator[Connection]:
    """The connection for this run; starts the embedded archive when the profile asks."""
    svc = params.service
    token = resolve_token(env=svc.token_env, secret_block=svc.token_secret_block)
    if svc.embedded is None:
        yield Connection(svc.tap_url, token, tuple(svc.extra_token_hosts))
        return
    from simarchive.server import ArchiveSettings, EmbeddedArchive

    e = svc.embedded
    settings = ArchiveSettings(
        port=e.port,
        seed=e.seed,
        n_visits=e.n_visits,
        binning=e.binning,
        profile=e.profile,
        naming=e.naming,
    )
    with EmbeddedArchive(settings) as archive:
        yield Connection(archive.tap_url, token, tuple(svc.extra_token_hosts))


def run_harvest(params: HarvestParams, run_id: str) -> assemble.Summary:
    """The harvest as plain sequential calls of the tasks (Prefect runs them as tasks)."""
    logger = get_run_logger()
    with _service(params) as conn:
        targets = load_targets(params)
        by_name = {t.name: t for t in targets}
        progress.start("query", len(targets))
        futures = [
            query_batch.submit(params, conn, chunk, f"{i + 1}")
            for i, chunk in enumerate(_chunks(targets, params.concurrency.targets_per_task))
        ]
        tables, query_failures = [], []
        for future, chunk in zip(
            futures, _chunks(targets, params.concurrency.targets_per_task), strict=True
        ):
            try:
                tables.append(future.result())
            except USER_ERRORS:
                raise
            except Exception as exc:  # retries exhausted: these targets are missing, say why
                reason = f"ObsCore query failed: {one_line(exc)}"
                logger.error("%d targets not queried: %s", len(chunk), reason)
                query_failures += [(f"target {t.name}", reason) for t in chunk]
        tables = [t for t in tables if len(t)]
        rows = vstack(tables, metadata_conflicts="silent") if tables else Table()
        metadata = MetadataStore(params.output_url, params.output_storage_options)
        priors = assemble.priors_from(metadata.read())
        works = assemble.image_works(rows, by_name, priors, band_column=params.service.band_column)
        logger.info("%d (target, image) rows, %d unique images", len(rows), len(works))
        progress.start("images", len(works))
        batches = list(_chunks(works, params.concurrency.images_per_task))
        futures = [
            image_batch.submit(params, conn, batch, f"{i + 1}-of-{len(batches)}")
            for i, batch in enumerate(batches)
        ]
        outcomes: dict[str, ImageOutcome] = {}
        for future in futures:
            for outcome in future.result():
                outcomes[outcome.key] = outcome
        paths = write_metadata(params, rows, by_name, outcomes, run_id) if len(rows) else []
        summary = assemble.summarize(
            rows, works, outcomes, run_id, band_column=params.service.band_column, plan=params.plan
        )
        summary.failures = query_failures + summary.failures
        summary.metadata_url = params.output_url.rstrip("/") + "/metadata"
        summary.storage_url = params.storage_url
        logger.info("metadata written: %d files", len(paths))
        return summary


@flow(name="harvest", task_runner=ThreadPoolTaskRunner(max_workers=2), persist_result=False)
def harvest(params: HarvestParams) -> assemble.Summary:
    """Harvest images containing each target from an ObsTAP service into object storage."""
    from prefect.runtime import flow_run

    run_id = str(flow_run.id or uuid.uuid4())
    summary = run_harvest(params, run_id)
    from .report import publish

    publish(summary)
    return summary


def summary_dict(summary: assemble.Summary) -> dict:
    from dataclasses import asdict

    data = asdict(summary)
    data["false_positive_rate"] = summary.false_positive_rate
    data["ok"] = summary.ok
    return data
