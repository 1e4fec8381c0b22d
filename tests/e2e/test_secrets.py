"""Secrets kept, boundaries held (issue 7B), over real HTTP against the embedded archive.

- the bearer token goes to the service (TAP, Datalink) and never to the signed file host,
  not even when a service redirects there;
- no output of a run (logs, Parquet, Prefect artifacts, incremental state, exception
  messages) holds the token or a URL signature, even with faults making images fail;
- target names never reach ADQL text; bands, subtypes and times that try to are refused
  before any request;
- storage keys built from hostile ``obs_id`` values stay under the storage prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import re
import secrets
import uuid

import numpy as np
import pyarrow.dataset as ds
import pytest
import pyvo
from astropy.table import Table
from pydantic import ValidationError

from obsharvest import assemble
from obsharvest.access.datalink import DatalinkResolver
from obsharvest.errors import AdqlValueError
from obsharvest.flows.cli import main as cli_main
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.models import Target
from obsharvest.net.http import ServiceSession
from obsharvest.query.adql import TARGET_COLUMN, Constraints
from obsharvest.query.obscore import QueryOptions, ServiceFeatures, Strategy, query_targets
from obsharvest.storage.store import ObjectStore
from tests.conftest import TARGET_DEC, TARGET_RA
from tests.crafted_server import CraftedServer, Reply, datalink

from .test_harvest_flow import params_for as flow_params_for

TOKEN = "rsp-" + secrets.token_urlsafe(40)  # long and random: found only if leaked
SIGNATURE = re.compile(r"Signature=(?!\*\*\*)[^&\s'\"<>]+|Expires=\d")
HOSTILE_NAMES = ["x'); DROP TABLE ivoa.ObsCore; --", "a OR 1=1", "O'Brien \"field\" \\'"]


def leaks(text: str) -> list[str]:
    """What in ``text`` must never be written anywhere: the token, a live signature."""
    found = [m.group(0) for m in SIGNATURE.finditer(text)]
    return found + (["<the token>"] if TOKEN in text else [])


@pytest.fixture(scope="module")
def secured():
    """An archive that wants the token on TAP, Datalink and SODA (signed files: none)."""
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings(n_visits=24, token=TOKEN)) as running:
        yield running


def params_for(archive, output, **extra) -> HarvestParams:
    """The flow tests' parameters, with a short retry budget so fault runs stay quick."""
    extra.setdefault("retry", {"attempts": 2, "initial_wait": 0.01, "max_wait": 0.05})
    return flow_params_for(archive, output, **extra)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("simarchive"):  # the archive's own access log: server side
            return
        self.lines.append(logging.Formatter("%(name)s: %(message)s").format(record))


def _artifacts_and_logs(run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()

    async def read():
        ids = [uuid.UUID(run_id)]
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
            )
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
            )
        return artifacts, logs

    artifacts, logs = asyncio.run(read())
    assert {a.key for a in artifacts} >= {"harvest-summary", "harvest-targets"}
    texts = [json.dumps(a.model_dump(mode="json")) for a in artifacts]
    return texts + [log.message for log in logs]


@pytest.fixture(scope="module")
def faulty_run(secured, prefect_harness, tmp_path_factory):
    """A full incremental run with the token set and 30% of file requests answered 503."""
    from obsharvest.simarchive.faults import FaultPlan

    output = tmp_path_factory.mktemp("secret-run")
    collect = _Collect()
    watched = [logging.getLogger(), logging.getLogger("prefect")]
    for logger in watched:
        logger.addHandler(collect)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACCESS_TOKEN", TOKEN)
        secured.set_faults(FaultPlan.parse(["files.unavailable=0.3"], seed=7))
        secured.reset_stats()
        try:
            summary = harvest_params(params_for(secured, output), incremental=True)
            stats, injected = secured.stats(), secured.faults.report()
        finally:
            secured.set_faults(FaultPlan())
            logging.getLogger().setLevel(level)
            for logger in watched:
                logger.removeHandler(collect)
    return output, summary, stats, injected, collect.lines


def test_token_goes_to_the_service_never_to_signed_files(faulty_run):
    _, summary, stats, injected, _ = faulty_run
    assert summary.images > 0 and sum(injected.get("files", {}).values()) > 0
    for endpoint in ("tap_async", "datalink"):
        assert stats[endpoint]["requests"] > 0
        assert stats[endpoint]["authorization"] == stats[endpoint]["requests"], endpoint
    for endpoint, counts in stats.items():  # capabilities too: every service request
        if endpoint.startswith("tap"):
            assert counts["authorization"] == counts["requests"], endpoint
    assert stats["files"]["requests"] > 0 and stats["files"]["authorization"] == 0


