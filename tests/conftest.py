"""Shared fixtures: one embedded archive per test session, reached over real HTTP."""

from __future__ import annotations

import pytest

TARGET_RA, TARGET_DEC = 62.0, -37.0  # the seed tutorial's point (§1.4)


@pytest.fixture(scope="session")
def archive():
    from simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings()) as running:
        yield running


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect API for the whole session (starting one costs seconds)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
