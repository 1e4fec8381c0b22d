"""Beyond the notebook: cutouts, mask-aware verdicts and quicklooks, through the flow."""

from __future__ import annotations

import json

import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from matplotlib.image import imread

from obsharvest.flows.harvest import harvest_params
from obsharvest.simarchive.sky.pixels import amp_slices
from tests.conftest import TARGET_DEC, TARGET_RA

from .test_harvest_flow import params_for, read_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")


def local(uri: str) -> str:
    assert uri.startswith("file://")
    return uri.removeprefix("file://")


def test_cutout_mode_stores_a_cutout_per_target_with_the_right_wcs(archive, tmp_path):
    params = params_for(archive, tmp_path, products={"mode": "cutout", "cutout_radius": 0.01})
    summary = harvest_params(params)
    assert summary.ok, summary.failures
    rows = read_rows(tmp_path)
    stored = [r for r in rows if r["obsh_stored"]]
    truth = archive.truth(TARGET_RA, TARGET_DEC)
    assert {r["obs_publisher_did"] for r in stored} == {
        r["obs_publisher_did"] for r in rows
    } & truth
    target = SkyCoord(TARGET_RA, TARGET_DEC, unit="deg")
    for row in stored:
        path = local(row["obsh_storage_uri"])
        assert path.endswith("/seed.fits")  # {collection}/{subtype}/{band}/{obs_id}/{target}.fits
        assert row["obsh_cutout_circle"] == f"{TARGET_RA!r} {TARGET_DEC!r} 0.01"
        with fits.open(path) as hdul:
            ny, nx = hdul[1].data.shape
            x, y = WCS(hdul[1].header).world_to_pixel(target)
            full = row["s_xel1"]
            assert nx < full  # a cutout, not the image
            # the target sits where the cut put it: the centre, unless clipped at an edge
            if row["obsh_pixel_x"] - nx / 2 > 0 and row["obsh_pixel_x"] + nx / 2 < full:
                assert abs(x - (nx - 1) / 2) <= 1.0
            assert -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5
    archive.reset_stats()
    again = harvest_params(params)
    assert (
        again.downloaded == 0 and "cutout" not in archive.stats() and "files" not in archive.stats()
    )


def test_mask_aware_verdict_flags_a_target_on_a_dead_amplifier(archive, tmp_path):
    calexp = next(
        p
        for p in archive.sky.products
        if p.subtype == "lsst.calexp"
        and archive.sky.image_context(p.id).recipe.dead_amp is not None
    )
    rows, cols = amp_slices(
        (calexp.naxis2, calexp.naxis1), archive.sky.image_context(calexp.id).recipe.dead_amp
    )
    x, y = (cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2
    ra, dec = WCS(archive.sky.celestial_header(calexp.id)).all_pix2world([[x, y]], 0)[0]
    where = f"obs_publisher_did = '{calexp.obs_publisher_did}'"
    common = {"ra": float(ra) % 360, "dec": float(dec), "constraints": {"extra_where": where}}
    plain = harvest_params(params_for(archive, tmp_path / "plain", **common))
    assert (
        read_rows(tmp_path / "plain")[0]["obsh_verdict"] == "contains" and plain.stored_images == 1
    )
    strict = harvest_params(
        params_for(archive, tmp_path / "strict", verification={"mask": True}, **common)
    )
    row = read_rows(tmp_path / "strict")[0]
    assert (
        row["obsh_verdict"] == "no_data"
        and not row["obsh_stored"]
        and "NO_DATA" in row["obsh_verdict_reason"]
    )
    assert strict.stored_images == 0


def test_quicklooks_and_gallery(archive, tmp_path):
    summary = harvest_params(params_for(archive, tmp_path, products={"quicklook": True}))
    assert summary.ok
    stored = [r for r in read_rows(tmp_path) if r["obsh_stored"]]
    assert stored and all(r["obsh_quicklook_uri"] for r in stored)
    png = imread(local(stored[0]["obsh_quicklook_uri"]))
    assert png.shape[0] > 200 and png.std() > 0
    index = (tmp_path / "gallery" / "index.html").read_text()
    assert (tmp_path / "gallery" / "seed-footprint.png").exists()
    assert "seed" in index and ".png" in index and "<script" not in index
    link = stored[0]["obsh_quicklook_uri"].split(str(tmp_path) + "/", 1)[1]
    assert f"../{link}" in index  # relative links: the output folder can move
    assert json.dumps(summary.run_id)
