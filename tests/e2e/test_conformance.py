"""One harvest, every access convention: the same targets across every ``access_url``
style the embedded archive can publish, in both its profiles, checked against the truth.

Real archives disagree on what ObsCore's ``access_url`` is (a Datalink URL with an ID, a
product URL that redirects to Datalink, the file itself with or without
``access_format``, or nothing but the TAP result's Datalink service descriptor), and on
how their Datalink answers several IDs. Every case also carries the faults that real
servers show: HEAD never answered anywhere (GAVO DaCHS), and, in the ``rubin`` half,
``Range`` ignored on half the file requests, a Datalink that answers only the first of
several IDs and rows out of ID order. A harvest must store exactly the images whose
pixels contain a target, send no HEAD, and fetch nothing when run again.
"""

from __future__ import annotations

import logging

import pyarrow.dataset as ds
import pytest

from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.shared_files import shared

pytestmark = pytest.mark.usefixtures("prefect_harness")

STYLES = ("datalink", "product", "direct", "unlabelled", "descriptor")
PROFILES = ("generic", "rubin")
# the seed's position, a neighbour sharing some of its images, and one further out
TARGETS = (("seed", 62.0, -37.0), ("near", 62.05, -36.97), ("east", 62.4, -37.1))


def expected_route(style: str, profile: str) -> str:
    """The generic profile's results carry a Datalink descriptor that names the
    obs_publisher_did column, and a descriptor wins over the access_url (it batches);
    the RSP's descriptor names no column, so there the access_url is used."""
    if style in ("direct", "unlabelled"):
        return "direct" if style == "direct" else "sniffed-direct"
    if style == "descriptor" or profile == "generic":
        return "datalink-descriptor"
    return "datalink"


def _archive_settings(style: str, profile: str) -> ArchiveSettings:
    faults = ["*.head_stall=1"]  # a HEAD anywhere would hang the run (and fail the test)
    quirks = {}
    if profile == "rubin":
        faults += ["files.range_ignored=0.5", "data.range_ignored=0.5"]
        quirks = {"datalink_multi_id": "first", "datalink_order": "shuffled"}
    return ArchiveSettings(
        seed=7,
        n_visits=24,
        binning=10,
        profile=profile,
        access_style=style,
        faults=FaultPlan.parse(faults, seed=11),
        **quirks,
    )


def _params(archive: EmbeddedArchive, output, targets_csv) -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(targets_csv),
            "constraints": {"bands": ["i"], "calib_levels": [2]},
            "output_url": str(output),
            # small requests, so the Datalink batching and its fallbacks are exercised
            "concurrency": {"datalink_batch": 4},
            "retry": {"read_timeout": 20.0},
        }
    )


def _heads(stats: dict) -> int:
    return sum(s.get("methods", {}).get("HEAD", 0) for s in stats.values())


@pytest.fixture(scope="module")
def targets_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "targets.csv"
    path.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in TARGETS))
    return path


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.timeout(240)
def test_every_access_style_harvests_exactly_the_truth(style, profile, targets_csv, tmp_path):
    with EmbeddedArchive(shared(_archive_settings(style, profile))) as archive:
        truth = {name: archive.truth(ra, dec) for name, ra, dec in TARGETS}
        summary = harvest_params(_params(archive, tmp_path, targets_csv))
        first = archive.stats()
        assert summary.ok, summary.failures
        assert _heads(first) == 0, first

        rows = ds.dataset(str(tmp_path / "metadata"), format="parquet").to_table().to_pylist()
        assert rows
        for row in rows:
            did, name = row["obs_publisher_did"], row["obsh_target_name"]
            assert row["obsh_verdict"] == ("contains" if did in truth[name] else "outside"), row
            assert row["obsh_failure"] is None
            assert row["obsh_access_route"] == expected_route(style, profile)
        stored = {r["obs_publisher_did"] for r in rows if r["obsh_stored"]}
        queried = {r["obs_publisher_did"] for r in rows}
        assert stored == set().union(*truth.values()) & queried
        assert stored, "the workload must store something to prove anything"
        files = list((tmp_path / "fits").rglob("*.fits"))
        assert len(files) == len(stored)

        archive.reset_stats()
        again = harvest_params(_params(archive, tmp_path, targets_csv))
        second = archive.stats()
        assert again.ok and again.downloaded == 0 and again.reused == summary.images
        assert not {"files", "data", "datalink", "product"} & set(second), second


@pytest.mark.timeout(240)
def test_cutout_mode_without_soda_says_so_before_any_work(targets_csv, tmp_path):
    """Direct files and no SODA descriptor in the TAP result: one line at plan time, no
    file touched; asked to fall back, the whole images are stored instead."""
    from obsharvest.errors import CutoutUnavailableError

    settings = ArchiveSettings(seed=7, n_visits=24, binning=10, access_style="direct")
    with EmbeddedArchive(shared(settings)) as archive:
        params = _params(archive, tmp_path / "refused", targets_csv)
        cutouts = {"mode": "cutout", "cutout_radius": 0.01}
        refused = params.model_copy(update={"products": params.products.model_copy(update=cutouts)})
        archive.reset_stats()
        with pytest.raises(CutoutUnavailableError, match="no SODA service descriptor"):
            harvest_params(refused)
        assert "data" not in archive.stats()  # not one byte of any file was asked for

        fallback = refused.model_copy(
            update={
                "products": refused.products.model_copy(update={"cutout_fallback": "image"}),
                "output_url": str(tmp_path / "fallback"),
            }
        )
        summary = harvest_params(fallback)
        assert summary.ok and summary.stored_images > 0
        truth = set().union(*(archive.truth(ra, dec) for _, ra, dec in TARGETS))
        rows = ds.dataset(str(tmp_path / "fallback" / "metadata"), format="parquet")
        stored = {r["obs_publisher_did"] for r in rows.to_table().to_pylist() if r["obsh_stored"]}
        assert stored and stored <= truth


