"""Fail fast, with the right words (issue 15): bad inputs and situations, through the CLI.

Each case runs ``obsharvest run`` in a subprocess, as a user would, against one archive
started for this module that wants a bearer token (``ArchiveSettings(token=...)``), a
crafted server for replies no honest archive gives, and SeaweedFS for S3. Every case must
end with exit 2 and ONE line on stderr, no traceback, naming what is wrong and where the
value came from (the profile file and key, a ``--set`` argument, a flag).

Nothing may reach the archive as a query: after all cases its counters show no ``tap_sync``
request, no ``POST`` to ``tap_async`` (a job), nothing on Datalink, files or SODA. The only
requests preflight makes are ``GET tap/capabilities`` (is it a TAP service? is the token
accepted where capabilities are protected?) and, when a token is sent, ``GET tap/async``
(the UWS job list: behind authentication on the RSP, whose capabilities are public; it runs
no query). Server replies that pass preflight and are refused during the run end it at once:
the crafted server counts one request.

A representative subset goes through the flow (``harvest_params``, and the flow called
with Prefect parameters, which must be blamed as such).

The CLI cases run four at a time in one module fixture (each takes 1-3 s of start-up), so
the module stays well under a minute and a half. The one case whose run reaches a flow
reports to the session's Prefect API instead of starting a temporary one (about 7 s;
tests/e2e/test_first_contact.py and test_stopping.py test that route).
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from obsharvest.assemble import cutout_bytes
from obsharvest.errors import ServiceRefusedError
from obsharvest.flows.cli import angle_arguments
from obsharvest.flows.config import ConfigError, build_params, load_yaml, parse_override
from obsharvest.flows.harvest import harvest, harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.flows.preflight import PreflightError
from obsharvest.flows.progress_bars import ProgressLines
from obsharvest.models import Containment, Summary, TargetSummary, Verdict
from obsharvest.report import display_width, text
from obsharvest.storage.store import ObjectStore, parse_sidecar
from tests.crafted_server import CraftedServer, Reply, html

pytestmark = pytest.mark.timeout(180)

TOKEN = "obsh-test-token-6b1f0c2e9d"
TOKEN_ENV = "OBSH_TEST_TOKEN"
OBSHARVEST = str(Path(sys.executable).with_name("obsharvest"))
TRACEBACK_WORDS = ("Traceback", 'File "', "Error:\n")
QUERY_ENDPOINTS = ("tap_sync", "datalink", "files", "cutout", "product", "data")


# -- the world the cases run in -------------------------------------------------------------


@pytest.fixture(scope="module")
def secured():
    """The module's archive: wants ``Authorization: Bearer TOKEN`` on TAP and Datalink."""
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings(n_visits=12, token=TOKEN)) as running:
        yield running


@pytest.fixture(scope="module")
def crafted(secured):
    """Replies the archive never gives; each case has its own paths, so hits are its own."""
    capabilities = requests.get(
        secured.tap_url + "/capabilities", headers={"Authorization": f"Bearer {TOKEN}"}
    ).content
    caps = Reply(body=capabilities, headers={"Content-Type": "text/xml"})
    jobs = Reply(body=b"<uws:jobs xmlns:uws='http://www.ivoa.net/xml/UWS/v1.0'/>")
    with CraftedServer() as server:
        server.route("/site/capabilities", html())  # a web site, not a TAP service
        server.route("/rsp/capabilities", caps)  # public capabilities, as on the RSP ...
        server.route("/rsp/async", Reply(403, b"token lacks scope read:tap"))  # ... then 403
        server.route("/slow/capabilities", html(503))  # always busy: retried, then said
        for name, reply in {
            "run404": html(404),  # a proxy's HTML 404 page for the query: permanent
            "flow400": Reply(400, b"UsageFault: MAXREC", {"Content-Type": "text/plain"}),
            "flow401": Reply(401, b"authentication required", {"Content-Type": "text/plain"}),
        }.items():
            server.route(f"/{name}/capabilities", caps)
            server.route(f"/{name}/async", jobs)
            server.route(f"/{name}/sync", reply)
        yield server


