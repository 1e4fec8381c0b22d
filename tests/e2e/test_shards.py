"""A run in shards writes what a run in one piece writes, and counts shared images once."""

from __future__ import annotations

import math

import pytest

from obsharvest.flows.harvest import harvest_params
from obsharvest.metadata import MetadataStore
from obsharvest.models import Target
from obsharvest.targets import in_sky_order
from tests.conftest import TARGET_DEC, TARGET_RA

from .test_harvest_flow import params_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Seven targets a few arcminutes apart: their images overlap, so shards of two share images.
OFFSETS = [
    (0.0, 0.0),
    (0.05, 0.02),
    (-0.04, 0.03),
    (0.02, -0.05),
    (0.08, 0.06),
    (-0.07, -0.02),
    (0.1, -0.08),
]


def _targets_csv(path):
    lines = ["name,ra,dec"]
    for i, (dra, ddec) in enumerate(OFFSETS):
        ra = TARGET_RA + dra / math.cos(math.radians(TARGET_DEC))
        lines.append(f"t{i},{ra:.6f},{TARGET_DEC + ddec:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _pairs(output):
    table = MetadataStore(str(output)).read()
    return {
        (r["obsh_target_name"], r["obs_publisher_did"]): (r["obsh_verdict"], r["obsh_stored"])
        for r in table.to_pylist()
    }


def test_shards_give_the_rows_and_counts_of_one_piece(archive, tmp_path):
    targets = _targets_csv(tmp_path / "targets.csv")
    whole = harvest_params(
        params_for(
            archive, tmp_path / "whole", targets=str(targets), ra=None, dec=None, target_name=None
        )
    )
    archive.reset_stats()
    sharded = harvest_params(
        params_for(
            archive,
            tmp_path / "sharded",
            targets=str(targets),
            ra=None,
            dec=None,
            target_name=None,
            execution={"shard_targets": 2},
        )
    )
    assert whole.ok and sharded.ok
    assert _pairs(tmp_path / "sharded") == _pairs(tmp_path / "whole")
    shared = {}
    for target, did in _pairs(tmp_path / "whole"):
        shared.setdefault(did, set()).add(target)
    assert any(len(t) > 1 for t in shared.values())  # the test means something
    # an image shared by two shards is one image, stored once, downloaded once
    assert sharded.images == whole.images == len(shared)
    assert sharded.stored_images == whole.stored_images
    assert sharded.downloaded == whole.downloaded
    assert sharded.downloaded_bytes == whole.downloaded_bytes
    assert sharded.by_subtype_band == whole.by_subtype_band
    assert [(t.name, t.rows, t.contains, t.stored) for t in sharded.targets] == [
        (t.name, t.rows, t.contains, t.stored) for t in whole.targets
    ]
    files = list((tmp_path / "sharded" / "metadata").rglob("*.parquet"))
    assert len(files) >= 4  # ceil(7 / 2) shards, each its own part


def test_sky_order_keeps_neighbours_together():
    targets = [
        Target("a", 10.0, -37.5),
        Target("b", 200.0, -37.2),
        Target("c", 10.1, 20.0),
        Target("d", 10.05, -37.4),
    ]
    assert [t.name for t in in_sky_order(targets)] == ["a", "d", "b", "c"]