def test_no_output_of_the_run_holds_the_token_or_a_signature(faulty_run, capfd):
    output, summary, _, _, lines = faulty_run
    texts = list(lines) + list(capfd.readouterr())
    texts += [reason for _, reason in summary.failures] + [summary.run_id]
    for row in ds.dataset(str(output / "metadata"), format="parquet").to_table().to_pylist():
        texts += [v for v in row.values() if isinstance(v, str)]
    texts += _artifacts_and_logs(summary.run_id)
    for path in output.rglob("*"):
        if path.is_file() and not path.name.endswith(".fits"):  # state, sidecars, Parquet
            texts.append(path.read_bytes().decode("latin-1"))
    assert any("retrying" in t or "failed" in t for t in lines)  # the faults were logged
    leaked = {hit for text in texts for hit in leaks(text)}
    assert not leaked, leaked


def test_a_redirect_off_the_service_host_drops_the_token(secured, archive):
    """The archive's SODA answers 303 to the signed file host: no token follows."""
    truth = secured.truth(TARGET_RA, TARGET_DEC)
    did = next(
        p.obs_publisher_did
        for p in secured.sky.products
        if p.subtype == "lsst.calexp" and p.obs_publisher_did in truth
    )
    session = ServiceSession(TOKEN, [secured.tap_url])
    secured.reset_stats()
    reply = session.get(
        secured.soda_url, params={"ID": did, "CIRCLE": f"{TARGET_RA} {TARGET_DEC} 0.01"}
    )
    assert reply.history and reply.history[0].status_code == 303
    assert reply.status_code == 200 and reply.content[:6] == b"SIMPLE"
    stats = secured.stats()
    assert stats["cutout"]["authorization"] == stats["cutout"]["requests"] == 1
    assert stats["files"]["requests"] == 1 and stats["files"]["authorization"] == 0
    # a crafted service host redirecting to another port of the same address: dropped too
    with CraftedServer() as crafted:
        target = reply.history[0].headers["Location"]
        crafted.route("/datalink/links", Reply(302, headers={"Location": target}))
        session = ServiceSession(TOKEN, [crafted.url("/tap")])
        secured.reset_stats()
        assert session.get(crafted.url("/datalink/links")).status_code == 200
        assert crafted.requests[-1].headers.get("authorization") == f"Bearer {TOKEN}"
        assert secured.stats()["files"]["authorization"] == 0


def test_a_service_echoing_the_token_does_not_put_it_in_messages():
    """A Datalink service that quotes our Authorization header back, in a 400 body and in
    an ``error_message`` row: the failure reasons must not repeat it."""
    with CraftedServer() as crafted:

        def echo(request) -> Reply:
            said = request.headers.get("authorization", "")
            return Reply(
                400, f"bad request; you sent {said}".encode(), {"Content-Type": "text/plain"}
            )

        def row(request) -> Reply:
            said = request.headers.get("authorization", "").split()[-1]
            return datalink(
                [{"ID": "ivo://x/1", "error_message": f"token {said} lacks read:image"}]
            )

        crafted.route("/echo", echo)
        crafted.route("/row", row)
        session = ServiceSession(TOKEN, [crafted.base_url])
        links = DatalinkResolver(session).resolve(
            {
                "a": crafted.url("/echo?ID=ivo%3A//x/1"),
                "b": crafted.url("/row?ID=ivo%3A//x/1"),
            }
        )
    assert links["a"].error and links["b"].error and "lacks read:image" in links["b"].error
    assert not leaks(links["a"].error + links["b"].error)


# -- injection ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_targets(tmp_path_factory):
    import csv

    path = tmp_path_factory.mktemp("hostile") / "targets.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "ra", "dec"])
        for name in HOSTILE_NAMES:
            writer.writerow([name, TARGET_RA, TARGET_DEC])
    return path


@pytest.mark.parametrize("strategy", ["upload", "batched", "per_target"])
def test_hostile_target_names_harvest_fine_and_stay_verbatim(
    strategy, archive, hostile_targets, prefect_harness, tmp_path
):
    params = params_for(
        archive,
        tmp_path,
        ra=None,
        dec=None,
        target_name=None,
        targets=str(hostile_targets),
        plan=True,
        query={"strategy": strategy, "mode": "sync"},
    )
    summary = harvest_params(params)
    assert summary.ok, summary.failures
    rows = ds.dataset(str(tmp_path / "metadata"), format="parquet").to_table().to_pylist()
    names = {r["obsh_target_name"] for r in rows}
    assert names == set(HOSTILE_NAMES)
    assert all(r["obsh_verdict"] in ("contains", "outside") for r in rows)
    by_name = {
        n: {r["obs_publisher_did"] for r in rows if r["obsh_target_name"] == n} for n in names
    }
    assert len({frozenset(v) for v in by_name.values()}) == 1  # same position: same images


