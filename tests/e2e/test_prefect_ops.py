"""Operating obsharvest with Prefect, for real: a ``prefect server`` on 127.0.0.1, the
deployments of deployments/prefect.yaml on a process work pool with a worker, a manual
run with parameters, a scheduled incremental deployment firing twice, bad parameters
refused, and the Prefect UI checked in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import TARGET_DEC, TARGET_RA
from tests.prefect_server import BIN, background, prefect_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def ops(tmp_path_factory, archive):
    home = tmp_path_factory.mktemp("prefect-ops")
    with prefect_server(home) as server:
        server.cli("work-pool", "create", "obsharvest", "--type", "process")
        deployed = server.cli("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        assert "harvest/nightly" in deployed.stdout and "harvest/manual" in deployed.stdout
        # two workers taking one run at a time: either may take any shard
        worker = [str(BIN / "prefect"), "worker", "start", "--pool", "obsharvest", "--limit", "1"]
        with (
            background([*worker, "--name", "w1"], server.env, home / "worker.log"),
            background([*worker, "--name", "w2"], server.env, home / "worker2.log"),
        ):
            yield server, home


def manual_params(archive, out: Path, **extra) -> dict:
    """The manual deployment's parameters for a run on ``archive``: the whole model."""
    return {
        "service": {"tap_url": archive.tap_url},
        "ra": TARGET_RA,
        "dec": TARGET_DEC,
        "constraints": {"bands": ["i"], "calib_levels": [2]},
        "output_url": str(out),
        **extra,
    }


def deployment(server, name: str) -> dict:
    return server.get(f"/deployments/name/harvest/{name}")


def test_deployments_are_registered_as_designed(ops):
    server, _ = ops
    nightly, manual = deployment(server, "nightly"), deployment(server, "manual")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 3 * * *"]
    assert nightly["parameters"]["params"]["incremental"] is True
    assert nightly["work_pool_name"] == manual["work_pool_name"] == "obsharvest"
    assert manual["schedules"] == []
    form = manual["parameter_openapi_schema"]  # the UI form: the parameters' model
    assert list(form["properties"]) == ["params"]
    assert "bands" in form["definitions"]["Constraints"]["properties"]


def test_bad_parameters_are_refused_before_any_run(ops):
    server, _ = ops
    bad = {
        "params": {
            "service": {"tap_url": "http://127.0.0.1:9/tap"},
            "ra": 62,
            "dec": -37,
            "constraints": {"bands": ["i x"]},
        }
    }
    done = server.cli(
        "deployment", "run", "harvest/manual", "--params", json.dumps(bad), check=False
    )
    text = done.stdout + done.stderr
    assert "bands" in text and "does not match" in text
    assert "Created flow run" not in text


def _trigger_manual(server, archive, out: Path) -> str:
    parameters = json.dumps({"params": manual_params(archive, out)})
    done = server.cli("deployment", "run", "harvest/manual", "--params", parameters)
    match = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
    assert match, done.stdout
    return match.group(1)


@pytest.fixture(scope="module")
def manual_run(ops, archive, tmp_path_factory):
    server, home = ops
    out = tmp_path_factory.mktemp("manual-output")
    run_id = _trigger_manual(server, archive, out)
    run = server.wait_run(run_id)
    assert run["state_type"] == "COMPLETED", (home / "worker.log").read_text()[-4000:]
    return run, out


def test_manual_run_with_parameters_harvests(manual_run, archive):
    run, out = manual_run
    assert run["name"].startswith("harvest-62.0,-37.0-full-")
    assert {"obsharvest", "manual"} <= set(run["tags"])
    import pyarrow.dataset as ds

    rows = ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()
    truth = archive.truth(TARGET_RA, TARGET_DEC)
    assert rows and {r["obs_publisher_did"] for r in rows if r["obsh_stored"]} == (
        {r["obs_publisher_did"] for r in rows} & truth
    )


def test_run_artifacts_are_published(ops, manual_run):
    server, _ = ops
    run, _ = manual_run
    artifacts = server.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
    )
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    assert {
        "harvest-progress",
        "harvest-targets",
        "harvest-summary",
        "harvest-parquet",
        "harvest-fits",
    } <= set(by_key)
    assert by_key["harvest-progress"]["data"] == pytest.approx(100.0)
    assert "false-positive rate" in by_key["harvest-summary"]["data"]
    tasks = server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert sorted(t["name"].split("-")[0] for t in tasks) == ["images", "query", "write"]


