"""Several ObsTAP services in one run (issue 24): asked at once, one output, each image
stored once however many services serve it, every serving service on its rows; a
service that is down does not stop the others."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from obsharvest.flows.cli import main
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.metadata import MetadataStore
from obsharvest.net.archive import name_of
from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

pytestmark = pytest.mark.usefixtures("prefect_harness")

TARGETS = [("seed", 62.0, -37.0), ("east", 62.3, -37.1), ("west", 61.7, -36.9)]


@pytest.fixture(scope="module")
def archives():
    """Three archives: the RSP-like original (Datalink), its mirror (same images under
    its own publisher DIDs, the files served directly) and another sky, slower."""
    settings = {
        "original": ArchiveSettings(seed=7, n_visits=12, profile="rubin", creator_did=True),
        "mirror": ArchiveSettings(
            seed=7, n_visits=12, access_style="direct", publisher="mirror.example"
        ),
        "other": ArchiveSettings(seed=11, n_visits=12, query_delay=0.3),
    }
    running = {name: EmbeddedArchive(s) for name, s in settings.items()}
    for archive in running.values():
        archive.start()
    yield running
    for archive in running.values():
        archive.stop()


def _targets_file(tmp_path: Path) -> Path:
    path = tmp_path / "targets.csv"
    path.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in TARGETS))
    return path


def _params(services: list[dict], tmp_path: Path, output: str = "out") -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "services": services,
            "targets": str(_targets_file(tmp_path)),
            "constraints": {"calib_levels": [2]},
            "output_url": str(tmp_path / output),
        }
    )


def _truth(archives, names) -> dict[str, set[str]]:
    """Per target: the distinct images (creator DIDs) whose pixels contain it, across
    ``names``' archives."""
    return {
        t: set().union(*(archives[n].creator_truth(ra, dec) for n in names))
        for t, ra, dec in TARGETS
    }


def _stored_match_truth(rows, creator: dict[str, str], truth: dict[str, set[str]]) -> set:
    """Per target, the images stored are exactly those of its rows whose pixels contain
    it (the rows asked calib_level 2; the truth is every image). All stored, by creator."""
    stored_all: set[str] = set()
    for target, on_pixels in truth.items():
        mine = [r for r in rows if r["obsh_target_name"] == target]
        stored = {creator[r["obs_publisher_did"]] for r in mine if r["obsh_stored"]}
        assert stored, target
        assert stored == {creator[r["obs_publisher_did"]] for r in mine} & on_pixels, target
        stored_all |= stored
    return stored_all


def _rows(output: Path) -> list[dict]:
    return MetadataStore(str(output)).read().to_pylist()


def test_three_archives_one_output_each_image_once(archives, tmp_path):
    names = ["original", "mirror", "other"]
    services = [{"name": n, "tap_url": archives[n].tap_url} for n in names]
    summary = harvest_params(_params(services, tmp_path))
    assert summary.ok, summary.failures
    rows = _rows(tmp_path / "out")
    creator = {}
    for n in names:
        creator.update(archives[n].creator_dids())
    # exactly the WCS truth per target, across the services
    stored_all = _stored_match_truth(rows, creator, _truth(archives, names))
    # each distinct image stored once: one object per creator DID
    files = list((tmp_path / "out" / "fits").rglob("*.fits"))
    assert len(files) == len(stored_all)
    uris = {}
    for r in rows:
        if r["obsh_stored"]:
            uris.setdefault(creator[r["obs_publisher_did"]], set()).add(r["obsh_storage_uri"])
    assert all(len(u) == 1 for u in uris.values())
    # every serving service on the rows; the mirror's rows carry the original's object
    mirrored = [r for r in rows if r["obsh_service"] == "mirror"]
    assert mirrored and all(r["obsh_services"] == "original,mirror" for r in mirrored)
    assert {r["obsh_services"] for r in rows if r["obsh_service"] == "other"} == {"other"}
    # the summary: one line per service; the mirror stored nothing of its own
    lines = {s.name: s for s in summary.services}
    assert list(lines) == names
    assert lines["mirror"].stored == 0 and lines["mirror"].also_elsewhere == lines["mirror"].images
    assert lines["original"].stored + lines["other"].stored == len(files)
    assert summary.stored_images == len(files)


