"""Which failures are worth retrying, and how long to wait: one policy for every request.

pyvo reports a transient failure in several shapes: ``DALServiceError`` with
code 0, 429 or 5xx; ``DALRateLimitError`` with ``retry_after_seconds``; ``DALFormatError``
whose cause is a connection error; raw ``requests`` exceptions from ``submit_job``.
``DALQueryError`` means the query itself is wrong, and 400/401/403/404/405 or a reply that
is not a VOTable mean the request or the configuration is: never retried
(``obsharvest.net.replies``).
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import requests
import urllib3
from pyvo.dal import DALFormatError, DALQueryError, DALRateLimitError, DALServiceError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from obsharvest.errors import RefusedError, TransientError, status_is_transient
from obsharvest.net.pacing import is_throttle
from obsharvest.runtime import stopping

log = logging.getLogger(__name__)
T = TypeVar("T")


# A stalled or cut transfer surfaces as requests' ConnectionError/Timeout when the request
# is sent, but as urllib3's or http.client's own exceptions when the body is read from
# ``response.raw`` (pyvo parses VOTables straight from it): no byte for read_timeout seconds
# is ``urllib3.exceptions.ReadTimeoutError``, a connection dropped mid-body
# ``ProtocolError``/``IncompleteRead``. All of them are worth another attempt.
_TRANSPORT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.IncompleteRead,
    http.client.IncompleteRead,
    ConnectionError,
    TimeoutError,
)


def interpreter_race(exc: BaseException | None) -> bool:
    """CPython 3.11's AST race (gh-106905): numpy reads a VOTable field's dtype string with
    ``ast.literal_eval``, and two threads parsing at once can make either raise
    ``SystemError: AST constructor recursion depth mismatch``. Nothing is wrong with the
    reply: parsing it again succeeds."""
    return isinstance(exc, SystemError) and "recursion depth mismatch" in str(exc)


def is_transient(exc: BaseException) -> bool:
    """Only timeouts, dropped connections, 429 and 5xx (and what obsharvest itself calls
    transient) are worth another attempt; every other 4xx, and a reply that is not the
    document asked for, is permanent (``obsharvest.net.replies``). pyvo reports an HTTP error
    status as ``DALServiceError.code`` (0: no reply) and raises ``DALFormatError`` only
    for a 2xx reply it cannot parse, so an HTML 502 page from a proxy is retried and an
    HTML page with 200 or 404 is not; a parse error caused by a body cut short is."""
    if interpreter_race(exc) or interpreter_race(getattr(exc, "cause", None)):
        return True  # a VOTable parse that met another thread's (pyvo keeps it as cause)
    if isinstance(exc, (DALQueryError, RefusedError)):
        return False
    if isinstance(exc, (TransientError, DALRateLimitError, *_TRANSPORT)):
        return True
    if isinstance(exc, DALServiceError):
        if exc.code is None:  # raised by pyvo itself, not for a reply: only a transport cause
            return _caused_by_transport(getattr(exc, "cause", None))
        return status_is_transient(exc.code)
    if isinstance(exc, DALFormatError):
        return _caused_by_transport(getattr(exc, "cause", None))
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return status_is_transient(exc.response.status_code)
    return False


def http_status(exc: BaseException | None) -> int | None:
    """The HTTP status a failure carried (pyvo's ``code``, our ``status``); None when no
    reply came (a timeout, a dropped connection)."""
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if status is None and isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
    return status if isinstance(status, int) and status > 0 else None


# what a server answers when a request breaks it, rather than when it is busy (502-504)
BROKEN_BY_REQUEST = frozenset({500, 501})


def _caused_by_transport(exc: BaseException | None) -> bool:
    """Whether a transport error is somewhere in ``exc``'s chain (a VOTable parser that
    met a stalled body may wrap the read error in its own)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _TRANSPORT):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def retry_after(exc: BaseException | None) -> float | None:
    """The server's requested pause (429/503 Retry-After), if it gave one."""
    if isinstance(exc, DALRateLimitError):
        return exc.retry_after_seconds
    if isinstance(exc, TransientError):
        return exc.retry_after
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts and total time per call, with jittered backoff."""

    attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 30.0
    deadline: float = 600.0  # seconds for all attempts of one call together
    log_level: int = logging.WARNING  # of the "failed (attempt n); retrying" lines
    # told when a host asks for less (429, 503): an adaptive limit halves (net.pacing)
    on_throttle: Callable[[], None] | None = field(default=None, compare=False)
    # when set, a 500/501 reply ends the call after this many attempts (a query shape that
    # breaks the server is known by a 500 that repeats); timeouts and 502-504 keep retrying
    broken_after: int | None = None

    def retrying(self, describe: str = "request") -> Retrying:
        # exponential backoff plus jitter, so parallel workers do not retry in lockstep
        backoff = wait_exponential(multiplier=self.initial_wait, max=self.max_wait) + wait_random(
            0, max(self.initial_wait, 0.01)
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            asked = retry_after(exc)
            computed = backoff(state)
            return min(max(computed, asked or 0.0), self.max_wait * 4)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if self.on_throttle is not None and is_throttle(exc):
                self.on_throttle()
            log.log(
                self.log_level,
                "%s failed (attempt %d): %s; retrying",
                describe,
                state.attempt_number,
                one_line(exc),
            )

        limits = stop_after_attempt(self.attempts) | stop_after_delay(self.deadline)

        def broken(state: RetryCallState) -> bool:
            if self.broken_after is None or state.attempt_number < self.broken_after:
                return False
            exc = state.outcome.exception() if state.outcome else None
            return http_status(exc) in BROKEN_BY_REQUEST

        def stop(state: RetryCallState) -> bool:
            # a stopping run retries nothing
            return limits(state) or broken(state) or stopping.requested()

        return Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait,
            stop=stop,
            before_sleep=before_sleep,
            sleep=stopping.sleep,  # backoff ends at once (Interrupted) when the run stops
            reraise=True,
        )

    def call(self, fn: Callable[[], T], describe: str = "request") -> T:
        stopping.check()
        return self.retrying(describe)(fn)

    def within(self, seconds: float) -> RetryPolicy:
        """This policy with its deadline cut to what is left of a larger budget."""
        return replace(self, deadline=max(0.0, min(self.deadline, seconds)))


def one_line(exc: BaseException | None) -> str:
    """A short, single-line description of an error with URL query strings removed."""
    if exc is None:
        return "unknown error"
    from obsharvest.net.redact import redact

    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")[:500]
