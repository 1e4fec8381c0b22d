"""What a new user meets first (issue 22, part 6): flags that contradict each other or mean
nothing are refused in one line, ``--version`` and ``run -v`` work, a query that keeps
failing is one line without a traceback, a stop is counted in one line, and a deployment
run with a position off the sky is refused when it is created, not inside the run.

In-process (``obsharvest.flows.cli.main``, ``harvest_params``, the session's Prefect API): a
subprocess would prove nothing more here, and costs seconds each.
"""

from __future__ import annotations

import logging
import signal
import threading

import pytest

from obsharvest.flows.cli import build_parser, main
from obsharvest.flows.harvest import (
    harvest_params,  # imports Prefect: its logging set up before caplog
)
from obsharvest.models import Summary
from obsharvest.report import text
from obsharvest.runtime import stopping

from .test_harvest_flow import params_for

LOCAL = "config/local.yaml"


def one_line_error(capfd) -> str:
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- the command line ----------------------------------------------------------------------


def test_version_comes_from_the_installed_distribution(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"obsharvest {version('obsharvest')}"


@pytest.mark.parametrize(
    "argv, verbose",
    [
        (["run", "--ra", "1", "--dec", "2"], False),
        (["-v", "run", "--ra", "1", "--dec", "2"], True),
        (["run", "-v", "--ra", "1", "--dec", "2"], True),
        (["run", "--ra", "1", "--dec", "2", "--verbose"], True),
        (["compact", "-v", "out"], True),
        (["archive", "-v"], True),
    ],
)
def test_verbose_is_taken_before_or_after_the_command(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["--targets", "config/demo-targets.csv", "--ra", "62", "--dec", "-37"],
            "--targets config/demo-targets.csv and --ra 62 --dec -37: give a target file "
            "or one position, not both",
        ),
        (["--targets", "config/demo-targets.csv", "--dec", "-37"], "--dec -37: give a target"),
        (
            ["--ra", "62", "--dec", "-37", "--progress-interval", "-5"],
            "--progress-interval -5: must be 0",
        ),
        (["--ra", "62", "--dec", "-37", "--progress-interval", "nan"], "--progress-interval nan"),
    ],
)
def test_contradicting_or_negative_run_flags_are_one_line_and_exit_2(argv, words, capfd, tmp_path):
    code = main(["run", "--config", LOCAL, *argv, "--output", str(tmp_path / "out")])
    assert code == 2
    line = one_line_error(capfd)
    assert line.startswith("obsharvest run: ") and words in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["compact", "migrate"])
def test_compact_and_migrate_refuse_an_output_that_does_not_exist(command, capfd, tmp_path):
    missing = tmp_path / "no-such-output"
    assert main([command, str(missing)]) == 2
    assert one_line_error(capfd) == (
        f"obsharvest {command}: {missing}: no such output (the path does not exist)"
    )
    assert not missing.exists()


@pytest.mark.parametrize(
    "flag, words",
    [
        (["--url-lifetime", "-3"], "url_lifetime=-3 must be more than 0 seconds"),
        (["--sync-timeout", "-1"], "sync_timeout=-1 must be more than 0 seconds"),
        (["--query-delay", "-2"], "query_delay=-2 must be 0 or more seconds"),
        (["--port", "-1"], "port=-1 must be 0..65535"),
    ],
)
def test_the_archive_refuses_negative_durations_and_ports(flag, words, capfd):
    assert main(["archive", *flag]) == 2
    assert one_line_error(capfd) == f"obsharvest archive: {words}" + (
        " (0 picks a free one)" if flag[0] == "--port" else ""
    )


# -- a query past its retries --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_archive():
    """This module's archive; a test sets its faults and leaves it healthy."""
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings(seed=5, n_visits=24)) as archive:
        yield archive