@pytest.fixture(scope="module")
def s3_harvest_bucket(s3):
    """The session's SeaweedFS, with the bucket the cases name."""
    from tests.seaweed import s3_client

    client = s3_client(s3)
    client.create_bucket(Bucket="harvest")
    client.close()
    return s3


@pytest.fixture(scope="module")
def world(secured, crafted, s3_harvest_bucket, prefect_harness, tmp_path_factory) -> dict[str, str]:
    """Paths and URLs the cases' arguments name as ``{placeholders}``."""
    from prefect.settings import PREFECT_API_URL

    tmp = tmp_path_factory.mktemp("bad-inputs")
    remote = tmp / "remote.yaml"
    remote.write_text(
        f"service:\n  tap_url: {secured.tap_url}\n  token_env: {TOKEN_ENV}\n"
        "  token_required: true\nquery:\n  mode: sync\n  strategy: batched\n"
        f"output_url: {tmp / 'out'}\n"
    )
    (tmp / "typo.yaml").write_text(remote.read_text() + "verfication:\n  mode: skip\n")
    (tmp / "badvalue.yaml").write_text(remote.read_text() + "query:\n  maxrec: 0\n")
    (tmp / "baddate.yaml").write_text(
        remote.read_text() + "constraints:\n  time_start: 2023-02-30\n"
    )
    (tmp / "list.yaml").write_text("- service\n- tap_url\n")
    (tmp / "t-ragged.csv").write_text("name,ra,dec\na,62,-37\nb,62\n")
    (tmp / "t-noradius.csv").write_text("name,ra,dec\na,62,-37\nb,62.1,-37.1\n")
    (tmp / "a-file").write_text("not a directory\n")
    readonly = tmp / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    return {
        "remote": str(remote),
        "tmp": str(tmp),
        "tap": secured.tap_url,
        "base": secured.base_url,
        "crafted": crafted.base_url,
        "s3": s3_harvest_bucket,
        "readonly": str(readonly),
        "prefect_api": str(PREFECT_API_URL.value()),
    }


