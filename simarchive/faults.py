"""Fault injection: the ways real archives fail, at a rate per endpoint, reproducibly.

Each request to an endpoint is numbered; whether its n-th request is dropped, refused or
cut short is a pure function of (seed, endpoint, n, fault), so a test that fails can be
rerun with the same faults in the same places even though threads interleave
differently. Expiry is different because it is a property of a URL, not of a request: a
signed URL that has expired stays expired, and only a freshly resolved one can work. So
``files.expired`` decides, per file and per issue of its URL (a pure function of seed, file
and how many URLs that file has been given), whether Datalink hands out a URL that is
already past its lifetime; the file server's own signature check then answers 403.

Faults act on the raw connection (see ``httpcore``): a dropped connection sends nothing at
all, which is what makes pyvo raise the seed tutorial's
``DALServiceError('Connection aborted.', RemoteDisconnected(...))``.

Some real servers do not fail, they hang, and a client without a read timeout hangs with
them: GAVO DaCHS never answers a HEAD on its product and SODA URLs, which is
exactly what fsspec sends before its first read. ``head_stall`` reproduces that on HEAD
requests, ``stall`` on any request, and ``stall_body`` sends the headers and half the body
and then nothing. A held connection stays open (no status line, no close) until the
client gives up or the archive stops; it never holds the accept loop, and ``stop()`` lets
every one of them go. ``range_ignored`` answers a ranged GET with 200 and the whole file,
without ``Accept-Ranges``, as servers without Range support do, so a client that reads
headers with small ranges must notice it is being sent everything.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from obsharvest.simarchive.httpcore import (
    Connection,
    Request,
    Response,
    iter_body,
    text,
    write_body,
)

KINDS_RATE = (
    "drop",
    "unavailable",
    "throttled",
    "truncate",
    "slow_first_byte",
    "expired",
    "head_stall",
    "range_ignored",
    "stall",
    "stall_body",
)
KINDS_VALUE = ("latency", "bandwidth", "retry_after", "first_byte_delay")


@dataclass(frozen=True)
class FaultSpec:
    """Faults of one endpoint. Rates are probabilities per request (0..1)."""

    drop: float = 0.0  # close the connection without any response
    unavailable: float = 0.0  # 503 Service Unavailable with Retry-After
    throttled: float = 0.0  # 429 Too Many Requests with Retry-After
    truncate: float = 0.0  # send the headers and part of the body, then close
    slow_first_byte: float = 0.0  # wait first_byte_delay before the first body byte
    expired: float = 0.0  # share of signed URLs handed out already past their lifetime (403)
    head_stall: float = 0.0  # HEAD accepted and never answered (GAVO DaCHS on product URLs)
    range_ignored: float = 0.0  # a ranged GET gets 200 and the whole body, no Accept-Ranges
    stall: float = 0.0  # any request accepted and never answered
    stall_body: float = 0.0  # headers and part of the body, then nothing (connection open)
    latency: float = 0.0  # seconds added to every request
    bandwidth: float = 0.0  # bytes per second per connection (0: unlimited)
    retry_after: float = 1.0  # seconds announced in Retry-After
    first_byte_delay: float = 2.0

    def __post_init__(self) -> None:
        for name in KINDS_RATE:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate {name}={value} must be between 0 and 1")
        for name in KINDS_VALUE:
            if getattr(self, name) < 0:
                raise ValueError(f"fault value {name}={getattr(self, name)} must not be negative")

    @property
    def active(self) -> bool:
        return self != FaultSpec()


@dataclass(frozen=True)
class FaultPlan:
    """Faults for every endpoint, plus a bandwidth cap shared by all connections."""

    endpoints: Mapping[str, FaultSpec] = field(default_factory=dict)
    total_bandwidth: float = 0.0
    seed: int = 0

    def spec_for(self, endpoint: str) -> FaultSpec:
        """Exact endpoint name first, then its family (``tap`` for ``tap_sync``), then ``*``."""
        for key in (endpoint, endpoint.split("_", 1)[0], "*"):
            if key in self.endpoints:
                return self.endpoints[key]
        return FaultSpec()

    @classmethod
    def parse(cls, items: list[str], *, seed: int = 0) -> FaultPlan:
        """Build a plan from ``endpoint.kind=value`` strings, e.g. ``files.drop=0.2``.

        ``total.bandwidth=2e7`` caps all connections together; ``*.latency=0.02`` applies
        to every endpoint. Raises ValueError naming the offending item.
        """
        specs: dict[str, dict[str, float]] = defaultdict(dict)
        total = 0.0
        known = {f.name for f in fields(FaultSpec)}
        for item in items:
            try:
                key, raw = item.split("=", 1)
                endpoint, kind = key.rsplit(".", 1)
                value = float(raw)
            except ValueError:
                raise ValueError(
                    f"fault {item!r}: expected endpoint.kind=number, e.g. files.drop=0.2"
                ) from None
            if endpoint == "total" and kind == "bandwidth":
                total = value
                continue
            if kind not in known:
                raise ValueError(
                    f"fault {item!r}: unknown kind {kind!r}; known: {', '.join(sorted(known))}"
                )
            specs[endpoint][kind] = value
        try:
            built = {name: replace(FaultSpec(), **values) for name, values in specs.items()}
        except ValueError as exc:
            raise ValueError(f"fault: {exc}") from None
        return cls(built, total, seed)


def draw(seed: int, endpoint: str, number: int, kind: str) -> float:
    """A uniform number in [0, 1) fixed by its arguments (no shared RNG state)."""
    digest = hashlib.blake2b(f"{seed}:{endpoint}:{number}:{kind}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _TokenBucket:
    """A bandwidth cap shared by threads: each write waits for its share of the rate."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / self.rate
            delay = start - now
        if delay > 0:
            time.sleep(delay)


