"""The Prefect-native way to use more machines: shards of a target list as separate flow
runs of a deployment, picked up by however many workers serve its work pool.

Each shard runs under its own prefix (its gallery and report are its own) and writes its
FITS into the shared storage (same keys, atomic writes: an image found by two shards is
stored once); when every shard is done, the rows each shard run wrote are appended to the
output's ``metadata/`` (append-only, like any run's: other runs may write there at the
same time). The parent flow holds no slot while it waits.
"""

from __future__ import annotations

import io
import posixpath
import time
from typing import Annotated, cast

import pyarrow.compute as pc
from astropy.table import Table
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Failed
from pydantic import Field

from obsharvest.errors import ConfigError
from obsharvest.metadata import MetadataStore
from obsharvest.storage.output import Output
from obsharvest.targets import read_targets

from .params import HarvestParams
from .preflight import with_storage_credentials
from .settings import timeouts

SHARD_DIR = "shards"


def shard_targets(targets: list, shards: int) -> list[list]:
    """Round-robin, so shards are even however the list is sorted."""
    groups = [targets[i::shards] for i in range(max(1, min(shards, len(targets))))]
    return [g for g in groups if g]


def _write_csv(fs, path: str, group: list) -> None:
    table = Table(
        {
            "name": [t.name for t in group],
            "ra": [t.ra for t in group],
            "dec": [t.dec for t in group],
            "radius": [t.radius if t.radius else float("nan") for t in group],
        }
    )
    buffer = io.StringIO()
    table.write(buffer, format="ascii.csv")
    with fs.open(path, "w") as fh:
        fh.write(buffer.getvalue())


def _wait(runs: list, timeout: float) -> list:
    """Wait for the shard flow runs to finish (polling the API; no slot is held)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            finals = [client.read_flow_run(run.id) for run in runs]
            if all(r.state and r.state.is_final() for r in finals) or time.monotonic() > deadline:
                return finals
            time.sleep(2)


@flow(name="harvest-sharded")
def harvest_sharded(
    params: HarvestParams,
    shards: Annotated[int, Field(ge=1, le=1000, description="flow runs to split it into")] = 2,
    deployment: str = "harvest/manual",
    timeout: float = 3600,
):
    """Split ``params.targets`` into shards, run each as a flow run of ``deployment``
    (the same parameters but its targets and its own output prefix), merge."""
    logger = get_run_logger()
    if params.targets is None:
        raise ConfigError("harvest-sharded splits a target list: give targets, not ra and dec")
    everything = read_targets(params.targets, default_radius=params.radius)
    own = with_storage_credentials(params)  # this flow's own reads and writes only
    out = params.output_url.rstrip("/")
    output = Output(out, own.output_storage_options, timeouts(params))  # opened once
    fs, shard_root = output.fs, output.path(SHARD_DIR)
    fs.makedirs(shard_root, exist_ok=True)
    runs = []
    for i, group in enumerate(shard_targets(everything, shards)):
        path = posixpath.join(shard_root, f"targets-{i}.csv")
        _write_csv(fs, path, group)
        shard = params.model_copy(
            update={
                "targets": output.uri(path),
                "output_url": f"{out}/{SHARD_DIR}/{i}",
                "storage": params.storage.model_copy(update={"url": params.storage_url}),
            }
        )
        # called from this (sync) flow: the flow run, not a coroutine (async_dispatch)
        run = cast(
            FlowRun,
            run_deployment(
                deployment,
                timeout=0,
                as_subflow=True,
                parameters={"params": shard.model_dump(mode="json")},
            ),
        )
        runs.append(run)
        logger.info("shard %d: %d targets → flow run %s", i, len(group), run.name)
    finals = _wait(runs, timeout)
    failed = [r for r in finals if not r.state or not r.state.is_completed()]
    merged = MetadataStore(output)
    for i, final in enumerate(finals):
        rows = MetadataStore(output.under(SHARD_DIR, str(i))).read()
        if rows is None:
            continue
        # only this shard run's rows: the shard's prefix keeps those of earlier sharded runs,
        # which are in the output already
        mine = rows.filter(pc.field("obsh_run_id") == str(final.id))
        merged.append(mine, run_id=f"shard-{i}-{final.id}")
    if failed:
        return Failed(
            message=f"{len(failed)} of {len(finals)} shards did not complete: "
            + ", ".join(r.name for r in failed)
        )
    return {"shards": len(runs), "flow_runs": [str(r.id) for r in finals]}
