"""The preflight of a run over several services asks them all at once: one that cannot be
reached is a warning (the others are harvested), a missing token stops the run, and the
messages come in the order the services are listed. Real HTTP: the session's embedded
archive, and a port nothing listens on."""

from __future__ import annotations

import logging

import pytest

from obsharvest.errors import PreflightError
from obsharvest.flows.params import HarvestParams
from obsharvest.flows.preflight import check_service

NOBODY = "http://127.0.0.1:9/tap"  # the discard port: refused at once


def _params(*services: dict) -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "services": list(services),
            "ra": 62.0,
            "dec": -37.0,
            "output_url": "/tmp/unused",
            "retry": {"initial_wait": 0.01},
        }
    )


def test_unreachable_services_are_warned_of_in_order_and_the_rest_go_on(archive, caplog):
    params = _params(
        {"name": "down-a", "tap_url": NOBODY},
        {"name": "up", "tap_url": archive.tap_url},
        {"name": "down-b", "tap_url": "http://127.0.0.1:9/other-tap"},
    )
    with caplog.at_level(logging.WARNING, logger="obsharvest.flows.preflight"):
        check_service(params)  # raises nothing: one service answers
    warned = [
        r.getMessage() for r in caplog.records if "the other services go on" in r.getMessage()
    ]
    assert len(warned) == 2, warned
    assert "services.0" in warned[0] and "cannot reach" in warned[0]
    assert "services.2" in warned[1] and "other-tap" in warned[1]


def test_a_missing_token_stops_the_run_whoever_answers_first(archive, monkeypatch):
    monkeypatch.delenv("OBSH_TEST_NO_SUCH_TOKEN", raising=False)
    params = _params(
        {"name": "down", "tap_url": NOBODY},
        {
            "name": "locked",
            "tap_url": archive.tap_url,
            "token_env": "OBSH_TEST_NO_SUCH_TOKEN",
            "token_required": True,
        },
    )
    with pytest.raises(PreflightError, match=r"services\.1\.token_required.*OBSH_TEST_NO_SUCH"):
        check_service(params)
