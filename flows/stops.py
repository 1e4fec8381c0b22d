"""Stopping a harvest run cleanly: a signal, the run deadline or a Prefect cancellation
becomes a stop request (``obsharvest.runtime.stopping``) that the run notices between
steps, so what it decided is still written and summed up.

Prefect installs a SIGTERM handler in the flow's main thread that raises
``TerminationSignal`` wherever that thread is; here the run's body runs in a helper
thread and the signal only lands in a wait (:func:`absorbing`, :func:`result`). A
SIGTERM is a cancellation when the flow run is Cancelling in the API
(:func:`termination_intent`), else a plain SIGTERM (cron, SLURM, ``timeout``).
"""

from __future__ import annotations

import contextlib
import contextvars
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from prefect import get_run_logger

from obsharvest.runtime import stopping, workers

T = TypeVar("T")

absorbed: list[BaseException] = []  # TerminationSignals this process turned into a stop


INTENT_TIMEOUT = 2.0  # seconds to ask the API whether a SIGTERM is a cancellation
CANCEL_STATES = ("CANCELLING", "CANCELLED")  # state types (and, capitalised, names)


def termination_intent() -> str | None:
    """What a SIGTERM means: "cancel" when this flow run is being cancelled (the UI,
    ``prefect flow-run cancel``: the API puts the run in Cancelling, then the runner sends
    the SIGTERM), else None: a plain SIGTERM (cron, SLURM, ``timeout``, a runner shutting
    down). Read through Prefect's public client, in a daemon thread waited on for at most
    ``INTENT_TIMEOUT`` seconds; an API that does not answer in time, or any error, is no
    intent. A second signal during that wait is raised from here: it leaves now, as a
    second plain SIGTERM does."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return None
    answer: list[str | None] = []

    def ask() -> None:
        answer.append("cancel" if _run_is_cancelling(run_id) else None)

    context = contextvars.copy_context()  # the run's settings (its API URL) and logger
    asking = threading.Thread(
        target=context.run, args=(ask,), name="termination-intent", daemon=True
    )
    asking.start()
    asking.join(INTENT_TIMEOUT)
    return answer[0] if answer else None


def _run_is_cancelling(run_id: str) -> bool:
    """Whether the API says flow run ``run_id`` is Cancelling or Cancelled (False on any
    error: a SIGTERM is then taken as a plain one)."""
    from prefect import get_client

    try:
        with get_client(httpx_settings={"timeout": INTENT_TIMEOUT}, sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(run_id)).state
    except Exception:  # noqa: BLE001 - no answer is no intent
        return False
    if state is None:
        return False
    kind = getattr(state.type, "value", str(state.type))
    return kind in CANCEL_STATES or (state.name or "").upper() in CANCEL_STATES


def result(future, **kwargs):
    """``future.result()`` in the flow's thread, where Prefect's SIGTERM handler raises
    ``TerminationSignal`` and Ctrl-C raises ``KeyboardInterrupt``: either becomes a stop
    request (tasks notice it within seconds and return what they decided) and the wait
    goes on, so the Parquet and the summary are still written. Once the run is stopping,
    a task still blocked (a read the server never answers) is waited for only
    ``workers.STOP_GRACE`` more seconds, then abandoned: :class:`stopping.Interrupted`."""
    from prefect.exceptions import TerminationSignal

    while True:
        try:
            if stopping.past_grace(workers.STOP_GRACE + 1.0):
                raise stopping.Interrupted(stopping.describe())
            future.wait(timeout=0.5)
            if future.state.is_final():
                return future.result(**kwargs)
        except TerminationSignal as exc:
            _absorb(exc)
        except KeyboardInterrupt:
            if stopping.request_for_signal(signal.SIGINT):
                _say_stopping()


def _absorb(exc: BaseException) -> None:
    """Prefect's ``TerminationSignal`` as a stop request; a second plain SIGTERM (no
    runner intent) is raised again: leave now, as Prefect does."""
    intent = termination_intent()
    if stopping.request_for_signal(
        getattr(exc, "signal", signal.SIGTERM), cancelled=intent == "cancel"
    ):
        _say_stopping()
    elif intent is None:
        raise exc
    if intent is not None:
        absorbed.append(exc)  # handed back to Prefect once the run is written


def absorbing(fn: Callable[[], T]) -> T:
    """``fn()`` (the run's body) in a helper thread while the flow's thread only waits.

    A flow run in the main thread (a deployment run, a Python caller) has Prefect's SIGTERM
    handler installed, which raises ``TerminationSignal`` wherever that thread is: in a
    Parquet write, the summary or between shards it crashed the run and lost what it
    decided. Here the signal can only land in this wait, where it becomes a stop request
    (the body notices between steps and returns what it decided); a runner's cancel still
    ends the run Cancelled (``absorbed``). Off the main thread (the CLI runs the flow
    there) no signal arrives: ``fn`` runs in place.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn()
    from prefect.exceptions import TerminationSignal

    future: Future[T] = Future()
    context = contextvars.copy_context()  # the flow run's context: logger, task runner

    def body() -> None:
        try:
            future.set_result(context.run(fn))
        except BaseException as exc:  # noqa: BLE001 - raised again in the flow's thread
            future.set_exception(exc)

    threading.Thread(target=body, name="harvest-body", daemon=True).start()
    while True:
        try:
            return future.result(timeout=0.5)
        except FutureTimeout:
            continue
        except TerminationSignal as exc:
            _absorb(exc)
        except KeyboardInterrupt:
            if stopping.request_for_signal(signal.SIGINT):
                _say_stopping()


def _say_stopping() -> None:
    get_run_logger().warning(
        "%s: stopping; what is decided will be written, the rest recorded as interrupted",
        stopping.describe(),
    )


@contextlib.contextmanager
def run_deadline(seconds: float | None) -> Iterator[None]:
    """Past ``execution.run_deadline_seconds`` the run stops as it would on SIGTERM."""
    if not seconds:
        yield
        return
    reason = f"{stopping.INTERRUPTED}: run deadline of {seconds:g} s passed"
    timer = threading.Timer(seconds, stopping.request, args=(reason,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