def test_scheduled_incremental_runs_fire_and_the_second_stores_nothing(ops, archive, tmp_path):
    server, home = ops
    targets = tmp_path / "targets.csv"
    targets.write_text(f"name,ra,dec\nseed,{TARGET_RA},{TARGET_DEC}\n")
    nightly = deployment(server, "nightly")
    params = dict(
        nightly["parameters"]["params"],
        service={"tap_url": archive.tap_url},
        targets=str(targets),
        output_url=str(tmp_path / "out"),
    )
    server.patch(f"/deployments/{nightly['id']}", {"parameters": {"params": params}})
    server.post(
        f"/deployments/{nightly['id']}/schedules", [{"schedule": {"interval": 5}, "active": True}]
    )  # a short interval for the test
    deadline = time.monotonic() + 300
    done = []
    while time.monotonic() < deadline and len(done) < 2:
        runs = server.post(
            "/flow_runs/filter",
            {
                "deployments": {"id": {"any_": [nightly["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}},
            },
        )
        done = sorted(runs, key=lambda r: r["start_time"])
        time.sleep(2)
    assert len(done) >= 2, (home / "worker.log").read_text()[-4000:]
    assert [r["state_type"] for r in done[:2]] == ["COMPLETED", "COMPLETED"]
    assert "incremental" in done[0]["name"]
    from obsharvest import incremental

    (state,) = incremental.states(str(tmp_path / "out")).values()
    assert state.runs[0]["downloaded"] > 0
    assert state.runs[1]["downloaded"] == 0  # unchanged archive: nothing new to store
    for schedule in server.get(f"/deployments/{nightly['id']}/schedules"):
        server.patch(
            f"/deployments/{nightly['id']}/schedules/{schedule['id']}", {"active": False}, retries=5
        )


def test_prefect_ui_shows_the_run_completed_with_its_artifacts(ops, manual_run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    server, _ = ops
    run, _ = manual_run
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{server.url}/runs/flow-run/{run['id']}")

        def body() -> str:
            return driver.find_element(By.TAG_NAME, "body").text

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ("Completed" in body() and run["name"] in body()):
            time.sleep(0.5)
        assert "Completed" in body() and run["name"] in body()
        driver.save_screenshot(str(tmp_path / "flow-run.png"))
        # the innermost element reading "Artifacts": the tab of the flow run page
        tab = driver.find_element(
            By.XPATH, "//*[contains(., 'Artifacts') and not(*[contains(., 'Artifacts')])]"
        )
        tab.click()
        while time.monotonic() < deadline and "harvest-summary" not in body():
            time.sleep(0.5)
        text = body()
        driver.save_screenshot(str(tmp_path / "flow-run-artifacts.png"))
    finally:
        driver.quit()
    for key in ("harvest-summary", "harvest-targets", "harvest-parquet", "harvest-fits"):
        assert key in text
    assert (tmp_path / "flow-run-artifacts.png").stat().st_size > 10_000


def test_obsharvest_serve_runs_deployments_without_a_work_pool(archive, tmp_path):
    """The no-work-pool route: one `obsharvest serve` process registers and runs them
    (its own Prefect server, so no worker of the other tests can pick the run up)."""
    home = tmp_path / "home"
    home.mkdir()
    with (
        prefect_server(home) as server,
        background([str(BIN / "obsharvest"), "serve"], server.env, tmp_path / "serve.log"),
    ):
        deadline = time.monotonic() + 90
        names: set[str] = set()
        while time.monotonic() < deadline and names != {"nightly", "manual"}:
            names = {d["name"] for d in server.post("/deployments/filter", {})}
            time.sleep(1)
        assert names == {"nightly", "manual"}, (tmp_path / "serve.log").read_text()[-3000:]
        assert deployment(server, "manual")["work_pool_name"] is None
        assert deployment(server, "nightly")["schedules"]
        run_id = _trigger_manual(server, archive, tmp_path / "out")
        run = server.wait_run(run_id)
    assert run["state_type"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-4000:]
    assert (tmp_path / "out" / "metadata").exists()


def test_shards_on_two_workers_equal_one_run(ops, archive, tmp_path, prefect_harness):
    """The Prefect-native route beyond one process: shards of a target list as flow runs
    of the manual deployment, served by the pool's two workers, merged into one output."""
    import hashlib

    import pyarrow.dataset as ds
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from obsharvest.flows.harvest import harvest
    from obsharvest.flows.shard import harvest_sharded

    server, home = ops
    from obsharvest.flows.params import HarvestParams

    targets = str(Path(__file__).resolve().parents[2] / "config" / "demo-targets.csv")

    def params(output: str) -> HarvestParams:
        return HarvestParams.model_validate(
            manual_params(archive, tmp_path / output, ra=None, dec=None, targets=targets)
        )

    assert harvest(params("single")).ok
    with temporary_settings(updates={PREFECT_API_URL: server.api}):
        result = harvest_sharded(params("sharded"), shards=2, timeout=600)
    assert result["shards"] == 2
    # which worker takes which shard is the pool's business (a fast worker may take both):
    # every shard ran on one of the pool's workers, and both workers served the pool
    logs = [(home / name).read_text() for name in ("worker.log", "worker2.log")]
    assert all(any(r in log for log in logs) for r in result["flow_runs"]), "a shard ran nowhere"
    workers = server.post("/work_pools/obsharvest/workers/filter", {})
    assert {w["name"] for w in workers} >= {"w1", "w2"}, workers

    def pairs(output: Path) -> set:
        rows = ds.dataset(str(output / "metadata"), format="parquet").to_table().to_pylist()
        return {(r["obsh_target_name"], r["obs_publisher_did"], r["obsh_verdict"]) for r in rows}

    def objects(root: Path) -> dict:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*.fits")
        }

    assert pairs(tmp_path / "sharded") == pairs(tmp_path / "single")
    assert objects(tmp_path / "sharded" / "fits") == objects(tmp_path / "single" / "fits")


def _flow_run_process(run_id: str):
    """The process running flow run ``run_id`` (a worker's child: Prefect puts the run's
    id in its environment), or None while there is none."""
    import psutil

    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                return proc
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return None


def _logged_at(server, run_id: str, text: str) -> float | None:
    """When the flow run logged a message containing ``text`` (epoch seconds), per the API."""
    from datetime import datetime

    logs = server.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in logs if text in r["message"]]
    return min(stamps).timestamp() if stamps else None


@pytest.mark.reliability
@pytest.mark.timeout(400)
def test_cancelling_a_deployment_run_stops_it_within_10s_and_ends_it_cancelled(ops, tmp_path):
    """Cancel from the API, as the UI and ``prefect flow-run cancel`` do, while every file
    read hangs. The run writes what it decided, and its process exits within 10 s of the
    runner's SIGTERM: that part is obsharvest's. It ends Cancelled, not Crashed.

    What comes before and after the SIGTERM is Prefect's bookkeeping: it delivers the
    Cancelling event to the worker, polls the process's exit every 3 s, and loads the
    flow to look for cancellation hooks. It took about 6 s here and about 30 s on a loaded
    CI machine, so it is bounded only by the wait."""
    import pyarrow.dataset as ds

    from obsharvest.simarchive.faults import FaultPlan
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    server, home = ops
    stalled_files = FaultPlan.parse(["files.stall=1"], seed=3)
    settings = ArchiveSettings(seed=5, n_visits=24, binning=10, faults=stalled_files)
    with EmbeddedArchive(settings) as stalled:
        out = tmp_path / "out"
        run_id = _trigger_manual(server, stalled, out)
        deadline = time.monotonic() + 240
        while stalled.stats().get("files", {}).get("methods", {}).get("GET", 0) < 1:
            assert time.monotonic() < deadline, (home / "worker.log").read_text()[-4000:]
            time.sleep(0.2)
        proc = _flow_run_process(run_id)
        assert proc is not None, "no process runs the flow run"
        exited: list[float] = []
        watcher = threading.Thread(
            target=lambda: (proc.wait(300), exited.append(time.time())), daemon=True
        )
        watcher.start()
        sent = time.monotonic()
        asked = server.post(
            f"/flow_runs/{run_id}/set_state",
            {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": False},
        )
        assert asked["status"] == "ACCEPT", asked
        run = server.wait_run(run_id, timeout=240)
        took = time.monotonic() - sent
        watcher.join(60)
    log = (home / "worker.log").read_text()[-4000:] + (home / "worker2.log").read_text()[-4000:]
    assert run["state_type"] == "CANCELLED", log
    assert exited, f"the flow run's process {proc.pid} did not exit"
    stopping = _logged_at(server, run_id, "interrupted by SIGTERM: stopping")
    assert stopping is not None, log
    assert exited[0] - stopping < 10, (
        f"the process exited {exited[0] - stopping:.1f} s after it began stopping "
        f"(Cancelled {took:.1f} s after the request)"
    )
    rows = ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()
    assert rows and all(r["obsh_failure"].startswith("interrupted by") for r in rows)
