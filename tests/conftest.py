"""Shared fixtures: one embedded archive per test session, reached over real HTTP."""

from __future__ import annotations

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
    past its row buffer (see ``simarchive.votable._python_written``).
    ``tests/test_votable_writer.py`` turns the C writer back on to check that the archive
    and the client avoid it by themselves.
    """
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    if not faulthandler.is_enabled():  # a copy of stderr: tests run with fd 2 captured
        faulthandler.enable(file=os.dup(sys.__stderr__.fileno()), all_threads=True)
    from astropy.io.votable import tree

    assert hasattr(tree, "_has_c_tabledata_writer"), "astropy renamed its C writer switch"
    tree._has_c_tabledata_writer = False


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
