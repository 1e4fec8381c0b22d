"""Fault plans: parsing and the reproducibility of which request fails."""

from __future__ import annotations

import pytest

from obsharvest.simarchive.faults import FaultPlan, FaultSpec, draw


def test_parse_endpoint_kinds_and_total_bandwidth():
    plan = FaultPlan.parse(
        ["files.drop=0.2", "tap.unavailable=0.05", "*.latency=0.01", "total.bandwidth=2e7"], seed=3
    )
    assert plan.spec_for("files").drop == 0.2
    assert plan.spec_for("tap_sync").unavailable == 0.05  # family match
    assert plan.spec_for("datalink").latency == 0.01  # wildcard
    assert plan.spec_for("files").latency == 0.0  # an explicit endpoint wins over '*'
    assert plan.total_bandwidth == 2e7 and plan.seed == 3


@pytest.mark.parametrize(
    "item, words",
    [
        ("files.drop", "endpoint.kind=number"),
        ("files.explode=0.1", "unknown kind 'explode'"),
        ("files.drop=1.5", "between 0 and 1"),
        ("files.latency=-1", "must not be negative"),
        ("nodot=0.1", "endpoint.kind=number"),
    ],
)
def test_parse_rejects_bad_items_naming_them(item, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        FaultPlan.parse([item])


def test_draws_are_reproducible_and_uniform():
    first = [draw(7, "files", n, "drop") for n in range(2000)]
    assert first == [draw(7, "files", n, "drop") for n in range(2000)]
    assert first != [draw(8, "files", n, "drop") for n in range(2000)]
    rate = sum(x < 0.2 for x in first) / len(first)
    assert 0.16 < rate < 0.24


def test_default_spec_is_inactive():
    assert not FaultSpec().active
    assert FaultSpec(drop=0.1).active


def test_parse_hanging_and_range_kinds():
    plan = FaultPlan.parse(
        ["files.head_stall=1", "data.range_ignored=0.5", "tap.stall=0.1", "*.stall_body=0.2"]
    )
    assert plan.spec_for("files").head_stall == 1.0
    assert plan.spec_for("data").range_ignored == 0.5
    assert plan.spec_for("tap_async").stall == 0.1
    assert plan.spec_for("product").stall_body == 0.2
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan.parse(["files.stall=2"])