@pytest.fixture
def faults(small_archive):
    from obsharvest.simarchive.faults import FaultPlan

    def put(*items: str) -> None:
        small_archive.set_faults(FaultPlan.parse(list(items), seed=3))

    yield put
    small_archive.set_faults(FaultPlan())


@pytest.mark.usefixtures("prefect_harness")
def test_tap_503_past_the_retries_is_one_line_per_batch_without_traceback(
    small_archive, faults, caplog, tmp_path
):
    """The query task returns a Failed state carrying the ServiceError instead of raising
    it: Prefect logs no task traceback, the flow says it once for the batch."""
    caplog.set_level(logging.INFO)
    faults(*(f"tap_{m}.{k}" for m in ("sync", "async") for k in ("unavailable=1", "retry_after=0")))
    params = params_for(
        small_archive, tmp_path, retry={"attempts": 2, "initial_wait": 0, "max_wait": 0.05}
    )
    summary = harvest_params(params)
    assert summary.failures and summary.failures[0][0] == "target seed"
    with_traceback = [r.getMessage() for r in caplog.records if r.exc_info and r.exc_info[0]]
    assert not with_traceback, with_traceback
    assert "Traceback" not in caplog.text
    said = [r.getMessage() for r in caplog.records if "not queried" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert said[0].startswith("1 targets not queried: ObsCore query failed: ServiceError")
    assert "HTTP 503" in said[0]


def test_the_cli_keeps_prefects_repr_of_a_returned_failed_state_off_the_console():
    """Prefect logs a Failed state a task returned as its repr (a query batch: the same
    words as the flow's line); the console shows the flow's line only."""
    from obsharvest.flows.cli import _UserErrorNoise

    def record(name: str, level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, message, None, None)

    keep = _UserErrorNoise().filter
    assert not keep(record("prefect.task_runs", logging.ERROR, "Task run failed with state: F"))
    assert keep(record("prefect.flow_runs", logging.ERROR, "1 targets not queried: ..."))
    assert keep(record("prefect.task_runs", logging.WARNING, "image x failed: HTTP 500"))


# -- a stop: unfinished images counted ----------------------------------------------------


def test_the_report_counts_unfinished_images_in_one_line_and_lists_real_failures():
    failures = [(f"ivo://x/{i}", "interrupted by SIGINT") for i in range(136)]
    failures += [("ivo://x/bad", "HTTP 500 from files"), ("target t1", "interrupted by SIGINT")]
    report = text(Summary(run_id="r", failures=failures, interrupted="interrupted by SIGINT"))
    lines = report.splitlines()
    assert "136 images not finished: interrupted by SIGINT" in lines
    assert "1 targets not queried: interrupted by SIGINT" in lines
    assert "FAILED ivo://x/bad: HTTP 500 from files" in lines
    assert not [line for line in lines if "FAILED" in line and "interrupted" in line]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(120)
def test_a_stopped_run_counts_its_unfinished_images_in_one_line(
    small_archive, faults, caplog, tmp_path
):
    """Stopped (as by Ctrl-C) once the header reads are under way, every image stalled:
    one WARNING counts them, no line per image; each keeps its reason in the summary."""
    from obsharvest.metadata import MetadataStore

    caplog.set_level(logging.INFO)
    faults("files.stall=1")
    done = threading.Event()

    def stop_once_reading() -> None:  # waits on the archive's own request counter
        while not done.wait(0.05):
            if small_archive.stats().get("files", {}).get("requests", 0) >= 1:
                stopping.request_for_signal(signal.SIGINT)
                return

    watcher = threading.Thread(target=stop_once_reading, daemon=True)
    params = params_for(  # a stalled read is abandoned at the stop, and ends 3 s after it at most
        small_archive, tmp_path, retry={"read_timeout": 3, "attempts": 2, "max_wait": 0.1}
    )
    watcher.start()
    try:
        summary = harvest_params(params)
    finally:
        done.set()
        watcher.join()
        stopping.reset()  # the next test's run is not stopped
    assert summary.interrupted == "interrupted by SIGINT"
    unfinished = {k for k, r in summary.failures if r == "interrupted by SIGINT"}
    assert len(unfinished) > 1
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "failed: interrupted" in m]
    counted = [m for m in messages if "images not finished" in m]
    assert counted == [f"{len(unfinished)} images not finished: interrupted by SIGINT"]
    rows = MetadataStore(str(tmp_path)).read().to_pylist()  # each image keeps its reason
    kept = {r["obs_publisher_did"] for r in rows if r["obsh_failure"] == "interrupted by SIGINT"}
    assert kept == unfinished