def _drop_root_write_override() -> None:
    """For a root test run: drop the capabilities that let root write a 0555 directory
    (in this child only), so "read-only for this user" means what it says."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: gone at exec


@dataclass(frozen=True)
class Case:
    """``obsharvest run`` with these arguments must exit 2 saying ``words`` on one line."""

    name: str
    argv: tuple[str, ...]
    words: tuple[str, ...]
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset
    profile: str | None = "{remote}"  # --config (None: none given)
    hits: dict[str, int] = field(default_factory=dict)  # crafted path: requests expected
    readonly_user: bool = False


AT = ("--ra", "62", "--dec", "-37")
CASES = [
    # -- values, blamed on their source; unknown keys get the closest valid one
    Case("unknown-key-suggests", (*AT, "--set", "maxrec=5"), ("--set maxrec=5", "unknown key", "did you mean query.maxrec?")),
    Case("unknown-nested-key", (*AT, "--set", "query.stratgy=upload"), ("--set query.stratgy=upload", "did you mean query.strategy?")),
    Case("profile-typo-blames-file", AT, ("typo.yaml", "verfication", "did you mean verification?"), profile="{tmp}/typo.yaml"),
    Case("profile-value-blames-file", (*AT, "--set", "query.mode=sync"), ("badvalue.yaml: query.maxrec", "greater than or equal to 1"), profile="{tmp}/badvalue.yaml"),
    Case("profile-impossible-date", AT, ("baddate.yaml", "time_start '2023-02-30'", "day is out of range"), profile="{tmp}/baddate.yaml"),
    Case("set-impossible-date", (*AT, "--set", "constraints.time_start=2023-02-30"), ("--set constraints.time_start=2023-02-30", "day is out of range")),
    Case("time-range-reversed", (*AT, "--set", "constraints.time_start=2024-01-01", "--set", "constraints.time_end=2023-06-30"), ("--set constraints.time_start=2024-01-01", "--set constraints.time_end=2023-06-30", "is after")),
    Case("negative-sexagesimal-out-of-range", ("--ra", "04:08:00", "--dec", "-97:00:00"), ("--dec -97:00:00", "outside [-90, 90]")),
    Case("ra-not-an-angle", ("--ra", "25x", "--dec", "-37"), ("--ra 25x", "ra '25x'")),
    Case("radius-too-large", (*AT, "--radius", "20"), ("--radius 20", "less than or equal to 10")),
    Case("calib-level-not-a-number", (*AT, "--calib-levels", "2,x"), ("--calib-levels 2,x", "constraints.calib_levels", "valid integer")),
    Case("set-without-equals", (*AT, "--set", "query.maxrec"), ("--set 'query.maxrec'", "expected key.path=value")),
    Case("profile-is-a-list", AT, ("list.yaml", "expected a mapping"), profile="{tmp}/list.yaml"),
    Case("profile-is-a-directory", AT, ("is a directory",), profile="{tmp}"),
    Case("targets-missing", ("--targets", "{tmp}/nope.csv"), ("nope.csv: no such file",)),
    Case("targets-ragged-row", ("--targets", "{tmp}/t-ragged.csv"), ("t-ragged.csv: row 2", "expected 3 fields", "line 3 of the file")),
    # -- what each mode needs
    Case("cutout-point-without-radius", (*AT, "--set", "products.mode=cutout"), ("--set products.mode=cutout", "needs a radius")),
    Case("cutout-targets-without-radius", ("--targets", "{tmp}/t-noradius.csv", "--set", "products.mode=cutout"), ("--set products.mode=cutout", "needs a radius", "t-noradius.csv: row 1", "1 more")),
    Case("dask-cluster-not-importable", (*AT, "--set", "execution.runner=dask", "--set", "execution.dask_cluster_class=nosuchpkg.Cluster"), ("execution.dask_cluster_class", "cannot import 'nosuchpkg'")),
    Case("aws-block-for-local-output", (*AT, "--set", "storage.aws_credentials_block=b"), ("--set storage.aws_credentials_block=b", "is for S3")),
    # -- the token and the service
    Case("token-required-missing", AT, ("service.token_required", f"${TOKEN_ENV}", "is not set", f"export {TOKEN_ENV}="), env={TOKEN_ENV: None}),
    Case("token-wrong", AT, ("401", "the token from $OBSH_TEST_TOKEN", "was refused"), env={TOKEN_ENV: "not-the-token"}),
    Case("token-absent-not-required", (*AT, "--set", "service.token_required=false"), ("401", "no token was sent: set $OBSH_TEST_TOKEN"), env={TOKEN_ENV: None}),
    Case("token-lacks-scope", (*AT, "--set", "service.tap_url={crafted}/rsp"), ("/rsp/async answered 403", "token lacks scope read:tap", "lacks the rights"), hits={"/rsp/capabilities": 1, "/rsp/async": 1}),
    Case("tap-url-not-tap", (*AT, "--set", "service.tap_url={base}/"), ("--set service.tap_url=", "/capabilities answered 404", "base URL")),
    Case("tap-url-a-web-site", (*AT, "--set", "service.tap_url={crafted}/site"), ("/site", "not a VOSI capabilities document"), hits={"/site/capabilities": 1}),
    Case("tap-url-nothing-listens", (*AT, "--set", "service.tap_url=http://127.0.0.1:9/tap", "--set", "retry.initial_wait=0.01"), ("cannot reach the TAP service", "connection refused")),
    Case("tap-url-always-busy", (*AT, "--set", "service.tap_url={crafted}/slow", "--set", "retry.initial_wait=0.01"), ("cannot reach the TAP service", "503"), hits={"/slow/capabilities": 3}),
    # -- where the results go: a probe object written and removed with the run's credentials
    Case("output-is-a-file", (*AT, "--output", "{tmp}/a-file"), ("--output", "a-file is a file, not a directory")),
    Case("output-under-a-file", (*AT, "--output", "{tmp}/a-file/out"), ("cannot write to", "is a file, not a directory")),
    Case("output-read-only", (*AT, "--output", "{readonly}/out"), ("--output", "permission denied", "not writable"), readonly_user=True),
    Case("fits-storage-is-a-file", (*AT, "--set", "storage.url={tmp}/a-file"), ("--set storage.url=", "is a file")),
    Case("plan-still-checks-output", (*AT, "--plan", "--output", "{tmp}/a-file"), ("--output", "is a file")),
    Case("output-http-nothing-listens", (*AT, "--output", "http://127.0.0.1:9/out"), ("--output http://127.0.0.1:9/out", "cannot write", "connection refused")),
    Case("s3-without-credentials", (*AT, "--output", "s3://harvest/run"), ("--output s3://harvest/run", "no S3 credentials", "AWS_ACCESS_KEY_ID"), env={"AWS_ENDPOINT_URL_S3": "{s3}"}),
    Case("s3-bucket-missing", (*AT, "--output", "s3://no-such-bucket/run"), ("bucket 'no-such-bucket' does not exist",), env={"AWS_ENDPOINT_URL_S3": "{s3}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}),
    # -- a reply during the run (preflight passed): the query is refused once, not retried
    Case("query-answered-html-404", (*AT, "--set", "service.tap_url={crafted}/run404", "--set", "service.token_required=false"), ("sync TAP query", "/run404/sync answered 404", "check the URL"), env={TOKEN_ENV: None, "PREFECT_API_URL": "{prefect_api}"}, hits={"/run404/sync": 1}),
]  # fmt: skip


def _run_case(case: Case, world: dict[str, str]) -> subprocess.CompletedProcess:
    fill = lambda s: s.format(**world)  # noqa: E731
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_API"))}
    env.update(
        {
            TOKEN_ENV: TOKEN,
            "PREFECT_HOME": str(Path(world["tmp"]) / f"prefect-{case.name}"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = fill(value)
    argv = [OBSHARVEST, "run"]
    if case.profile:
        argv += ["--config", fill(case.profile)]
    argv += [fill(a) for a in case.argv]
    if "--output" not in case.argv:
        argv += ["--output", str(Path(world["tmp"]) / "out" / case.name)]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
        cwd=Path(__file__).resolve().parents[2],
        preexec_fn=_drop_root_write_override if case.readonly_user else None,
    )


@pytest.fixture(scope="module")
def cli_results(world, secured, crafted) -> dict[str, subprocess.CompletedProcess]:
    """Every case, four at a time; then the archive's counters for all of them."""
    secured.reset_stats()
    slow_first = sorted(CASES, key=lambda c: not c.name.startswith("query-"))  # runs a flow
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case.name: pool.submit(_run_case, case, world) for case in slow_first}
        results = {name: future.result() for name, future in futures.items()}
    results["_stats"] = secured.stats()
    return results


