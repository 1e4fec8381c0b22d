"""UWS 1.1 jobs for TAP's ``/async`` endpoint.

A job moves PENDING → QUEUED → EXECUTING → COMPLETED | ERROR, or ABORTED at the client's
request; results and the error document stay until DELETE or the destruction time. The
XML is what UWS 1.1 specifies (namespace ``http://www.ivoa.net/xml/UWS/v1.0``, version
attribute ``1.1``), so pyvo's ``AsyncTAPJob`` parses it unmodified, and ``WAIT`` blocking
(UWS 1.1 §2.2.1.1) is honoured so clients need not poll.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape, quoteattr

PENDING, QUEUED, EXECUTING = "PENDING", "QUEUED", "EXECUTING"
COMPLETED, ERROR, ABORTED = "COMPLETED", "ERROR", "ABORTED"
ACTIVE_PHASES = frozenset({PENDING, QUEUED, EXECUTING})
FINAL_PHASES = frozenset({COMPLETED, ERROR, ABORTED})
MAX_WAIT_SECONDS = 30.0  # the longest a WAIT request blocks, as real services cap it


def _isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class JobOutcome:
    """What running a job produced: a result document, or an error message and document."""

    result: bytes | None = None
    error_message: str | None = None
    error_document: bytes | None = None


@dataclass
class Job:
    job_id: str
    parameters: list[tuple[str, str]]
    owner: str | None = None
    run_id: str | None = None
    phase: str = PENDING
    creation_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    start_time: datetime | None = None
    end_time: datetime | None = None
    execution_duration: int = 600
    destruction: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(days=7))
    outcome: JobOutcome | None = None
    uploads: dict = field(default_factory=dict)  # multipart parts (TAP_UPLOAD tables)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def set_phase(self, phase: str) -> None:
        with self.changed:
            self.phase = phase
            self.changed.notify_all()

    def wait_for_change(self, timeout: float, from_phase: str | None = None) -> None:
        """Block while the job is active and still in ``from_phase`` (UWS WAIT)."""
        start_phase = from_phase or self.phase
        with self.changed:
            if self.phase != start_phase or self.phase not in ACTIVE_PHASES:
                return
            self.changed.wait_for(lambda: self.phase != start_phase, timeout=timeout)

    def to_xml(self, job_url: str) -> str:
        def element(name: str, value: str | None) -> str:
            if value is None:
                return f'  <uws:{name} xsi:nil="true"/>\n'
            return f"  <uws:{name}>{escape(value)}</uws:{name}>\n"

        params = "".join(
            f"    <uws:parameter id={quoteattr(k.lower())}>{escape(v)}</uws:parameter>\n"
            for k, v in self.parameters
        )
        results = ""
        if self.phase == COMPLETED:
            href = quoteattr(f"{job_url}/results/result")
            results = f'    <uws:result id="result" xlink:href={href}/>\n'
        error = ""
        if self.phase == ERROR and self.outcome and self.outcome.error_message:
            error = (
                '  <uws:errorSummary type="fatal" hasDetail="true">\n'
                f"    <uws:message>{escape(self.outcome.error_message)}</uws:message>\n"
                "  </uws:errorSummary>\n"
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
            'xmlns:xlink="http://www.w3.org/1999/xlink" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1">\n'
            + element("jobId", self.job_id)
            + element("runId", self.run_id)
            + element("ownerId", self.owner)
            + element("phase", self.phase)
            + element("quote", None)
            + element("creationTime", _isoformat(self.creation_time))
            + element("startTime", _isoformat(self.start_time))
            + element("endTime", _isoformat(self.end_time))
            + element("executionDuration", str(self.execution_duration))
            + element("destruction", _isoformat(self.destruction))
            + f"  <uws:parameters>\n{params}  </uws:parameters>\n"
            + f"  <uws:results>\n{results}  </uws:results>\n"
            + error
            + "</uws:job>\n"
        )


class JobStore:
    """Holds jobs and runs them on a bounded pool, so a burst of submissions queues."""

    def __init__(self, runner: Callable[[Job], JobOutcome], workers: int = 4) -> None:
        self._runner = runner
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="uws")

    def create(
        self,
        parameters: list[tuple[str, str]],
        owner: str | None = None,
        uploads: dict | None = None,
    ) -> Job:
        self._expire()
        run_id = next((v for k, v in parameters if k.lower() == "runid"), None)
        job = Job(
            job_id=secrets.token_hex(8),
            parameters=parameters,
            owner=owner,
            run_id=run_id,
            uploads=dict(uploads or {}),
        )
        with self._lock:
            self._jobs[job.job_id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        self._expire()
        with self._lock:
            return list(self._jobs.values())

    def delete(self, job_id: str) -> bool:
        job = self.get(job_id)
        if job is None:
            return False
        self.abort(job)
        with self._lock:
            self._jobs.pop(job_id, None)
        return True

    def start(self, job: Job) -> None:
        with job.changed:
            if job.phase != PENDING:
                return
            job.phase = QUEUED
            job.changed.notify_all()
        self._pool.submit(self._execute, job)

    def run_inline(self, job: Job) -> None:
        """Run the job in the caller's thread: it is final when this returns (what services
        that complete a job inside the ``PHASE=RUN`` request do)."""
        with job.changed:
            if job.phase != PENDING:
                return
            job.phase = QUEUED
            job.changed.notify_all()
        self._execute(job)

    def abort(self, job: Job) -> None:
        with job.changed:
            if job.phase in ACTIVE_PHASES:
                job.phase = ABORTED
                job.end_time = datetime.now(UTC)
                job.changed.notify_all()

    def _execute(self, job: Job) -> None:
        with job.changed:
            if job.phase != QUEUED:  # aborted while queued
                return
            job.phase = EXECUTING
            job.start_time = datetime.now(UTC)
            job.changed.notify_all()
        outcome = self._runner(job)
        with job.changed:
            if job.phase != EXECUTING:  # aborted while running: drop the result
                return
            job.outcome = outcome
            job.end_time = datetime.now(UTC)
            job.phase = ERROR if outcome.error_message is not None else COMPLETED
            job.changed.notify_all()

    def _expire(self) -> None:
        now = datetime.now(UTC)
        with self._lock:
            for job_id in [j.job_id for j in self._jobs.values() if j.destruction < now]:
                del self._jobs[job_id]

    def shutdown(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.abort(job)
        self._pool.shutdown(wait=False, cancel_futures=True)


def jobs_xml(jobs: list[Job], base_url: str) -> str:
    refs = "".join(
        f"  <uws:jobref id={quoteattr(j.job_id)} xlink:href={quoteattr(f'{base_url}/{j.job_id}')}>"
        f"<uws:phase>{j.phase}</uws:phase></uws:jobref>\n"
        for j in jobs
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<uws:jobs xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1">\n'
        f"{refs}</uws:jobs>\n"
    )