def test_a_service_that_is_down_does_not_stop_the_others(archives, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = f"http://127.0.0.1:{port}/tap"
    services = [
        {"name": "original", "tap_url": archives["original"].tap_url},
        {"tap_url": down},
    ]
    params = _params(services, tmp_path).model_copy(
        update={"retry": _params(services, tmp_path).retry.model_copy(update={"attempts": 2})}
    )
    summary = harvest_params(params)
    assert not summary.ok
    failed = {key: reason for key, reason in summary.failures}
    assert set(failed) == {f"target {n}" for n, *_ in TARGETS}
    assert all(
        reason.startswith(f"{name_of(down)}: ObsCore query failed") for reason in failed.values()
    )
    creator = archives["original"].creator_dids()
    _stored_match_truth(_rows(tmp_path / "out"), creator, _truth(archives, ["original"]))
    # a rerun with the other service up fetches only what is missing
    again = [services[0], {"name": "other", "tap_url": archives["other"].tap_url}]
    rerun = harvest_params(_params(again, tmp_path))
    assert rerun.ok, rerun.failures
    lines = {s.name: s for s in rerun.services}
    assert rerun.downloaded == lines["other"].stored > 0


def test_the_command_line_takes_several_tap_urls(archives, tmp_path, capsys, session_api):
    code = main(
        [
            "run",
            "--targets",
            str(_targets_file(tmp_path)),
            "--tap",
            archives["original"].tap_url,
            "--tap",
            archives["other"].tap_url,
            "--calib-levels",
            "2",
            "--output",
            str(tmp_path / "cli"),
            "--progress-interval",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    for archive in (archives["original"], archives["other"]):
        assert name_of(archive.tap_url) in out
    services = {r["obsh_service"] for r in _rows(tmp_path / "cli")}
    assert services == {name_of(archives["original"].tap_url), name_of(archives["other"].tap_url)}


def test_a_token_goes_only_to_the_service_that_names_it(monkeypatch):
    from obsharvest.flows.service import token_of

    monkeypatch.setenv("ACCESS_TOKEN", "rsp-token")
    monkeypatch.setenv("GAVO_TOKEN", "gavo-token")
    params = HarvestParams.model_validate(
        {
            "services": [
                {"tap_url": "https://data.lsst.cloud/api/tap"},
                {"tap_url": "http://dc.g-vo.org/tap", "token_env": "GAVO_TOKEN"},
            ],
            "ra": 62,
            "dec": -37,
        }
    )
    first, second = params.services
    assert token_of(params, first)[0] is None  # $ACCESS_TOKEN is not for every service
    assert token_of(params, second)[0] == "gavo-token"
    single = HarvestParams.model_validate(
        {"service": {"tap_url": "https://data.lsst.cloud/api/tap"}, "ra": 62, "dec": -37}
    )
    assert token_of(single, single.service)[0] == "rsp-token"


def test_the_same_bytes_under_other_dids_are_stored_once(archives, tmp_path):
    """A mirror that serves no creator DID: nothing in the rows says the images are the
    same, their bytes do (sha256): one object, both services' rows pointing at it."""
    hidden = ArchiveSettings(
        seed=7, n_visits=12, access_style="direct", publisher="mirror.example", creator_did=False
    )
    with EmbeddedArchive(hidden) as anonymous:
        services = [
            {"name": "original", "tap_url": archives["original"].tap_url},
            {"name": "anonymous", "tap_url": anonymous.tap_url},
        ]
        summary = harvest_params(_params(services, tmp_path))
        creator = {**archives["original"].creator_dids(), **anonymous.creator_dids()}
    assert summary.ok, summary.failures
    rows = _rows(tmp_path / "out")
    assert "obs_creator_did" not in {
        k for r in rows if r["obsh_service"] == "anonymous" for k, v in r.items() if v
    }
    stored = _stored_match_truth(rows, creator, _truth(archives, ["original"]))
    files = list((tmp_path / "out" / "fits").rglob("*.fits"))
    assert len(files) == len(stored)  # one object per image, not one per service
    uris: dict[str, set[str]] = {}
    for r in rows:
        if r["obsh_stored"]:
            uris.setdefault(creator[r["obs_publisher_did"]], set()).add(r["obsh_storage_uri"])
    assert all(len(u) == 1 for u in uris.values())
    assert all(Path(next(iter(u)).removeprefix("file://")).exists() for u in uris.values())
    # both services on the rows of an image only its bytes said was the same
    assert {r["obsh_services"] for r in rows if r["obsh_stored"]} == {"original,anonymous"}
    lines = {s.name: s for s in summary.services}
    assert lines["anonymous"].also_elsewhere > 0


def test_a_service_that_refuses_its_files_mid_run_does_not_stop_the_others(archives, tmp_path):
    """Its queries answer, then every file request is refused (503): the other service
    completes exactly, the failures name the service, and a rerun against it working
    again fetches only what is missing."""
    refusing = ArchiveSettings(
        seed=11, n_visits=12, faults=FaultPlan.parse(["files.unavailable=1"], seed=3)
    )
    services = [{"name": "original", "tap_url": archives["original"].tap_url}]
    quick = {"attempts": 2, "initial_wait": 0.05, "max_wait": 0.1}
    with EmbeddedArchive(refusing) as flaky:
        params = _params([*services, {"name": "flaky", "tap_url": flaky.tap_url}], tmp_path)
        params = params.model_copy(update={"retry": params.retry.model_copy(update=quick)})
        summary = harvest_params(params)
    assert not summary.ok and summary.failures
    assert all(reason.startswith("flaky: ") for _, reason in summary.failures)
    creator = archives["original"].creator_dids()
    rows = [r for r in _rows(tmp_path / "out") if r["obsh_service"] == "original"]
    _stored_match_truth(rows, creator, _truth(archives, ["original"]))
    lines = {s.name: s for s in summary.services}
    assert lines["flaky"].stored == 0 and lines["flaky"].failed > 0
    with EmbeddedArchive(ArchiveSettings(seed=11, n_visits=12)) as fixed:
        again = [*services, {"name": "flaky", "tap_url": fixed.tap_url}]
        rerun = harvest_params(_params(again, tmp_path))
    assert rerun.ok, rerun.failures
    lines = {s.name: s for s in rerun.services}
    assert rerun.downloaded == lines["flaky"].stored > 0  # the original's are not fetched again