# -- every dialect of the standards (simarchive.dialect), in servers that combine them ----
#
# Real servers bend several rules at once, so each archive below combines switches, and
# together they hold every one of them; each also publishes its access_url in another
# style. Queries are unconstrained so the stored set is compared with the whole WCS
# truth, not with what the query happened to return.
DIALECT_SERVERS = {
    # the server: untyped capabilities without a language, TAP_UPLOAD declared
    # but its join on CONTAINS answers 500, case-sensitive ivoa.obscore, TABLEDATA as
    # application/xml, plain-text errors, ESO's J2000 polygons, tile-compressed files
    "eso-like": (
        [
            "capabilities=untyped",
            "table_case=lower",
            "serialization=tabledata",
            "errors=text",
            "upload_join=broken",
            "s_region_dialect=stcs-j2000",
            "files=fz",
        ],
        "direct",
        "async",
    ),
    # upper-case columns, no upload, jobs that finish inside RUN, POST-only sync,
    # ALMA's unions, gzip files
    "alma-like": (
        [
            "table_case=upper",
            "upload=off",
            "async=inline",
            "sync=post",
            "s_region_dialect=union",
            "files=gz",
        ],
        "datalink",
        "async",
    ),
    # no UWS at all (the run falls back to sync once), DALI arrays, a limit on ORs,
    # gzip sent as a Content-Encoding
    "sync-only": (
        ["async=off", "s_region_dialect=dali", "or_limit=2", "files=gz-encoded"],
        "descriptor",
        "async",
    ),
    # NULL s_region on some rows (s_ra/s_dec/s_fov decide), SODA as a #proc link
    "dachs-like": (
        ["s_region_dialect=null", "soda=proc", "table_case=lower", "capabilities=untyped"],
        "product",
        "sync",
    ),
}


@pytest.mark.parametrize("server", list(DIALECT_SERVERS))
@pytest.mark.timeout(300)
def test_every_dialect_harvests_exactly_the_truth(server, targets_csv, tmp_path, caplog):
    from obsharvest.simarchive.dialect import Dialect

    switches, style, mode = DIALECT_SERVERS[server]
    settings = ArchiveSettings(
        seed=7,
        n_visits=12,  # every image is a candidate (no constraints): about 110 of them
        binning=10,
        access_style=style,
        dialect=Dialect.parse(switches),
        faults=FaultPlan.parse(["*.head_stall=1"], seed=11),
    )
    with EmbeddedArchive(shared(settings)) as archive:
        truth = {name: archive.truth(ra, dec) for name, ra, dec in TARGETS}
        params = _params(archive, tmp_path, targets_csv)
        params = params.model_copy(
            update={
                "constraints": params.constraints.model_copy(
                    update={"bands": [], "calib_levels": []}
                ),
                "query": params.query.model_copy(update={"mode": mode}),
            }
        )
        summary = harvest_params(params)
        assert summary.ok, summary.failures
        assert _heads(archive.stats()) == 0

        rows = ds.dataset(str(tmp_path / "metadata"), format="parquet").to_table().to_pylist()
        for row in rows:
            did, name = row["obs_publisher_did"], row["obsh_target_name"]
            assert row["obsh_verdict"] == ("contains" if did in truth[name] else "outside"), row
            assert row["obsh_failure"] is None
            assert row["obsh_access_route"] == expected_route(style, "generic")
        stored = {r["obs_publisher_did"] for r in rows if r["obsh_stored"]}
        assert stored == set().union(*truth.values())
        uris = {r["obsh_storage_uri"] for r in rows if r["obsh_stored"]}
        suffix = {"files=fz": ".fits.fz", "files=gz": ".fits.gz", "files=gz-encoded": ".fits.gz"}
        wanted = next((suffix[s] for s in switches if s in suffix), ".fits")
        assert all(u.endswith(wanted) for u in uris), sorted(uris)[:3]

        archive.reset_stats()
        again = harvest_params(params)
        assert again.ok and again.downloaded == 0 and again.reused == summary.images
        assert not {"files", "data", "datalink", "product"} & set(archive.stats())
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.timeout(300)
def test_an_untyped_service_without_language_harvests_from_the_cli_without_traceback(
    targets_csv, tmp_path
):
    """The issue's server, run as a user would: exit 0, every target stored, one line
    about the broken upload join, and nothing on stderr that looks like a traceback.
    (The CLI's own temporary Prefect API is tested by test_first_contact and
    test_stopping; here it reports to the session's.)"""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from obsharvest.simarchive.dialect import Dialect

    switches = ["capabilities=untyped", "upload_join=broken", "errors=text"]
    settings = ArchiveSettings(seed=7, n_visits=12, binning=10, dialect=Dialect.parse(switches))
    with EmbeddedArchive(shared(settings)) as archive:
        truth = set().union(*(archive.truth(ra, dec) for _, ra, dec in TARGETS))
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        done = subprocess.run(
            [sys.executable, "-m", "obsharvest.flows.cli", "run", "--targets", str(targets_csv)]
            + ["--output", str(tmp_path / "out"), "--set", f"service.tap_url={archive.tap_url}"],
            capture_output=True,
            text=True,
            timeout=280,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and 'File "' not in done.stderr, done.stderr
        assert "could not run upload joins" in done.stderr + done.stdout
        rows = ds.dataset(str(tmp_path / "out" / "metadata"), format="parquet").to_table()
        stored = {r["obs_publisher_did"] for r in rows.to_pylist() if r["obsh_stored"]}
        assert stored == truth
