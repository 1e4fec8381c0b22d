"""Reading the target list, as a task (its own line in the UI, with the count)."""

from __future__ import annotations

from prefect import get_run_logger, task

from obsharvest.models import Target
from obsharvest.targets import targets_for


@task(name="load-targets")
def load_targets(
    path: str | None,
    ra: float | str | None = None,
    dec: float | str | None = None,
    radius: float | None = None,
    name: str | None = None,
) -> list[Target]:
    targets = targets_for(path, ra=ra, dec=dec, radius=radius, name=name)
    get_run_logger().info("%d targets", len(targets))
    return targets
