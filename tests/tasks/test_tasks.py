"""The Prefect tasks of ``tasks/`` themselves: thin wrappers, but what they add (a run's
log line, a Failed state's one-line message, progress events, the repr Prefect logs) is
theirs, so it is tested here rather than only through whole harvests."""

from __future__ import annotations

from obsharvest.models import Summary
from obsharvest.tasks import progress
from obsharvest.tasks.artifacts import failure_message
from obsharvest.tasks.images import BatchOutcomes, capped


def test_failure_message_is_one_bounded_line_without_secrets():
    secret = "https://h.example/x?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
    failures = [(f"img-{i}", f"read failed\nat {secret}") for i in range(5)]
    message = failure_message(Summary(run_id="r", failures=failures), each=120, total=400)
    assert "\n" not in message and len(message) <= 400
    assert message.startswith("5 images or targets failed: img-0")
    assert "(and 2 more)" in message
    assert "deadbeef" not in message and "AKIA" not in message


def test_capped_is_one_line_of_at_most_the_limit():
    assert capped("a\n  b\tc") == "a b c"
    long = capped("x" * 50, limit=10)
    assert len(long) == 10 and long.endswith("…")


def test_batch_outcomes_repr_is_short_whatever_the_batch():
    class Outcome:
        def __init__(self, failure):
            self.failure = failure

    outcomes = BatchOutcomes([Outcome(None)] * 40 + [Outcome("read failed")] * 2)
    assert repr(outcomes) == "<42 image outcomes, 2 failed>"


def test_progress_reaches_listeners_until_they_stop():
    heard: list[tuple] = []
    stop = progress.listen(lambda *event: heard.append(event))
    progress.start("images", 3)
    progress.advance("images", 2, 1024)
    stop()
    progress.advance("images")
    assert heard == [("start", "images", 3, 0), ("advance", "images", 2, 1024)]
