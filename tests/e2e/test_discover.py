"""obsharvest discover against the embedded RegTAP: exactly the ObsCore services it
describes (in either form), counts equal to a direct ADQL count on each archive, a
refusing service reported at once and a silent one within its timeout, and a profile a
run can take."""

from __future__ import annotations

import json
import re
import socket
import time
from types import SimpleNamespace

import pytest
import yaml
from pyvo.dal import TAPService

from obsharvest.flows.cli import main
from obsharvest.models import Target
from obsharvest.registry import find_obscore_services, probe_all, probe_service, service_names
from obsharvest.registry.probe import GRACE
from obsharvest.simarchive.dialect import Dialect
from obsharvest.simarchive.registry import RegistryEntry
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

TIMEOUT = 3.0
POINTS = [("A", 62.0, -37.0), ("B", 61.8, -36.9), ("C", 62.3, -37.2)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """Three archives (RSP-like, direct files on a lower-case-only server, DaCHS-like
    product URLs), a closed port, a socket that accepts and never answers, and a registry
    describing them all plus itself as a TAP service without ObsCore."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the backlog; nothing ever answers
    down = f"http://127.0.0.1:{_closed_port()}/tap"
    quiet = f"http://127.0.0.1:{silent.getsockname()[1]}/tap"
    archives = {
        "ivo://sim.rubin/tap": EmbeddedArchive(
            ArchiveSettings(seed=1, n_visits=12, profile="rubin")
        ),
        "ivo://sim.direct/tap": EmbeddedArchive(
            ArchiveSettings(
                seed=2,
                n_visits=12,
                access_style="direct",
                dialect=Dialect.parse(["table_case=lower"]),
            )
        ),
        "ivo://sim.dachs/tap": EmbeddedArchive(
            ArchiveSettings(seed=3, n_visits=12, access_style="product")
        ),
    }
    for archive in archives.values():
        archive.start()
    entries = [
        RegistryEntry("ivo://sim.rubin/tap", archives["ivo://sim.rubin/tap"].tap_url, "datamodel"),
        RegistryEntry("ivo://sim.direct/tap", archives["ivo://sim.direct/tap"].tap_url, "utype"),
        RegistryEntry("ivo://sim.dachs/tap", archives["ivo://sim.dachs/tap"].tap_url, "both"),
        RegistryEntry("ivo://sim.registry/tap", None, "none"),  # has ObsCore, declares none
        RegistryEntry("ivo://sim.down/tap", down, "datamodel"),
        RegistryEntry("ivo://sim.silent/tap", quiet, "utype"),
    ]
    registry = EmbeddedArchive(ArchiveSettings(n_visits=3, registry=entries)).start()
    targets = tmp_path_factory.mktemp("discover") / "targets.csv"
    targets.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in POINTS))
    try:
        yield SimpleNamespace(
            archives=archives, registry=registry, down=down, silent=quiet, targets=str(targets)
        )
    finally:
        registry.stop()
        for archive in archives.values():
            archive.stop()
        silent.close()


def _truth(archive: EmbeddedArchive) -> dict[str, int]:
    """Images per band for the points, asked directly with hand-written ADQL."""
    where = " OR ".join(
        f"CONTAINS(POINT('ICRS', {ra}, {dec}), s_region) = 1" for _, ra, dec in POINTS
    )
    table = (
        TAPService(archive.tap_url)
        .run_sync(
            "SELECT lsst_band, COUNT(*) AS n FROM ivoa.obscore "
            f"WHERE dataproduct_type = 'image' AND ({where}) GROUP BY lsst_band"
        )
        .to_table()
    )
    return {str(row["lsst_band"]): int(row["n"]) for row in table}


def _targets() -> list[Target]:
    return [Target(name, ra, dec) for name, ra, dec in POINTS]


def test_registry_lists_exactly_the_obscore_services(sky):
    found = find_obscore_services(sky.registry.tap_url, timeout=TIMEOUT)
    assert {(s.ivoid, s.tap_url) for s in found} == {
        ("ivo://sim.rubin/tap", sky.archives["ivo://sim.rubin/tap"].tap_url),
        ("ivo://sim.direct/tap", sky.archives["ivo://sim.direct/tap"].tap_url),
        ("ivo://sim.dachs/tap", sky.archives["ivo://sim.dachs/tap"].tap_url),
        ("ivo://sim.down/tap", sky.down),
        ("ivo://sim.silent/tap", sky.silent),
    }
    declared = {s.ivoid: set(s.declared) for s in found}
    assert declared["ivo://sim.dachs/tap"] == {"datamodel", "utype"}  # listed once
    assert declared["ivo://sim.direct/tap"] == {"utype"}  # what pyvo's search misses


def test_counts_equal_the_truth_and_slow_services_hold_nobody_up(sky):
    urls = [a.tap_url for a in sky.archives.values()] + [sky.down, sky.silent]
    started = time.monotonic()
    probes = probe_all(urls, _targets(), timeout=TIMEOUT)
    wall = time.monotonic() - started
    for archive, probe in zip(sky.archives.values(), probes, strict=False):
        truth = _truth(archive)
        assert probe.problem is None, probe
        assert probe.bands == truth
        assert probe.rows == sum(truth.values()) > 0
        assert not probe.approximate
    refused, silent = probes[3], probes[4]
    assert refused.problem == "connection refused"
    assert refused.seconds < 1.0  # at once, not at the timeout
    assert silent.problem == f"no answer within {TIMEOUT:g} s"
    assert TIMEOUT - 0.5 <= silent.seconds <= TIMEOUT + GRACE + 0.5
    assert wall <= TIMEOUT + GRACE + 1.5  # in parallel: the silent one alone sets the pace


def test_radius_targets_without_intersects_are_an_upper_bound(sky):
    wide = [Target("A", 62.0, -37.0, radius=0.05)]
    rubin = probe_service(sky.archives["ivo://sim.rubin/tap"].tap_url, wide, timeout=TIMEOUT)
    generic = probe_service(sky.archives["ivo://sim.dachs/tap"].tap_url, wide, timeout=TIMEOUT)
    assert rubin.answered and rubin.approximate  # the RSP has no INTERSECTS
    assert generic.answered and not generic.approximate


def test_the_command_prints_the_table_and_writes_a_profile(sky, tmp_path, capsys, session_api):
    profile = tmp_path / "p.yaml"
    code = main(
        [
            "discover",
            "--targets",
            sky.targets,
            "--registry",
            sky.registry.tap_url,
            "--timeout",
            str(TIMEOUT),
            "--write-profile",
            str(profile),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = {line.split()[1]: line for line in out.splitlines() if "ivo://" in line}
    assert set(lines) == {
        "ivo://sim.rubin/tap",
        "ivo://sim.direct/tap",
        "ivo://sim.dachs/tap",
        "ivo://sim.down/tap",
        "ivo://sim.silent/tap",
    }
    rubin = _truth(sky.archives["ivo://sim.rubin/tap"])
    assert f" {sum(rubin.values())} " in lines["ivo://sim.rubin/tap"]
    assert " ".join(f"{b}:{n}" for b, n in sorted(rubin.items())) in lines["ivo://sim.rubin/tap"]
    assert lines["ivo://sim.down/tap"].endswith("not asked: connection refused")
    assert lines["ivo://sim.silent/tap"].endswith(f"not asked: no answer within {TIMEOUT:g} s")
    assert "3 of 5 ObsCore services answered for 3 targets" in out

    written = yaml.safe_load(profile.read_text())
    assert set(written) == {"services"}
    answered = {a.tap_url for a in sky.archives.values()}
    assert {s["tap_url"] for s in written["services"]} == answered
    for service in written["services"]:
        assert set(service) == {"name", "tap_url"}
        assert re.fullmatch(r"[a-z0-9-]+", service["name"])
    assert len({s["name"] for s in written["services"]}) == 3
    _a_run_takes(profile, sky.targets, written["services"], capsys)
    _a_run_harvests_with(profile, sky, written["services"], tmp_path / "out", capsys)


def _a_run_takes(profile, targets: str, services: list[dict], capsys) -> None:
    """``obsharvest params`` (a run's validation, no network) accepts the profile as is."""
    from obsharvest.flows.params import HarvestParams

    if "services" not in HarvestParams.model_fields:  # issue 24 item 1 not in this tree yet
        return
    assert main(["params", "--config", str(profile), "--targets", targets]) == 0
    printed = json.loads(capsys.readouterr().out)["params"]
    assert printed["services"] == services


def _a_run_harvests_with(profile, sky, services: list[dict], output, capsys) -> None:
    """``obsharvest run --config <written profile>`` as is: it asks every service the
    profile names, exits 0, and finds for each target exactly the images of its rows
    whose pixels contain it, each row naming the service it came from. One target of
    the three, as a plan (verified, nothing downloaded): the profile is what is tested,
    not the volume."""
    from obsharvest.metadata import MetadataStore

    target, ra, dec = POINTS[0]
    targets = output.parent / "run-targets.csv"
    targets.write_text(f"name,ra,dec\n{target},{ra},{dec}\n")
    args = ["run", "--config", str(profile), "--targets", str(targets), "--plan"]
    code = main([*args, "--output", str(output), "--progress-interval", "0"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    rows = MetadataStore(str(output)).read().to_pylist()
    by_url = {a.tap_url: a for a in sky.archives.values()}
    archives = {s["name"]: by_url[s["tap_url"]] for s in services}
    assert {r["obsh_service"] for r in rows} == set(archives)
    for name, archive in archives.items():
        assert name in out
        mine = [r for r in rows if r["obsh_service"] == name]
        assert {r["obsh_services"] for r in mine} == {name}  # three skies, nothing shared
        asked = {r["obs_publisher_did"] for r in mine}
        found = {r["obs_publisher_did"] for r in mine if r["obsh_verdict"] == "contains"}
        assert {r["obsh_target_name"] for r in mine} == {target}
        assert asked and found == asked & archive.truth(ra, dec), name
    assert not any(r["obsh_stored"] for r in rows)  # a plan


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--targets", "missing.csv"], "missing.csv"),
        (["--registry", "ftp://registry"], "is not an http(s) URL"),
        (["--timeout", "0"], "--timeout 0 must be more than 0"),
    ],
)
def test_user_mistakes_are_one_line(sky, capsys, args, said):
    base = {"--targets": sky.targets, "--registry": sky.registry.tap_url}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    code = main(["discover", *[x for pair in base.items() for x in pair]])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("obsharvest discover: ") and said in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_registry_that_cannot_be_asked_is_one_line(sky, capsys):
    refusing = main(["discover", "--targets", sky.targets, "--registry", sky.down])
    not_regtap = main(
        [
            "discover",
            "--targets",
            sky.targets,
            "--registry",
            sky.archives["ivo://sim.rubin/tap"].tap_url,
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert (refusing, not_regtap) == (2, 2)
    assert (
        err[0] == f"obsharvest discover: registry {sky.down} could not be asked: connection refused"
    )
    assert (
        err[1].startswith("obsharvest discover: registry ")
        and "cannot run RegTAP queries" in err[1]
    )


def test_service_names_come_from_hosts():
    urls = ["https://dc.g-vo.org/tap", "http://dc.g-vo.org/other/tap", "http://127.0.0.1:8765/tap"]
    assert service_names(urls) == ["dc-g-vo-org", "dc-g-vo-org-2", "127-0-0-1-8765"]


def test_no_profile_when_no_service_answered(sky, tmp_path, capsys):
    lonely = [RegistryEntry("ivo://sim.down/tap", sky.down, "datamodel")]
    with EmbeddedArchive(ArchiveSettings(n_visits=3, registry=lonely)) as registry:
        profile = tmp_path / "p.yaml"
        args = ["discover", "--targets", sky.targets, "--registry", registry.tap_url]
        code = main([*args, "--write-profile", str(profile)])
    out = capsys.readouterr().out
    assert code == 1
    assert "0 of 1 ObsCore services answered" in out and "not written" in out
    assert not profile.exists()
