"""``obsharvest serve``: the deployments of ``deployments/prefect.yaml`` via Prefect's
``serve`` — the no-work-pool route, one long-running process that schedules and runs.

The YAML stays the single description of the deployments; this reads its names,
schedules, parameters, tags and concurrency and turns each into ``harvest.to_deployment``.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import yaml

from obsharvest.errors import ConfigError


def deployment_specs(prefect_file: str | Path, only: list[str] | None = None) -> list[dict]:
    path = Path(prefect_file)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    specs = [d for d in data.get("deployments", []) if d.get("entrypoint", "").endswith(":harvest")]
    if only:
        unknown = set(only) - {d["name"] for d in specs}
        if unknown:
            raise ConfigError(f"{path}: no deployment named {', '.join(sorted(unknown))}")
        specs = [d for d in specs if d["name"] in only]
    if not specs:
        raise ConfigError(f"{path}: no deployments of the harvest flow")
    return specs


def serve_deployments(prefect_file: str | Path, only: list[str] | None = None) -> None:
    """Serve until stopped. A fatal signal here or in a flow run prints every thread's
    stack (``PYTHONFAULTHANDLER`` is passed on to the flow-run processes)."""
    from prefect import serve
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.client.schemas.schedules import construct_schedule
    from prefect.deployments.runner import RunnerDeployment

    from .crashes import crash_traces
    from .harvest import harvest

    crash_traces()  # flow runs are subprocesses of this one: they inherit the setting
    deployments: list[RunnerDeployment] = []
    for spec in deployment_specs(prefect_file, only):
        schedules = [
            construct_schedule(cron=s["cron"], timezone=s.get("timezone"))
            if "cron" in s
            else construct_schedule(interval=s["interval"])
            for s in spec.get("schedules") or []
        ]
        limit = spec.get("concurrency_limit")
        if isinstance(limit, dict):
            limit = ConcurrencyLimitConfig(
                limit=limit["limit"], collision_strategy=limit.get("collision_strategy", "ENQUEUE")
            )
        deployment = harvest.to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags"),
            parameters=spec.get("parameters") or {},
            schedules=schedules or None,
            concurrency_limit=limit,
        )
        # called here, outside any event loop: the deployment, not a coroutine
        deployments.append(cast(RunnerDeployment, deployment))
    serve(*deployments)
