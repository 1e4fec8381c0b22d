"""Which failures are retried, and the Parquet merge that keeps one row per pair."""

from __future__ import annotations

import pyarrow as pa
import pytest
import requests
from pyvo.dal import DALFormatError, DALQueryError, DALRateLimitError, DALServiceError

from obsharvest.errors import RefusedError, TransientError
from obsharvest.metadata import MetadataStore
from obsharvest.net.redact import redact, register_secret
from obsharvest.net.retry import RetryPolicy, is_transient


def _rate_limited() -> DALRateLimitError:
    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = "2"
    return DALRateLimitError.from_response(response, None, "http://x/tap")


@pytest.mark.parametrize(
    "exc, transient",
    [
        (DALServiceError("('Connection aborted.', RemoteDisconnected(...))", 0), True),
        (DALServiceError("Service Unavailable", 503), True),
        (DALServiceError("Too Many Requests", 429), True),
        (DALServiceError("Forbidden", 403), False),
        (DALQueryError("column 'x' not found"), False),
        (DALFormatError(requests.ConnectionError("refused")), True),
        # pyvo raises DALFormatError only for a 2xx it cannot parse (an error status comes
        # as DALServiceError with its code): an HTML page with 200 is permanent
        (DALFormatError(ValueError("E19: The root element must be VOTABLE (got html)")), False),
        (DALServiceError("<html>502 Bad Gateway</html>", 502), True),
        (DALServiceError("<html>404 Not Found</html>", 404), False),
        (DALServiceError("Unauthorized", 401), False),
        (DALServiceError("Method Not Allowed", 405), False),
        (DALServiceError("Bad Request", 400), False),
        (DALServiceError("Request Timeout", 408), True),
        (DALServiceError("Invalid TAP service: no tr:TableAccess"), False),
        (DALServiceError("ProtocolError: cut", cause=requests.ConnectionError("cut")), True),
        (RefusedError("Datalink x answered 404", status=404), False),
        (DALFormatError(ValueError("field 3 has no name")), False),
        (requests.ConnectionError("refused"), True),
        (requests.exceptions.ChunkedEncodingError("cut"), True),
        (TransientError("try later"), True),
        (ValueError("bug"), False),
        # CPython 3.11's AST race (gh-106905), met by numpy's dtype parsing in a VOTable
        # parse on two threads at once: nothing wrong with the reply, parse it again
        (SystemError("AST constructor recursion depth mismatch (before=93, after=86)"), True),
        (DALFormatError(SystemError("AST constructor recursion depth mismatch (1, 2)")), True),
        (SystemError("another interpreter error"), False),
    ],
)
def test_transient_shapes(exc, transient):
    assert is_transient(exc) is transient


def test_rate_limit_retry_after_is_honoured():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise _rate_limited()
        return "ok"

    policy = RetryPolicy(attempts=3, initial_wait=0.0, max_wait=0.5)
    waits = []
    retrying = policy.retrying()
    retrying.sleep = waits.append
    assert retrying(flaky) == "ok"
    assert waits and waits[0] >= 2  # Retry-After: 2 beats the 0 s backoff


def test_query_errors_are_not_retried():
    calls = []

    def bad():
        calls.append(1)
        raise DALQueryError("syntax error at line 1")

    with pytest.raises(DALQueryError):
        RetryPolicy(attempts=5, initial_wait=0).call(bad)
    assert len(calls) == 1


def test_redact_masks_signatures_and_tokens():
    register_secret("tok-abcdef-123")
    text = (
        "GET http://localhost:1/files/a.fits?AWSAccessKeyId=K&Signature=abc%2B&Expires=17 "
        "with Authorization: Bearer tok-abcdef-123 and ID=butler://dp02/x"
    )
    out = redact(text)
    assert "abc%2B" not in out and "tok-abcdef-123" not in out and "Expires=17" not in out
    assert "ID=butler://dp02/x" in out  # the useful part stays


def _rows(pairs, verdict):
    return pa.table(
        {
            "obsh_target_name": [t for t, _ in pairs],
            "obs_publisher_did": [d for _, d in pairs],
            "dataproduct_subtype": ["lsst.calexp"] * len(pairs),
            "lsst_band": ["i"] * len(pairs),
            "obsh_verdict": [verdict] * len(pairs),
        }
    )


def test_a_later_append_supersedes_its_pairs_and_keeps_the_rest():
    store = MetadataStore("memory://merge-test/out")
    store.append(_rows([("a", "1"), ("a", "2"), ("b", "1")], "outside"), run_id="r1")
    store.append(_rows([("a", "2"), ("c", "3")], "contains"), run_id="r2")
    rows = store.read().to_pylist()
    pairs = sorted((r["obsh_target_name"], r["obs_publisher_did"], r["obsh_verdict"]) for r in rows)
    assert pairs == [
        ("a", "1", "outside"),
        ("a", "2", "contains"),
        ("b", "1", "outside"),
        ("c", "3", "contains"),
    ]
    fs, root = store.fs_root
    assert [p for p in fs.find(root) if ".tmp" in p] == []


@pytest.mark.parametrize(("code", "calls"), [(500, 2), (503, 4), (None, 4)])
def test_broken_after_ends_on_a_500_that_repeats_but_not_on_busy_or_dropped(code, calls):
    """A query shape being probed stops at its second 500 (the server breaks on it); a
    503 (busy) or a dropped connection keeps the whole retry budget."""
    import requests as _requests

    from obsharvest.net.retry import RetryPolicy

    tried = []

    def fail():
        tried.append(1)
        if code is None:
            raise _requests.ConnectionError("Connection aborted.")
        raise DALServiceError(f"HTTP {code}", code=code)

    policy = RetryPolicy(attempts=4, initial_wait=0.001, max_wait=0.002, broken_after=2)
    with pytest.raises((DALServiceError, _requests.ConnectionError)):
        policy.call(fail, "probe")
    assert len(tried) == calls
