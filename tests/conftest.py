"""Shared fixtures: one embedded archive per test session, reached over real HTTP."""

from __future__ import annotations

import pytest

TARGET_RA, TARGET_DEC = 62.0, -37.0  # the seed tutorial's point (§1.4)


@pytest.fixture(scope="session")
def archive():
    from simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings()) as running:
        yield running
