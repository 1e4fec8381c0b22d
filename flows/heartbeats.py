"""Flow-run heartbeats that stop when the run's work does.

Heartbeats are the Prefect API's crash detection: a run that stops sending
``prefect.flow-run.heartbeat`` events is marked crashed. Prefect 3.9's sync flow engine
sends them from a thread that sleeps one second at a time and then joins that thread at
every flow run's end, so a run in this process ended on the thread's next whole second:
up to 1 s after its work (0.84 s of a 4.2 s harvest in ``make bench``).

A run started in this process (the CLI, ``obsharvest.harvest``) turns Prefect's
heartbeats off for its flow call (:func:`in_process`) and the flow body sends the same
event, on the same schedule, from a thread that waits on its stop event
(:func:`beating`): the run ends when its work does and the API still sees it alive. A
deployment run (started by a worker or ``serve``) keeps Prefect's own: its flow call is
Prefect's, and a second at its end waits for no one.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Seconds between heartbeats of this process's in-process flow call (None: not ours to send)
_EVERY: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "obsharvest_heartbeat_every", default=None
)

_log = logging.getLogger(__name__)


@contextmanager
def in_process() -> Iterator[None]:
    """Around a flow call in this process: Prefect's heartbeats off, the flow's own on,
    at the frequency the settings give (``flows.heartbeat_frequency``; None: none)."""
    from prefect.context import SettingsContext, get_settings_context
    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL

    context = get_settings_context()
    every = context.settings.flows.heartbeat_frequency
    if every is None:
        yield
        return
    token = _EVERY.set(max(every, MINIMUM_HEARTBEAT_INTERVAL))
    try:
        with SettingsContext(
            profile=context.profile, settings=_without_heartbeats(context.settings)
        ):
            yield
    finally:
        _EVERY.reset(token)


_WITHOUT: list[tuple[object, object]] = []  # (settings, the same without heartbeats): the last


def _without_heartbeats(settings):
    """``settings`` with Prefect's heartbeats off, made once per settings object: building
    Settings reads the environment, dotenv and profile files (~50 ms here, per run)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    for base, quiet in _WITHOUT:
        if base is settings:
            return quiet
    quiet = settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    _WITHOUT[:] = [(settings, quiet)]
    return quiet


@contextmanager
def beating() -> Iterator[None]:
    """In a flow body: send the run's heartbeats while the body runs, if :func:`in_process`
    turned Prefect's off for it; stop at once when the body ends."""
    from prefect.context import FlowRunContext

    every = _EVERY.get()
    context = FlowRunContext.get()
    if every is None or context is None or context.flow_run is None:
        yield
        return
    resource, related = _event_of(context)
    stop = threading.Event()

    def beat() -> None:
        from prefect.events import emit_event

        while True:
            try:
                emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
            except Exception:  # noqa: BLE001 - a missed beat must not end the run
                _log.debug("flow-run heartbeat not sent", exc_info=True)
            if stop.wait(every):
                return

    # the thread sees this context: the same settings and API URL as the flow
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(beat,), name="flow-heartbeat", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _event_of(context) -> tuple[dict[str, str], list]:
    """The heartbeat event's resource and related resources, as Prefect's engine builds
    them (``BaseFlowRunEngine._build_heartbeat_event_template``)."""
    from importlib.metadata import version

    from prefect.events import RelatedResource
    from prefect.events.related import tags_as_related_resources

    run = context.flow_run
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{run.id}",
        "prefect.resource.name": run.name or "",
        "prefect.version": version("prefect"),
    }
    related: list = []
    if run.flow_id:
        related.append(
            RelatedResource.model_validate(
                {
                    "prefect.resource.id": f"prefect.flow.{run.flow_id}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": context.flow.name if context.flow else "",
                }
            )
        )
    if run.deployment_id:
        related.append(
            RelatedResource.model_validate(
                {
                    "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                    "prefect.resource.role": "deployment",
                }
            )
        )
    return resource, related + tags_as_related_resources(set(run.tags or []))
