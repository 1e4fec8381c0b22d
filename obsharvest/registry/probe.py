"""How many images each service has for the targets: a cheap count, bounded in time.

Each service is asked in its own daemon thread, so one that refuses connections is
reported at once and one that accepts and never answers is reported when its time is up,
while the others go on. Every request carries the time limit as its connect and read
timeout, and the probe as a whole is given up at the limit (plus a short grace): a
thread still waiting then is left behind and ends with its own timeout.

The query is the library's: the service's capabilities and ObsCore table name are read
as a harvest reads them (``probe_features``: no INTERSECTS on the RSP, ``ivoa.obscore`` on
case-sensitive servers), and the targets go in the harvest's OR-batches
(``obscore_query``), counted with ``COUNT(*)``. Images per band come from Rubin's
``lsst_band`` column (grouped in the same query); a service without it is counted
without bands (ObsCore's ``em_min``/``em_max`` give no band names). Rows are counted per
batch: an image holding targets of two batches counts twice. For targets with a radius on
a service without INTERSECTS the count is an upper bound (the harvest's centre-distance
pre-filter), marked ``approximate``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import requests
import urllib3

from obsharvest.errors import AdqlValueError, ObsharvestError, QueryError
from obsharvest.models import Target
from obsharvest.net.http import ServiceSession
from obsharvest.net.retry import RetryPolicy, one_line
from obsharvest.query.adql import Constraints, obscore_query
from obsharvest.query.capabilities import ServiceFeatures, probe_features
from obsharvest.query.obscore import QueryOptions, run_query
from obsharvest.query.service import TapService

BAND_COLUMN = "lsst_band"
IMAGES = Constraints(extra_where="dataproduct_type = 'image'", band_column=BAND_COLUMN)
BATCH = 50  # targets per OR-batch (the harvest's default)
WORKERS = 16  # services asked at once
GRACE = 1.0  # seconds past its limit a probe is given before it is reported silent


@dataclass(frozen=True)
class Probe:
    """What one service answered: rows (None when it could not be asked) and why not."""

    tap_url: str
    rows: int | None = None
    bands: dict[str, int] = field(default_factory=dict)  # empty: no band column
    seconds: float = 0.0
    problem: str | None = None
    approximate: bool = False  # radius targets without INTERSECTS: an upper bound

    @property
    def answered(self) -> bool:
        return self.problem is None


def probe_service(
    tap_url: str, targets: Sequence[Target], *, timeout: float = 30.0, batch: int = BATCH
) -> Probe:
    """Count the service's ObsCore images for ``targets``; never raises for the service's
    failures (they become ``problem``)."""
    started = time.monotonic()
    session = ServiceSession(None, [tap_url], timeout=(timeout, timeout))
    service = TapService(tap_url, session)
    once = RetryPolicy(attempts=1, deadline=timeout)
    try:
        features = probe_features(service, once)
        options = QueryOptions(mode="sync", retry=once)
        rows = 0
        bands: dict[str, int] = {}
        for start in range(0, len(targets), batch):
            n, counted = _count(service, targets[start : start + batch], features, options)
            rows += n
            for band, k in counted.items():
                bands[band] = bands.get(band, 0) + k
    except Exception as exc:  # noqa: BLE001 - the service's failure is the answer
        return Probe(tap_url, seconds=time.monotonic() - started, problem=_why(exc, timeout))
    approximate = not features.intersects and any(t.radius for t in targets)
    return Probe(tap_url, rows, bands, time.monotonic() - started, None, approximate)


def _count(
    service: TapService,
    targets: Sequence[Target],
    features: ServiceFeatures,
    options: QueryOptions,
) -> tuple[int, dict[str, int]]:
    """One batch: grouped by band when the table has the column, else one count."""

    def query(columns: str) -> str:
        return obscore_query(
            targets,
            IMAGES,
            intersects=features.intersects,
            columns=columns,
            obscore=features.obscore_table,
        )

    try:
        grouped = f"{query(f'{BAND_COLUMN}, COUNT(*) AS n')} GROUP BY {BAND_COLUMN}"
        table, _ = run_query(service, grouped, options)
    except QueryError:  # no band column (or no GROUP BY): the plain count
        table, _ = run_query(service, query("COUNT(*) AS n"), options)
        return int(table[table.colnames[0]][0]), {}
    band, count = table.colnames[0], table.colnames[1]
    bands = {str(row[band]): int(row[count]) for row in table}
    return sum(bands.values()), bands


def _why(exc: BaseException, timeout: float) -> str:
    """Why a service could not be asked, in a few words."""
    chain = _chain(exc)
    # first: urllib3's NewConnectionError (a refusal) is a kind of ConnectTimeoutError
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in str(exc).lower():
        return "connection refused"
    if any(isinstance(e, requests.ConnectTimeout) for e in chain):
        return f"no connection within {timeout:g} s"
    read_timeouts = (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)
    if any(isinstance(e, read_timeouts) for e in chain):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect: {one_line(exc)}"
    if isinstance(exc, (ObsharvestError, AdqlValueError)):
        return " ".join(str(exc).split())[:300]
    return one_line(exc)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        nested = (
            current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        )
        current = (
            current.__cause__ or current.__context__ or nested or getattr(current, "reason", None)
        )
    return seen


@dataclass
class _Board:
    """The probes' results as they come in, and when each began (thread-safe)."""

    count: int
    results: dict[int, Probe] = field(default_factory=dict)
    began: dict[int, float] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def begin(self, index: int) -> None:
        with self.changed:
            self.began[index] = time.monotonic()
            self.changed.notify_all()

    def finish(self, index: int, probe: Probe) -> None:
        with self.changed:
            self.results.setdefault(index, probe)  # a probe given up on stays given up
            self.changed.notify_all()


def probe_all(
    tap_urls: Sequence[str],
    targets: Sequence[Target],
    *,
    timeout: float = 30.0,
    workers: int = WORKERS,
    batch: int = BATCH,
) -> list[Probe]:
    """Probe every service in parallel (``workers`` at a time); one Probe per URL, in order.
    A probe not done ``timeout`` (+ a short grace) after it began is reported silent."""
    board = _Board(len(tap_urls))
    slots = threading.Semaphore(max(1, workers))

    def work(index: int, url: str) -> None:
        with slots:
            board.begin(index)
            board.finish(index, probe_service(url, targets, timeout=timeout, batch=batch))

    for index, url in enumerate(tap_urls):
        threading.Thread(target=work, args=(index, url), name=f"probe-{index}", daemon=True).start()
    with board.changed:
        while len(board.results) < board.count:
            _give_up_late(board, tap_urls, timeout)
            board.changed.wait(timeout=_next_deadline(board, timeout))
    return [board.results[i] for i in range(board.count)]


def _give_up_late(board: _Board, tap_urls: Sequence[str], timeout: float) -> None:
    now = time.monotonic()
    for index, began in board.began.items():
        if index not in board.results and now - began >= timeout + GRACE:
            board.results[index] = Probe(
                tap_urls[index], seconds=now - began, problem=f"no answer within {timeout:g} s"
            )


def _next_deadline(board: _Board, timeout: float) -> float | None:
    """Seconds until the next running probe is due; None: wait for news."""
    now = time.monotonic()
    due = [
        began + timeout + GRACE - now
        for index, began in board.began.items()
        if index not in board.results
    ]
    return max(0.01, min(due)) if due else None
