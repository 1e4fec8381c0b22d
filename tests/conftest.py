"""Shared fixtures: one embedded archive per test session, reached over real HTTP."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys

import pytest

TARGET_RA, TARGET_DEC = 62.0, -37.0  # the seed tutorial's point (§1.4)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """A crash must leave a trace: every thread's stack on a fatal signal.

    pytest's faulthandler plugin already does that (``all_threads`` is on by default);
    this covers a run with ``-p no:faulthandler`` too, and the processes the tests start
    (CLI runs, archives, benchmark children) through ``PYTHONFAULTHANDLER``.

    The tests' own VOTable writes (``to_xml``, ``Table.write(format="votable")``, pyvo
    uploads of Tables) go through astropy's Python writer: its C writer can write one byte
    past its row buffer (see ``obsharvest.simarchive.votable._python_written``).
    ``tests/simarchive/test_votable_writer.py`` turns the C writer back on to check that the archive
    and the client avoid it by themselves.
    """
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    if not faulthandler.is_enabled():  # a copy of stderr: tests run with fd 2 captured
        faulthandler.enable(file=os.dup(sys.__stderr__.fileno()), all_threads=True)
    from astropy.io.votable import tree

    assert hasattr(tree, "_has_c_tabledata_writer"), "astropy renamed its C writer switch"
    tree._has_c_tabledata_writer = False


# The files that take longest, heaviest first (seconds in a full run on 2 cores, 2026-12:
# 190, 160, 150, 145, 125, then 75 down to 25). They are handed out first, so that with
# `-n 2 --dist loadfile` the last files each worker takes are short ones and both end
# together; xdist's own order (the files with most tests first) left several of these,
# which have few tests each, for the end. Only the order changes (pyproject.toml turns off
# xdist's reordering); a file missing here just runs after them.
HEAVY_FIRST = (
    "tests/e2e/test_stop_phases.py",
    "tests/e2e/test_prefect_ops.py",
    "tests/e2e/test_interop_dachs.py",
    "tests/e2e/test_concurrent_output.py",
    "tests/e2e/test_conformance.py",
    "tests/e2e/test_bad_inputs.py",
    "tests/e2e/test_dialect_wire.py",
    "tests/e2e/test_stopping.py",
    "tests/e2e/test_reliability.py",
    "tests/simarchive/test_archive_access_styles.py",
    "tests/e2e/test_dask.py",
    "tests/e2e/test_token_hygiene.py",
    "tests/e2e/test_timeouts.py",
    "tests/test_benchmarks.py",
    "tests/e2e/test_s3_storage.py",
    "tests/e2e/test_many_services.py",
    "tests/e2e/test_first_contact.py",
    "tests/e2e/test_face.py",
    "tests/e2e/test_dialect_tap.py",
    "tests/e2e/test_dialect_sregion.py",
)


def pytest_collection_modifyitems(config, items):
    """Heavy files first (see ``HEAVY_FIRST``); the order within a file is kept."""
    rank = {path: i for i, path in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(scope="session")
def archive():
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings()) as running:
        yield running


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect API for the whole session (starting one costs seconds)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Prefect 3.9 ends each flow run by joining its heartbeat thread, which sleeps in whole
    # seconds: every in-process run here would wait up to 1 s for it (0.5 on average).
    # No test is about heartbeats (they are the API's crash detection, on for users).
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def session_api(prefect_harness, monkeypatch):
    """The session's Prefect API in the environment, as a configured user has it: an
    in-process ``obsharvest run`` reports there instead of starting a temporary API of its
    own (about 15 s each; tests/e2e/test_first_contact.py tests that route)."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))


# -- object stores: one server of each per session, shared by every module that uses it ----


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """The endpoint URL of a SeaweedFS S3 gateway running for the whole session."""
    from .seaweed import seaweed_s3

    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as endpoint:
        yield endpoint


def _emulated(start, tmp_path_factory, name: str):
    """Run an emulator for the session; skip its tests with the reason if it cannot start."""
    from .emulators import EmulatorUnavailable

    stack = contextlib.ExitStack()
    try:
        endpoint = stack.enter_context(start(tmp_path_factory.mktemp(name)))
    except (EmulatorUnavailable, RuntimeError, TimeoutError) as exc:
        stack.close()
        pytest.skip(f"{name} cannot start here: {exc}")
    with stack:
        yield endpoint


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """The endpoint URL of fake-gcs-server (Google Cloud Storage's JSON API)."""
    from .emulators import fake_gcs

    yield from _emulated(fake_gcs, tmp_path_factory, "fake-gcs-server")


@pytest.fixture(scope="session")
def azure(tmp_path_factory):
    """The blob endpoint URL of Azurite (Azure Blob Storage)."""
    from .emulators import azurite

    yield from _emulated(azurite, tmp_path_factory, "azurite")


@pytest.fixture(params=["s3", "gcs", "azure"])  # emulators.CLOUDS
def cloud(request):
    """Each object store the README names, for tests parametrized over them: SeaweedFS (S3),
    fake-gcs-server (GCS), Azurite (Azure Blob)."""
    from .emulators import azure_cloud, gcs_cloud, s3_cloud

    make = {"s3": s3_cloud, "gcs": gcs_cloud, "azure": azure_cloud}[request.param]
    return make(request.getfixturevalue(request.param))