def test_there_are_at_least_25_cases():
    assert len({c.name for c in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cli_bad_input_is_one_line_exit_2(case: Case, cli_results, crafted):
    done = cli_results[case.name]
    err = done.stderr.strip()
    assert done.returncode == 2, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {err}"
    assert not any(w in err for w in TRACEBACK_WORDS), err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("obsharvest run: "), lines[0]
    for word in case.words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert TOKEN not in done.stdout + done.stderr
    for path, count in case.hits.items():
        assert crafted.hits[path] == count, (path, crafted.hits[path])


def test_no_query_reached_the_archive(cli_results):
    """Only preflight's probes: capabilities, and the job list (GET) when a token is sent."""
    stats = cli_results["_stats"]
    assert stats.get("tap_capabilities", {}).get("requests", 0) > 0  # the checks did run
    for endpoint in QUERY_ENDPOINTS:
        assert stats.get(endpoint, {}).get("requests", 0) == 0, (endpoint, stats[endpoint])
    jobs = stats.get("tap_async", {}).get("methods", {})
    assert jobs.get("POST", 0) == 0 and jobs.get("DELETE", 0) == 0, stats["tap_async"]
    # "capabilities": the case whose tap_url is the server root
    assert set(stats) <= {"tap_capabilities", "tap_async", "capabilities"}, sorted(stats)


# -- the flow: deployment runs check the same before any query ------------------------------


def _flow_params(tap_url: str, output: Path, **extra) -> HarvestParams:
    data = {
        "service": {"tap_url": tap_url, "token_env": TOKEN_ENV, "token_required": True},
        "ra": 62.0,
        "dec": -37.0,
        "output_url": str(output),
        "query": {"mode": "sync", "strategy": "batched"},
        "retry": {"attempts": 3, "initial_wait": 0.01, "max_wait": 0.05},
    }
    data.update(extra)
    return HarvestParams.model_validate(data)


@pytest.fixture
def flow_env(monkeypatch, secured):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    secured.reset_stats()
    return secured


def _no_query(archive) -> None:
    stats = archive.stats()
    for endpoint in QUERY_ENDPOINTS:
        assert stats.get(endpoint, {}).get("requests", 0) == 0, (endpoint, stats)
    assert stats.get("tap_async", {}).get("methods", {}).get("POST", 0) == 0, stats


@pytest.mark.usefixtures("prefect_harness")
def test_flow_wrong_token_fails_before_any_query(flow_env, monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    with pytest.raises(ServiceRefusedError) as err:
        harvest_params(_flow_params(flow_env.tap_url, tmp_path / "out"))
    assert "401" in str(err.value) and f"${TOKEN_ENV}" in str(err.value)
    assert "\n" not in str(err.value)
    _no_query(flow_env)


@pytest.mark.usefixtures("prefect_harness")
def test_flow_output_that_is_a_file_fails_before_any_query(flow_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PreflightError, match="is a file, not a directory"):
        harvest_params(_flow_params(flow_env.tap_url, blocker))
    _no_query(flow_env)


@pytest.mark.usefixtures("prefect_harness")
def test_flow_cutout_targets_without_radius_fail_before_any_query(flow_env, tmp_path):
    targets = tmp_path / "t.csv"
    targets.write_text("name,ra,dec\na,62,-37\n")
    params = _flow_params(
        flow_env.tap_url, tmp_path / "out", ra=None, dec=None, targets=str(targets)
    )
    params = params.model_copy(
        update={"products": params.products.model_copy(update={"mode": "cutout"})}
    )
    with pytest.raises(PreflightError, match="cutout mode needs a radius"):
        harvest_params(params)
    _no_query(flow_env)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    "path, words",
    [
        ("flow400", ("400", "UsageFault: MAXREC")),
        ("flow401", ("401", "authentication required", f"no token was sent: set ${TOKEN_ENV}")),
    ],
)
def test_flow_query_refused_ends_the_run_at_once(path, words, crafted, monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    params = _flow_params(crafted.url(f"/{path}"), tmp_path / "out")
    params = params.model_copy(
        update={"service": params.service.model_copy(update={"token_required": False})}
    )
    before = crafted.hits[f"/{path}/sync"]
    with pytest.raises(ServiceRefusedError) as err:
        harvest_params(params)
    message = str(err.value)
    assert "\n" not in message and f"/{path}/sync" in message
    for word in words:
        assert word in message, message
    assert crafted.hits[f"/{path}/sync"] == before + 1  # refused once, never retried


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    "parameters, words",
    [
        ({"ra": 62, "dec": "-97:00:00"}, ("dec", "outside [-90, 90]")),
        (
            {"ra": 62, "dec": -37, "query": {"maxrex": 4}},
            ("parameter params: query.maxrex", "did you mean query.maxrec?"),
        ),
        (
            {"ra": 62, "dec": -37, "constraints": {"time_start": "2023-02-30"}},
            ("parameter params", "time_start '2023-02-30'", "day is out of range"),
        ),
    ],
)
def test_flow_blames_prefect_parameters(parameters, words, world, flow_env):
    """A deployment run's parameters (a mapping, as the API hands them over) are
    validated by the flow: one line naming the key, before any query."""
    form = {**load_yaml(world["remote"]), **parameters}
    state = harvest(form, return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, (ConfigError, ValueError)), error
    message = str(error)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    _no_query(flow_env)


# -- natural inputs are taken as meant ------------------------------------------------------


def test_negative_sexagesimal_after_a_flag_is_a_value():
    assert angle_arguments(["run", "--dec", "-37:00:00", "--ra", "-0.5"]) == [
        "run",
        "--dec=-37:00:00",
        "--ra=-0.5",
    ]
    assert angle_arguments(["--dec", "--plan"]) == ["--dec", "--plan"]  # not a value: argparse says


@pytest.mark.parametrize(
    "text, value",
    [
        ("constraints.time_start=2023-01-01", "2023-01-01"),  # YAML would make a date
        ("constraints.time_start=2023-01-01T12:00:00Z", "2023-01-01T12:00:00Z"),
        ("dec=-37:00:00", "-37:00:00"),  # YAML 1.1 would read base 60: -133200
        ("query.maxrec=5000", 5000),
    ],
)
def test_set_values_are_read_as_meant(text, value):
    assert parse_override(text)[1] == value


def test_unquoted_yaml_dates_and_date_objects_are_iso_times(world, tmp_path):
    import datetime

    profile = tmp_path / "dates.yaml"
    profile.write_text(
        Path(world["remote"]).read_text()
        + "constraints:\n  time_start: 2023-01-01\n  time_end: 2023-06-30 12:00:00\n"
    )
    params = build_params(profile, {"ra": 62, "dec": "-37:00:00"})
    assert params.constraints.mjd_range == (59945.0, 60125.5)
    direct = HarvestParams.model_validate(
        {
            "service": {"tap_url": world["tap"]},
            "ra": 1,
            "dec": 2,
            "constraints": {"time_start": datetime.date(2023, 1, 1)},
        }
    )
    assert direct.constraints.mjd_range[0] == 59945.0
    assert direct.model_dump(mode="json")["constraints"]["time_start"] == "2023-01-01"


# -- honest plan output ---------------------------------------------------------------------


def test_cutout_estimate_is_the_share_of_pixels_within_the_radius():
    # 4000 x 4000 px of 0.2"; a 0.01 deg (36") radius: a 360 px box, 0.81% of the pixels
    scale = 0.2 / 3600
    inside = Containment(Verdict.CONTAINS, 2000.0, 2000.0, 1, pixel_scale=scale, grid=(4000, 4000))
    size = cutout_bytes(inside, 0.01, 200_000_000)
    assert size == pytest.approx(200_000_000 * (360 / 4000) ** 2, rel=0.01)
    corner = Containment(Verdict.CONTAINS, 0.0, 0.0, 1, pixel_scale=scale, grid=(4000, 4000))
    assert cutout_bytes(corner, 0.01, 200_000_000) < size / 3  # clipped by the edges
    assert cutout_bytes(inside, 10.0, 1000) == 1000  # never more than the file
    assert cutout_bytes(Containment(Verdict.CONTAINS, 1.0, 1.0), 0.01, 1000) is None


def test_report_points_at_no_parquet_when_nothing_was_written():
    summary = Summary(run_id="r", failures=[("target a", "ObsCore query failed: ...")])
    summary.metadata_url, summary.storage_url = "out/metadata", "out/fits"
    rendered = text(summary)
    assert "out/metadata" not in rendered and "out/fits" not in rendered
    assert "Parquet: nothing written" in rendered
    summary.metadata_written, summary.stored_images = True, 1
    rendered = text(summary)
    assert "Parquet: out/metadata" in rendered and "FITS:    out/fits" in rendered


def test_plan_line_in_cutout_mode_says_cutouts():
    summary = Summary(run_id="r", plan=True, cutout_mode=True, images=3)
    summary.planned_cutouts, summary.planned_bytes, summary.planned_unknown = 4, 2_000_000, 1
    rendered = text(summary)
    assert "3 images, 4 cutouts; would download about 2.0 MB" in rendered
    assert "1 cutouts not estimated" in rendered


# -- quiet, useful output -------------------------------------------------------------------


def test_summary_table_stays_aligned_for_any_script():
    names = [
        "ascii-name",
        "東京タワー北側の観測点です長い名前",
        "café au lait",
        "e\u0301toile",
        "😀 smile",
    ]
    summary = Summary(run_id="r", targets=[TargetSummary(n, rows=3) for n in names])
    rows = text(summary).splitlines()[: 1 + len(names)]
    widths = {display_width(row) for row in rows}
    assert len(widths) == 1, [(row, display_width(row)) for row in rows]
    ends = {display_width(row.rsplit("3", 1)[0]) for row in rows[1:]}  # the rows column
    assert len(ends) == 1


def test_progress_lines_at_a_steady_interval():
    now = [0.0]
    out = io.StringIO()
    lines = ProgressLines(out, clock=lambda: now[0])
    lines.on_event("start", "images", 40, 0)
    now[0] = 30.0
    lines.tick()
    lines.on_event("advance", "images", 10, 5_000_000)
    now[0] = 60.0
    lines.tick()
    assert lines.tick(force=True) is None  # nothing moved: no closing line twice
    assert out.getvalue().splitlines() == [
        "progress: images 0/40 (0%); 30 s elapsed",
        "progress: images 10/40 (25%), 5.0 MB stored; 60 s elapsed",
    ]


def test_sidecars_are_what_sha256sum_checks(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    stored = store.put_stream("lsst/calexp/i/x_1.fits", [b"SIMPLE  = T" * 300])
    sidecar = tmp_path / "store/lsst/calexp/i/x_1.fits.sha256"
    assert sidecar.read_text().startswith(f"{stored.sha256}  x_1.fits\n")
    if shutil.which("sha256sum"):
        check = subprocess.run(
            ["sha256sum", "-c", "--strict", sidecar.name],
            cwd=sidecar.parent,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0 and check.stdout.strip() == "x_1.fits: OK", check
    again = store.exists_same("lsst/calexp/i/x_1.fits", stored.size, stored.sha256)
    assert again is not None and again.md5 == stored.md5  # read back by our own checks
    legacy = b'{"sha256": "%s", "md5": null, "size": 3}' % (b"a" * 64)  # earlier versions
    assert parse_sidecar(legacy) == {"sha256": "a" * 64, "md5": None, "size": 3}


def test_library_noise_is_kept_off_the_console():
    code = (
        "import logging, warnings\n"
        "from flows.quiet import quiet_library_noise\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "quiet_library_noise()\n"
        "from astropy.io.fits.verify import VerifyWarning\n"
        "from astropy.wcs import FITSFixedWarning\n"
        "warnings.warn('Card is too long, comment will be truncated.', VerifyWarning)\n"
        "warnings.warn('Set MJD-OBS to 60000 from DATE-OBS', FITSFixedWarning)\n"
        "logging.getLogger('urllib3.connectionpool').warning("
        "'Connection pool is full, discarding connection: %s. Connection pool size: %s', 'h', 8)\n"
        "logging.getLogger('urllib3.connectionpool').warning('something else')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == ["WARNING:urllib3.connectionpool:something else"]


def test_quiet_filters_leave_other_warnings_alone():
    from obsharvest.flows.quiet import quiet_library_noise

    quiet_library_noise()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", UserWarning)
        warnings.warn("a user-facing warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a user-facing warning"]
    assert logging.getLogger("urllib3.connectionpool").filters
