"""A run in this process sends its flow-run heartbeats itself and ends with its work.

Prefect 3.9's sync engine joins a heartbeat thread that sleeps whole seconds at every flow
run's end; ``flows.heartbeats`` turns that one off for an in-process run and sends the
same event from a thread that stops at once. The Prefect API is real (the session's
``prefect_test_harness``); the events are read back from it."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from obsharvest.flows import heartbeats
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams

pytestmark = pytest.mark.usefixtures("prefect_harness")

HEARTBEAT = "prefect.flow-run.heartbeat"


def _events(client, names: list[str], resource_id: str | None = None) -> list:
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    now = datetime.now(UTC)
    wanted = EventFilter(
        occurred=EventOccurredFilter(
            since=now - timedelta(hours=1), until=now + timedelta(hours=1)
        ),
        event=EventNameFilter(name=names),
        resource=EventResourceFilter(id=[resource_id]) if resource_id else None,
    )
    return client.read_events(filter=wanted, limit=50).events


def _all_sent_and_stored(client) -> None:
    """Every event this process emitted so far is stored by the API: a marker emitted
    after them (and sent after them, on the same connection) is readable."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    marker = f"obsharvest.test.marker-{uuid.uuid4()}"
    emit_event(event=marker, resource={"prefect.resource.id": marker})
    EventsWorker.drain_all()
    deadline = time.monotonic() + 60
    while not _events(client, [marker]):
        assert time.monotonic() < deadline, "the API never stored the marker event"
        time.sleep(0.2)


def _heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flow-heartbeat"]


def test_an_in_process_run_sends_one_heartbeat_of_its_own_and_stops_it(archive, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    targets = tmp_path / "targets.csv"
    targets.write_text("name,ra,dec\nseed,62.0,-37.0\n")
    params = HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(targets),
            "constraints": {"bands": ["i"]},
            "output_url": str(tmp_path / "out"),
            "plan": True,
        }
    )
    # the session turns heartbeats off (conftest); a user has them on (180 s by default).
    # An hour apart: one at the start, however slowly a loaded machine runs the harvest
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 3600}):
        summary = harvest_params(params)
    assert summary.ok and summary.images > 0
    assert _heartbeat_threads() == []  # stopped and joined when the flow body ended

    with get_client(sync_client=True) as client:
        _all_sent_and_stored(client)
        beats = _events(client, [HEARTBEAT], f"prefect.flow-run.{summary.run_id}")
    # ours at the start; Prefect's own (off for this run) would be a second one
    assert len(beats) == 1, beats
    roles = {r.role: r.id for r in beats[0].related}
    assert roles["flow"].startswith("prefect.flow.")


def test_heartbeats_off_in_the_settings_send_none(archive, tmp_path):
    """``flows.heartbeat_frequency`` None (as this session has it): no thread, no event."""
    from prefect import flow

    seen: list[list[threading.Thread]] = []

    @flow(persist_result=False)
    def body() -> str:
        with heartbeats.beating():
            seen.append(_heartbeat_threads())
        from prefect.runtime import flow_run

        return str(flow_run.id)

    with heartbeats.in_process():
        body()
    assert seen == [[]]


def test_the_heartbeat_thread_runs_while_the_body_does(tmp_path):
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    seen: list[int] = []

    @flow(persist_result=False)
    def body() -> None:
        with heartbeats.beating():
            seen.append(len(_heartbeat_threads()))

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        with heartbeats.in_process():
            body()
        assert seen == [1]
        body()  # a flow called without in_process: Prefect's heartbeats, none of ours
    assert seen == [1, 0]
    assert _heartbeat_threads() == []
