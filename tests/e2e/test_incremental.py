"""Incremental (scheduled) harvests: only what is new since the last successful run."""

from __future__ import annotations

import pytest
import pyvo

from obsharvest import incremental
from obsharvest.flows.harvest import harvest_params
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.conftest import TARGET_DEC, TARGET_RA

from .test_harvest_flow import params_for, read_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_time_moves_on_and_only_new_images_are_harvested(tmp_path):
    with EmbeddedArchive(ArchiveSettings(n_visits=30)) as archive:
        params = params_for(archive, tmp_path)
        first = harvest_params(params, incremental=True)
        assert first.ok and first.stored_images > 0
        (state,) = incremental.states(str(tmp_path)).values()
        watermark = state.watermarks["seed"]

        archive.add_visits(40)
        service = pyvo.dal.TAPService(archive.tap_url)
        query = (
            f"SELECT obs_publisher_did, t_min, t_max FROM ivoa.ObsCore WHERE CONTAINS(POINT('ICRS', "
            f"{TARGET_RA}, {TARGET_DEC}), s_region) = 1 AND lsst_band = 'i' AND calib_level = 2"
        )
        everything = service.search(query).to_table()
        new = {
            d
            for d, t in zip(everything["obs_publisher_did"], everything["t_min"], strict=True)
            if t > watermark
        }
        assert new, "the added visits must cover the target"
        truth = archive.truth(TARGET_RA, TARGET_DEC)
        archive.reset_stats()
        second = harvest_params(params, incremental=True)
        stats = archive.stats()
        # only the new window was queried: new images plus at most the boundary one
        assert new <= {r["obs_publisher_did"] for r in read_rows(tmp_path)}
        assert second.images - len(new) <= 1 and second.reused == second.images - len(new)
        assert second.downloaded == len(new & truth)
        assert stats["files"]["status"].get(206, 0) == len(new)  # one header read per new image
        rows = read_rows(tmp_path)
        assert len(rows) == len({(r["obsh_target_name"], r["obs_publisher_did"]) for r in rows})
        assert {r["obs_publisher_did"] for r in rows if r["obsh_stored"]} == {
            r["obs_publisher_did"] for r in rows
        } & truth

        archive.reset_stats()
        third = harvest_params(params, incremental=True)
        assert third.downloaded == 0 and third.stored_images == third.reused
        assert "files" not in archive.stats() and "datalink" not in archive.stats()
        (later,) = incremental.states(str(tmp_path)).values()
        assert later.watermarks["seed"] > watermark and len(later.runs) == 3
        # each run added a file and folded: one file, whatever the number of runs
        assert len(list((tmp_path / "state" / "incremental").glob("*.json"))) == 1


def test_watermark_does_not_advance_when_images_failed(tmp_path):
    from obsharvest.simarchive.faults import FaultPlan

    with EmbeddedArchive(ArchiveSettings(n_visits=30)) as archive:
        archive.set_faults(FaultPlan.parse(["files.drop=1"]))
        params = params_for(
            archive, tmp_path, retry={"attempts": 2, "initial_wait": 0.01, "max_wait": 0.02}
        )
        failed = harvest_params(params, incremental=True)
        assert not failed.ok
        assert incremental.states(str(tmp_path)) == {}
        archive.set_faults(FaultPlan())
        again = harvest_params(params, incremental=True)
        assert again.ok and again.stored_images == len(
            {r["obs_publisher_did"] for r in read_rows(tmp_path)}
            & archive.truth(TARGET_RA, TARGET_DEC)
        )
