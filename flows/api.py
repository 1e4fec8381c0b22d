"""obsharvest for scripts and notebooks: one call runs a whole harvest in this process.

What an RSP notebook user calls instead of their query → Datalink → header → save loop::

    from obsharvest import harvest
    done = harvest("targets.csv", service="https://data.lsst.cloud/api/tap", output="out")
    done.summary.stored_images, done.parquet

The call builds the same validated parameters as the command line (a profile, then
what the call says), runs the same checks first, and runs the same Prefect flow: on the
Prefect API the environment names (``PREFECT_API_URL``), else on a temporary one started
and stopped by obsharvest -- no server for the user to start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obsharvest.errors import ConfigError
from obsharvest.models import Summary, Target

Targets = str | Path | Sequence[Target] | Sequence[Mapping[str, Any]] | Any  # Any: a Table


@dataclass(frozen=True)
class Harvest:
    """What a harvest returns: its summary and where its Parquet dataset is."""

    summary: Summary
    parquet: str  # the metadata dataset (a directory of Parquet files), e.g. out/metadata
    storage_options: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """Every target queried and every image decided (``summary.failures`` says why not)."""
        return self.summary.ok and not self.summary.interrupted

    def table(self):
        """The rows of this output, current view (a ``pyarrow.Table``; empty: None)."""
        from obsharvest.metadata import MetadataStore
        from obsharvest.storage.output import Output

        output = Output(self.parquet.rsplit("/", 1)[0], self.storage_options)
        return MetadataStore(output).read()

    def __str__(self) -> str:
        from obsharvest.report import text

        return text(self.summary)


def harvest(
    targets: Targets = None,
    service: str | Mapping[str, Any] | None = None,
    output: str | None = None,
    *,
    profile: str | Path | None = None,
    ra: float | str | None = None,
    dec: float | str | None = None,
    radius: float | None = None,
    plan: bool = False,
    incremental: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> Harvest:
    """Harvest the images that truly contain each target; return the summary and Parquet.

    ``targets``: a target list (CSV/ECSV/Parquet/VOTable path or URL), or the targets
    themselves (``Target`` records, mappings with name/ra/dec[/radius], or an astropy
    Table with those columns); or give ``ra`` and ``dec`` for one position.
    ``service``: a TAP URL, or the ``service`` section of a profile as a mapping (e.g.
    ``{"tap_url": ..., "token_env": "ACCESS_TOKEN"}``, ``{"embedded": {}}``).
    ``output``: where ``metadata/`` (Parquet) and ``fits/`` go. ``settings``: any other
    parameter by its dotted key (``{"query.maxrec": 5000, "constraints.bands": ["i"]}``).
    A bad value raises :class:`~obsharvest.errors.UserError` with one line naming it.
    """
    with _target_file(targets) as target_file:
        overrides, sources = _overrides(
            target_file, service, output, ra, dec, radius, plan, incremental, settings
        )
        return _run(profile, overrides, sources)


def plan(targets: Targets = None, service=None, output=None, **kwargs: Any) -> Harvest:
    """:func:`harvest` as a dry run: query and verify, write the Parquet, download nothing
    (``summary.planned_bytes`` says what a real run would fetch)."""
    return harvest(targets, service, output, plan=True, **kwargs)


def _overrides(
    target_file, service, output, ra, dec, radius, plan, incremental, settings
) -> tuple[dict[str, Any], dict[str, str]]:
    """The call's arguments as dotted overrides of the profile, each with its source."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(key: str, value: Any, label: str) -> None:
        values[key] = value
        sources[key] = label

    if target_file is not None:
        put("targets", target_file, "harvest(targets=...)")
    for key, value in (("ra", ra), ("dec", dec), ("radius", radius), ("output_url", output)):
        if value is not None:
            put(key, value, f"harvest({'output' if key == 'output_url' else key}={value!r})")
    if isinstance(service, str):
        put("service", {"tap_url": service}, f"harvest(service={service!r})")
    elif service is not None:
        put("service", dict(service), "harvest(service=...)")
    if plan:
        put("plan", True, "harvest(plan=True)")
    if incremental:
        put("incremental", True, "harvest(incremental=True)")
    for key, value in (settings or {}).items():
        put(key, value, f"harvest(settings[{key!r}])")
    return values, sources


def _run(profile, overrides: dict[str, Any], sources: dict[str, str]) -> Harvest:
    # before Prefect is imported: its settings are read from the environment then
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from .config import build_params
    from .prefect_api import api_for_run
    from .preflight import preflight, with_storage_credentials

    params = preflight(build_params(profile, overrides, sources))
    with api_for_run():
        from .harvest import harvest_params

        summary = harvest_params(params)
    options = with_storage_credentials(params).output_storage_options
    return Harvest(summary, summary.metadata_url, options)


@contextlib.contextmanager
def _target_file(targets: Targets) -> Iterator[str | None]:
    """A path for ``targets``: as given, or the in-memory targets written to a temporary
    ECSV file for the length of the run (the run reads and checks it like any list)."""
    if targets is None or isinstance(targets, str | Path):
        yield None if targets is None else str(targets)
        return
    table = _as_table(targets)
    with tempfile.TemporaryDirectory(prefix="obsharvest-targets-") as tmp:
        path = Path(tmp) / "targets.ecsv"
        table.write(path, format="ascii.ecsv")
        yield str(path)


def _as_table(targets: Any):
    from astropy.table import Table

    if isinstance(targets, Table):
        return targets
    rows = [_row(t) for t in targets]
    if not rows:
        raise ConfigError("harvest(targets=...): no targets given")
    names = ["name", "ra", "dec"] + (["radius"] if any("radius" in r for r in rows) else [])
    return Table(
        {n: [r.get(n) if r.get(n) is not None else float("nan") for r in rows] for n in names}
    )


def _row(target: Any) -> dict[str, Any]:
    if isinstance(target, Target):
        out = {"name": target.name, "ra": target.ra, "dec": target.dec}
        return out | ({"radius": target.radius} if target.radius else {})
    if isinstance(target, Mapping):
        return dict(target)
    raise ConfigError(
        f"harvest(targets=...): {type(target).__name__} is not a target: give Target "
        "records, mappings with name, ra, dec, an astropy Table or a target file"
    )