# -- deployment parameters, checked when a run is created ----------------------------------


def _form(flat: dict) -> dict:
    """The flow's one parameter as the UI form sends it: the whole model, the constraints
    nested."""
    form: dict = {"service": {"embedded": {}}, "output_url": "output/never", "constraints": {}}
    for key, value in flat.items():
        nested = key in ("bands", "subtypes", "calib_levels", "time_start", "time_end")
        (form["constraints"] if nested else form)[key] = value
    return form


@pytest.fixture(scope="module")
def deployment_id(prefect_harness):
    """The harvest flow as a deployment (as ``obsharvest serve`` and ``prefect deploy``
    register it: the parameter schema comes from the flow's signature)."""
    from prefect.client.orchestration import get_client

    from obsharvest.flows.harvest import harvest

    deployment = harvest.to_deployment(
        name="first-contact", parameters={"params": _form({"ra": 62, "dec": -37})}
    )
    found = deployment.apply()
    yield found
    with get_client(sync_client=True) as client:
        client.delete_deployment(found)


@pytest.mark.parametrize(
    "parameters, field",
    [
        ({"ra": 400, "dec": -37}, "ra"),
        ({"ra": -1, "dec": -37}, "ra"),
        ({"ra": "400", "dec": -37}, "ra"),
        ({"ra": "25:00:00", "dec": -37}, "ra"),
        ({"ra": 62, "dec": -97}, "dec"),
        ({"ra": 62, "dec": "-97:00:00"}, "dec"),
        ({"ra": 62, "dec": -37, "radius": -1}, "radius"),
        ({"ra": 62, "dec": -37, "time_start": -5}, "time_start"),
        ({"ra": 62, "dec": -37, "bands": ["i x"]}, "bands"),
        ({"ra": 62, "dec": -37, "calib_levels": [7]}, "calib_levels"),
    ],
)
def test_a_deployment_run_off_the_sky_is_refused_when_created(deployment_id, parameters, field):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError) as refused:
        client.create_flow_run_from_deployment(
            deployment_id, parameters={"params": _form(parameters)}
        )
    assert refused.value.response.status_code == 409
    detail = refused.value.response.json()["detail"]
    nested = field in ("bands", "subtypes", "calib_levels", "time_start", "time_end")
    where = f"params.constraints.{field}" if nested else f"params.{field}"
    assert f"Validation failed for field '{where}" in detail, detail


@pytest.mark.parametrize(
    "ra, dec",
    [
        (62, -37),
        (0, -90),
        (360, 90),
        ("04:08:00", "-37:00:00"),
        ("4h08m00s", "-37d00m00s"),
        ("62.5", "-37.5"),
        ("04 08 00.5", "+37 00 00"),
    ],
)
def test_a_deployment_run_on_the_sky_is_created(deployment_id, ra, dec):
    """What the CLI takes, the schema takes (the run checks the details, e.g. 24:00:01)."""
    from prefect.client.orchestration import get_client

    from obsharvest.flows.config import build_params

    build_params(LOCAL, {"ra": ra, "dec": dec})  # the CLI's own validation accepts it
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"params": _form({"ra": ra, "dec": dec})}
        )
        client.delete_flow_run(run.id)  # nothing runs it (no worker): not left scheduled