@dataclass
class Decision:
    truncate: bool = False
    stall_body: bool = False
    first_byte_delay: float = 0.0
    bandwidth: float = 0.0


class FaultInjector:
    """Plugs into ``ArchiveHTTPServer``: a before-hook and a body writer."""

    def __init__(self, plan: FaultPlan, classify) -> None:
        self._classify = classify
        self._lock = threading.Lock()
        self.configure(plan)

    def configure(self, plan: FaultPlan) -> None:
        """Switch to another plan; request numbering starts again, so draws repeat."""
        with self._lock:
            self.plan = plan
            self._counters: dict[str, int] = defaultdict(int)
            self._bucket = _TokenBucket(plan.total_bandwidth) if plan.total_bandwidth > 0 else None
            self.injected: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            self._issued: dict[str, int] = defaultdict(int)

    def issue_expired(self, path: str) -> bool:
        """Whether the URL now being signed for ``path`` is handed out already expired.

        The n-th URL issued for a file is drawn from (seed, path, n): independent of the
        order in which threads resolve Datalink, and fresh for every re-resolution.
        """
        with self._lock:
            spec = self.plan.spec_for("files")
            number = self._issued[path]
            self._issued[path] += 1
        if spec.expired and draw(self.plan.seed, f"files:{path}", number, "expired") < spec.expired:
            self._count("files", "expired")
            return True
        return False

    def _count(self, endpoint: str, kind: str) -> None:
        with self._lock:
            self.injected[endpoint][kind] += 1

    def report(self) -> dict[str, dict[str, int]]:
        """How many faults of each kind were injected per endpoint."""
        with self._lock:
            return {e: dict(kinds) for e, kinds in self.injected.items()}

    def before(self, request: Request, conn: Connection) -> Response | None:
        endpoint = self._classify(request.path)
        if endpoint.startswith("_"):  # the test-only endpoints never fail
            return None
        with self._lock:
            plan = self.plan
            number = self._counters[endpoint]
            self._counters[endpoint] += 1
        spec = plan.spec_for(endpoint)
        if not spec.active:
            return None
        if spec.latency:
            time.sleep(spec.latency)
        seed = plan.seed
        if spec.drop and draw(seed, endpoint, number, "drop") < spec.drop:
            self._count(endpoint, "drop")
            conn.drop()
            return None
        if spec.unavailable and draw(seed, endpoint, number, "unavailable") < spec.unavailable:
            self._count(endpoint, "unavailable")
            response = text(503, "service temporarily unavailable (injected fault)")
            response.headers["Retry-After"] = _seconds(spec.retry_after)
            return response
        if spec.throttled and draw(seed, endpoint, number, "throttled") < spec.throttled:
            self._count(endpoint, "throttled")
            response = text(429, "too many requests (injected fault)")
            response.headers["Retry-After"] = _seconds(spec.retry_after)
            return response
        if (
            spec.head_stall
            and request.method == "HEAD"
            and draw(seed, endpoint, number, "head_stall") < spec.head_stall
        ):
            self._count(endpoint, "head_stall")
            conn.hold()
            return None
        if spec.stall and draw(seed, endpoint, number, "stall") < spec.stall:
            self._count(endpoint, "stall")
            conn.hold()
            return None
        if (
            spec.range_ignored
            and request.header("range")
            and draw(seed, endpoint, number, "range_ignored") < spec.range_ignored
        ):
            self._count(endpoint, "range_ignored")
            request.headers.pop("range", None)  # the handler never sees it: 200, whole body
            request.headers.pop("if-range", None)
            conn.state["range_ignored"] = True
        decision = Decision(bandwidth=spec.bandwidth)
        if spec.truncate and draw(seed, endpoint, number, "truncate") < spec.truncate:
            decision.truncate = True
        if spec.stall_body and draw(seed, endpoint, number, "stall_body") < spec.stall_body:
            decision.stall_body = True
        if (
            spec.slow_first_byte
            and draw(seed, endpoint, number, "slow_first_byte") < spec.slow_first_byte
        ):
            decision.first_byte_delay = spec.first_byte_delay
        conn.state["fault"] = decision
        conn.state["endpoint"] = endpoint
        return None

    def before_send(self, request: Request | None, response: Response, conn: Connection) -> None:
        """A server that ignored Range does not advertise it either."""
        if conn.state.get("range_ignored"):
            response.headers.pop("Accept-Ranges", None)
            response.headers.pop("Content-Range", None)

    def write(self, wfile, response: Response, conn: Connection) -> None:
        decision = conn.state.get("fault") or Decision()
        endpoint = str(conn.state.get("endpoint", "?"))
        bucket = self._bucket
        if decision == Decision() and bucket is None:
            write_body(wfile, response, conn)
            return
        limit = response.length
        cut = (decision.truncate or decision.stall_body) and response.length > 1
        if cut:
            limit = max(1, response.length // 2)
            self._count(endpoint, "stall_body" if decision.stall_body else "truncate")
        if decision.first_byte_delay:
            self._count(endpoint, "slow_first_byte")
            time.sleep(decision.first_byte_delay)
        sent = 0
        rates = [r for r in (decision.bandwidth, bucket.rate if bucket else 0.0) if r > 0]
        # small chunks when throttled, so pacing is smooth and the last chunk cannot arrive
        # much earlier than the cap allows
        chunk = max(1024, min(64 * 1024, int(min(rates) / 50))) if rates else 1024 * 1024
        started = time.monotonic()
        for data in iter_body(response, chunk):
            data = data[: limit - sent]
            if decision.bandwidth:  # pace before writing: byte n leaves at start + n/rate
                pause = started + sent / decision.bandwidth - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            if bucket is not None:
                bucket.take(len(data))
            wfile.write(data)
            sent += len(data)
            conn.bytes_sent += len(data)
            if sent >= limit:
                break
        if cut and decision.stall_body:
            wfile.flush()
            conn.hold()  # the rest never comes; the connection stays open
        elif cut:
            wfile.flush()
            conn.drop()


def _seconds(value: float) -> str:
    return str(max(0, round(value)))