@pytest.mark.parametrize("strategy", ["upload", "batched", "per_target"])
def test_target_names_never_reach_adql(strategy, archive):
    targets = [Target(n, TARGET_RA, TARGET_DEC) for n in HOSTILE_NAMES]
    queries: list[str] = []
    rows = query_targets(
        pyvo.dal.TAPService(archive.tap_url),
        targets,
        Constraints(bands=("i",), calib_levels=(2,)),
        Strategy(kind=strategy),
        ServiceFeatures(),
        QueryOptions(mode="sync"),
        on_query=queries.append,
    )
    assert queries and set(rows[TARGET_COLUMN]) == set(HOSTILE_NAMES)
    for adql in queries:
        assert not any(n in adql for n in HOSTILE_NAMES)
        assert "DROP" not in adql.upper() and "1=1" not in adql


REFUSED = [
    ("--bands", "i' OR 1=1 --"),
    ("--bands", "i,r'); DROP TABLE ivoa.ObsCore; --"),
    ("--subtypes", "lsst.calexp' OR ''='"),
    ("--set", "constraints.time_start=60000' OR 1=1 --"),
    ("--set", "constraints.time_end=2020-01-01T00:00:00'; DROP TABLE x; --"),
    ("--set", 'constraints.calib_levels=["2 OR 1=1"]'),
]


@pytest.mark.parametrize("option, value", REFUSED)
def test_injection_in_constraints_is_refused_before_any_request(
    option, value, archive, capfd, tmp_path
):
    archive.reset_stats()
    code = cli_main(
        [
            "run",
            "--set",
            f"service.tap_url={archive.tap_url}",
            "--ra",
            "62",
            "--dec",
            "-37",
            "--output",
            str(tmp_path),
            option,
            value,
        ]
    )
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not any(k.startswith("tap") for k in archive.stats()), archive.stats()


@pytest.mark.parametrize(
    "field, value",
    [
        ("bands", ["i' OR 1=1"]),
        ("subtypes", ["x') OR ('a'='a"]),
        ("time_start", "60000 OR 1=1"),
        ("time_end", "1e9"),
    ],
)
def test_injection_is_refused_by_the_parameters_and_the_adql_layer(field, value, archive):
    archive.reset_stats()
    with pytest.raises(ValidationError):
        HarvestParams.model_validate(
            {"service": {"tap_url": archive.tap_url}, "ra": 62, "dec": -37}
            | {"constraints": {field: value}}
        )
    if field in ("bands", "subtypes"):  # the layer below refuses them too
        with pytest.raises(AdqlValueError):
            Constraints(**{field: tuple(value)}).clauses()
    assert not any(k.startswith("tap") for k in archive.stats())


# -- storage keys ------------------------------------------------------------------------


HOSTILE_OBS_IDS = [
    "../../etc/passwd",
    "/abs/path",
    "s3://bucket/x",
    "evil\x00.fits",
    "..",
    "a/../../../b",
    "C:\\Windows\\system32",
]


def test_storage_keys_from_hostile_obs_ids_stay_under_the_prefix(tmp_path):
    n = len(HOSTILE_OBS_IDS)
    rows = Table(
        {
            "obs_publisher_did": np.array([f"ivo://x/{i}" for i in range(n)]),
            TARGET_COLUMN: np.array(["t"] * n),
            "obs_collection": np.array(["../coll"] * n),
            "dataproduct_subtype": np.array(["/sub"] * n),
            "lsst_band": np.array(["..\\i"] * n),
            "obs_id": np.array(HOSTILE_OBS_IDS, dtype=object),
            "access_url": np.array(["http://x/dl?ID=1"] * n),
        }
    )
    works = assemble.image_works(rows, {"t": Target("t", 1.0, 2.0)}, {})
    prefix = str(tmp_path / "fits")
    store = ObjectStore(prefix)
    keys = [w.storage_key for w in works]
    assert len(set(keys)) == n  # distinct images keep distinct keys
    for key in keys:
        assert "\x00" not in key and not key.startswith("/") and ".." not in key.split("/")
        assert posixpath.normpath(posixpath.join(prefix, key)).startswith(prefix + "/")
        assert store.path(key).startswith(prefix + "/")  # the store accepts it as safe
