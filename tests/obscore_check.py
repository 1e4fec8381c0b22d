"""The check that a harvest's Parquet holds every ObsCore column of the archive it read,
with the archive's values: shared by the embedded-archive tests and the DaCHS interop
tests, so every archive is held to the same promise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pyvo
from astropy import units as u
from astropy.table import Table

OBSCORE_TABLE = "ivoa.obscore"  # TAP_SCHEMA spells it ivoa.ObsCore or ivoa.obscore


def parquet_files(output) -> list[Path]:
    """The output's Parquet files (each run adds its own; hidden temporaries left out)."""
    found = (Path(output) / "metadata").rglob("*.parquet")
    return sorted(p for p in found if not p.name.startswith("."))


def plain(value):
    """A VOTable cell as a plain Python value, as the Parquet holds it."""
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, np.ma.MaskedArray):
        return None if value.ndim == 0 and value.mask else [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def same(parquet, archive) -> bool:
    if isinstance(parquet, float) and isinstance(archive, float):
        return parquet == archive or (math.isnan(parquet) and math.isnan(archive))
    return parquet == archive


def obscore_columns(service: pyvo.dal.TAPService) -> dict[str, str | None]:
    """Column name -> unit of ivoa.ObsCore, as the archive's TAP_SCHEMA lists them."""
    listed = service.run_sync(
        "SELECT table_name, column_name, unit FROM TAP_SCHEMA.columns"
    ).to_table()
    return {
        str(r["column_name"]): plain(r["unit"]) or None
        for r in listed
        if str(r["table_name"]).lower() == OBSCORE_TABLE
    }


def assert_every_obscore_column_kept(tap_url: str, output, sample: int = 6, session=None) -> int:
    """Every column TAP_SCHEMA lists for ivoa.ObsCore is in the Parquet with its unit
    (read back by ``astropy.table.Table.read``) and holds the archive's value on sampled
    rows, compared with a direct TAP query for their IDs. Returns the columns checked."""
    service = pyvo.dal.TAPService(tap_url, session=session)
    columns = obscore_columns(service)
    assert len(columns) >= 20, sorted(columns)  # ObsCore 1.1 has 29 mandatory columns
    files = parquet_files(output)
    assert files, f"no Parquet under {output}/metadata"
    for path in files:
        names = pq.read_schema(path).names
        assert set(columns) <= set(names), f"{path}: missing {sorted(set(columns) - set(names))}"
        written = Table.read(path)
        for name, unit in columns.items():
            if unit:
                assert written[name].unit == u.Unit(unit, parse_strict="silent"), (name, unit)
    rows = ds.dataset(str(Path(output) / "metadata"), format="parquet").to_table().to_pylist()
    step = max(1, len(rows) // sample)
    picked = {r["obs_publisher_did"]: r for r in rows[::step][:sample]}
    ids = ", ".join("'" + did.replace("'", "''") + "'" for did in picked)
    direct = service.run_sync(
        f"SELECT * FROM ivoa.ObsCore WHERE obs_publisher_did IN ({ids})"
    ).to_table()
    assert len(direct) == len(picked)
    for row in direct:
        mine = picked[str(row["obs_publisher_did"])]
        for name in columns:
            theirs = plain(row[name])
            assert same(mine[name], theirs), (mine["obs_publisher_did"], name, mine[name], theirs)
    return len(columns)
