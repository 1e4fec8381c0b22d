"""The embedded archive: TAP (sync + UWS async), VOSI, Datalink and signed FITS files.

One process serves everything on one port. URLs the archive hands out for files use a
different host name (``localhost`` rather than ``127.0.0.1``, like the RSP's Datalink
pointing at cloud storage), so clients must not assume data lives with the service.

Real ObsTAP services disagree on what ObsCore's ``access_url`` is, so the
archive speaks each convention (``ArchiveSettings.access_style``) and a client can be
tested against all of them offline:

- ``datalink`` (the RSP): ``{base}/datalink/links?ID=<id>``, Datalink format;
- ``product`` (DaCHS getproduct): ``{base}/product/<file_path>``, no ID, Datalink format;
  it answers 303 to ``{base}/datalink/links?ID=<obs_publisher_did>``;
- ``direct`` (MAST, IRSA): ``{base}/data/<file_path>``, the file itself, permanent and
  unsigned, ``image/fits``;
- ``unlabelled``: the same file URL with a NULL ``access_format`` (the served
  ``Content-Type: application/fits`` is all a client learns);
- ``descriptor``: NULL ``access_url``; Datalink is found only through the result's service
  descriptor, whose ``ID`` parameter references the ``obs_publisher_did`` FIELD.

Datalink can also answer only the first of several IDs, or rows out of ID order, as some
services do. ``/_stats`` counts requests per endpoint and HTTP method (on arrival, so a
request that is never answered still counts), which lets a test assert that a client sent
no HEAD at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote

from obsharvest.simarchive.adql.engine import AdqlError, run_adql
from obsharvest.simarchive.datalink import links_for, links_votable, scramble
from obsharvest.simarchive.descriptors import (
    CUTOUT_SERVICE_ID,
    PROC_SERVICE_ID,
    cutout_descriptor,
    obscore_datalink_descriptor,
    proc_descriptor,
)
from obsharvest.simarchive.dialect import Dialect, plain_error
from obsharvest.simarchive.faults import FaultInjector, FaultPlan
from obsharvest.simarchive.files import SERVED, FitsCache, file_response
from obsharvest.simarchive.httpcore import (
    ArchiveHTTPServer,
    BadRequest,
    Connection,
    Request,
    Response,
    Upload,
    redirect,
    text,
)
from obsharvest.simarchive.obscore import ACCESS_STYLES, DATA_PATH, PRODUCT_PATH
from obsharvest.simarchive.registry import RegistryEntry, registry_tables
from obsharvest.simarchive.signing import UrlSigner
from obsharvest.simarchive.sky.naming import check_authority
from obsharvest.simarchive.sky.survey_sky import Sky, SkyConfig
from obsharvest.simarchive.soda import SodaError, parse_soda_params, write_cutout
from obsharvest.simarchive.sregion_dialect import served_s_region, tap_schema_meta
from obsharvest.simarchive.tapschema import PublishedTable, build_tap_schema
from obsharvest.simarchive.uploads import MAX_UPLOAD_BYTES, load_uploads
from obsharvest.simarchive.uws import (
    ACTIVE_PHASES,
    MAX_WAIT_SECONDS,
    Job,
    JobOutcome,
    JobStore,
    jobs_xml,
)
from obsharvest.simarchive.vosi import availability_xml, capabilities_xml, tables_xml
from obsharvest.simarchive.votable import VOTABLE_CONTENT_TYPE, error_votable, results_votable

log = logging.getLogger(__name__)

XML = "text/xml; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
ALL_GEOMETRY = ("POINT", "CIRCLE", "POLYGON", "BOX", "CONTAINS", "INTERSECTS", "DISTANCE")
# What the RSP's TAPRegExt capabilities advertise: no INTERSECTS, no BOX.
RUBIN_GEOMETRY = ("POINT", "CIRCLE", "POLYGON", "DISTANCE", "CONTAINS")
PROFILES = ("generic", "rubin")
# endpoints that want a bearer token when auth is on (product URLs are a service on the
# service host; /data/ files are public, like the signed ones)
PROTECTED = ("tap", "datalink", "cutout", "product")
DATALINK_MULTI_ID = ("all", "first")
DATALINK_ORDER = ("grouped", "shuffled")
CUTOUT_DIR = "cutouts"  # where SODA results live in the file cache (served like files)
VOTABLE_FORMATS = {
    "votable",
    "application/x-votable+xml",
    "text/xml",
    "votable/td",
    "application/x-votable+xml;serialization=tabledata",
}
BINARY2_FORMATS = {"votable/b2", "application/x-votable+xml;serialization=binary2"}


@dataclass(frozen=True)
class ArchiveSettings:
    """Everything that shapes one archive instance; the CLI and tests build one of these."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 42
    n_visits: int = 120
    binning: int = 10
    cache_dir: str | None = None  # None: a temporary directory removed at stop()
    signed_host: str = "localhost"
    url_lifetime: float = 3600.0
    maxrec_default: int = 100_000
    maxrec_hard: int = 1_000_000
    execution_duration: int = 600
    async_workers: int = 4
    profile: str = "generic"  # "rubin": behave like the RSP as documented
    naming: str = "dp02"  # "dp1": Rubin DP1 collection and subtype names
    token: str | None = None  # when set, TAP/Datalink/SODA require "Authorization: Bearer <token>"
    sync_timeout: float | None = None  # sync queries running longer fail (rubin: 60 s)
    query_delay: float = 0.0  # seconds every query takes, to exercise timeouts and async
    faults: FaultPlan = field(default_factory=FaultPlan)
    # what ObsCore's access_url is: datalink, product, direct, unlabelled or descriptor
    access_style: str = "datalink"
    datalink_multi_id: str = "all"  # "first": a multi-ID Datalink request answers the first
    datalink_order: str = "grouped"  # "shuffled": multi-ID replies' rows out of ID order
    # how the archive reads the standards: one switch per real server's dialect
    dialect: Dialect = field(default_factory=Dialect)
    # RegTAP: the rr.* tables describing these services (none: no rr schema at all)
    registry: tuple[RegistryEntry, ...] = ()
    # a mirror: the same images (seed, files, obs_ids) published under this IVOA authority
    # (e.g. "mirror.example"), which replaces the release's in every obs_publisher_did and
    # ivo:// Datalink ID served; None: the release's own DIDs
    publisher: str | None = None
    # serve ObsCore's obs_creator_did (the release's own DID, as a mirror keeps it);
    # None: only when publisher is set (the RSP serves no such column)
    creator_did: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "registry", tuple(self.registry))
        if self.publisher is not None:
            check_authority(self.publisher)
        if self.creator_did is None:
            object.__setattr__(self, "creator_did", self.publisher is not None)
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r} is not one of {', '.join(PROFILES)}")
        for name, allowed in (
            ("access_style", ACCESS_STYLES),
            ("datalink_multi_id", DATALINK_MULTI_ID),
            ("datalink_order", DATALINK_ORDER),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        if self.n_visits < 1:
            raise ValueError(f"n_visits={self.n_visits} must be at least 1")
        if self.binning < 1:
            raise ValueError(f"binning={self.binning} must be at least 1")
        # a negative duration or port means nothing: refused, not served as if it were 0
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be 0..65535 (0 picks a free one)")
        if not self.url_lifetime > 0:
            raise ValueError(f"url_lifetime={self.url_lifetime:g} must be more than 0 seconds")
        if self.sync_timeout is not None and not self.sync_timeout > 0:
            raise ValueError(f"sync_timeout={self.sync_timeout:g} must be more than 0 seconds")
        if not self.query_delay >= 0:
            raise ValueError(f"query_delay={self.query_delay:g} must be 0 or more seconds")
        if self.sync_timeout is None and self.profile == "rubin":
            object.__setattr__(self, "sync_timeout", 55.0)

    @property
    def geometry_functions(self) -> tuple[str, ...]:
        return RUBIN_GEOMETRY if self.profile == "rubin" else ALL_GEOMETRY

    def sky_config(self) -> SkyConfig:
        return SkyConfig(
            seed=self.seed,
            n_visits=self.n_visits,
            binning=self.binning,
            naming=self.naming,
            publisher=self.publisher,
        )


@dataclass
class EndpointStats:
    requests: int = 0
    bytes: int = 0
    status: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    authorization: int = 0  # requests that carried an Authorization header
    # requests received per HTTP method, counted on arrival (a held request counts too)
    methods: dict[str, int] = field(
        default_factory=lambda: defaultdict(int, {"GET": 0, "HEAD": 0, "POST": 0})
    )


def endpoint_of(path: str) -> str:
    """The counter a request is booked under (``/_stats`` reports these)."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "root"
    if parts[0] == "tap":
        if len(parts) == 1:
            return "tap"
        return {"sync": "tap_sync", "async": "tap_async"}.get(parts[1], f"tap_{parts[1]}")
    return {"datalink": "datalink", "files": "files", "product": "product", "data": "data"}.get(
        parts[0], parts[0]
    )


_IVOA_TABLE = re.compile(r'\bivoa\s*\.\s*"?([A-Za-z_]+)"?', re.IGNORECASE)


class ServerFault(Exception):
    """A query the server breaks on (a 500 for sync, an ERROR job for async), as real
    servers do on shapes their database cannot run."""


def _proc_service_ids(ids: list[str]) -> dict[str, str]:
    """The RESOURCE ID of each asked ID's SODA descriptor: ``procsvc`` as DaCHS names
    its one, numbered when a request asks several IDs (DaCHS answers only the first)."""
    unique = list(dict.fromkeys(ids))
    if len(unique) == 1:
        return {unique[0]: PROC_SERVICE_ID}
    return {ident: f"{PROC_SERVICE_ID}-{n}" for n, ident in enumerate(unique, start=1)}


def _fetch_upload(url: str) -> bytes:
    """Fetch a TAP_UPLOAD table given by URL, refusing anything over the upload limit."""
    import requests

    try:
        with requests.get(url, timeout=10, stream=True) as reply:
            reply.raise_for_status()
            data = reply.raw.read(MAX_UPLOAD_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise AdqlError(f"UPLOAD: cannot fetch {url}: {exc}") from None
    return data


class EmbeddedArchive:
    """Start with ``with EmbeddedArchive(settings) as archive: ...`` or ``start()``/``stop()``."""

    def __init__(self, settings: ArchiveSettings | None = None) -> None:
        self.settings = settings or ArchiveSettings()
        self.sky = Sky(self.settings.sky_config())
        self._http = ArchiveHTTPServer((self.settings.host, self.settings.port), self.handle)
        self._http.send_hooks.append(self._book)
        self._http.after_hooks.append(self._settle)
        self._http.before_hooks.append(self._authorize)
        self.faults = FaultInjector(self.settings.faults, endpoint_of)
        self._http.before_hooks.insert(0, self.faults.before)
        self._http.before_hooks.insert(0, self._arrived)
        self._http.send_hooks.insert(0, self.faults.before_send)
        self._http.body_writer = self.faults.write
        port = self._http.port
        self.base_url = f"http://{self.settings.host}:{port}"
        self.signed_base_url = f"http://{self.settings.signed_host}:{port}"
        self.tap_url = f"{self.base_url}/tap"
        self.datalink_url = f"{self.base_url}/datalink/links"
        self.signer = UrlSigner(self.settings.url_lifetime)
        self.soda_url = f"{self.base_url}/cutout/sync"
        if self.settings.cache_dir:
            self._tmp = None
            s = self.settings
            cache = Path(s.cache_dir) / f"seed{s.seed}-{s.naming}-bin{s.binning}"
        else:
            self._tmp = tempfile.mkdtemp(prefix="simarchive-")
            cache = Path(self._tmp)
        try:
            self.files = FitsCache(self.sky, cache, self.settings.dialect.files)
            self._load_sky(self.sky)
            self.jobs = JobStore(self._run_job, workers=self.settings.async_workers)
        except BaseException:  # Ctrl-C or SIGTERM during start-up: leave no directory
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._http.server_close()
            raise
        self._stats: dict[str, EndpointStats] = defaultdict(EndpointStats)
        self._stats_lock = threading.Lock()

    def _load_sky(self, sky: Sky) -> None:
        """Publish a sky: products, ObsCore and TAP_SCHEMA (swapped whole, so a request in
        flight sees either the old archive or the new one)."""
        obscore = PublishedTable(
            "ivoa",
            "ivoa.obscore" if self.settings.dialect.table_case == "lower" else "ivoa.ObsCore",
            "Observation metadata in the ObsTAP relational realization of the IVOA ObsCore data model",
            sky.obscore_table(
                self.datalink_url,
                access_style=self.settings.access_style,
                base_url=self.base_url,
                file_suffix=self.files.served.url_suffix,
                creator_did=bool(self.settings.creator_did),
            ),
            1,
        )
        # TAP_SCHEMA and /tables describe s_region as served (a DALI array under dali)
        served = tap_schema_meta(self.settings.dialect.s_region_dialect)
        obscore.data["s_region"].meta.update(served)
        own = [obscore]
        if self.settings.registry:  # RegTAP's rr schema, only when asked to be a registry
            own += registry_tables(self.settings.registry, self.tap_url)
        published = [*own, *build_tap_schema(own)]
        self._products_by_path = {self.files.url_path(p): p for p in sky.products}
        self._products_by_did = {p.obs_publisher_did: p for p in sky.products}
        self.files.sky = sky
        self.published = published
        self.tables = {t.key: t.data for t in published}
        self.sky = sky

    def add_visits(self, n: int) -> int:
        """Time moves on: ``n`` new visits are observed and published (deterministically).

        Returns the number of ObsCore rows added. Earlier images keep their IDs and files.
        """
        if n < 1:
            raise ValueError("add at least one visit")
        config = self.sky.config
        before = len(self.sky)
        self._load_sky(Sky(replace(config, extra_visits=config.extra_visits + n)))
        return len(self.sky) - before

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> EmbeddedArchive:
        self._http.start()
        log.info("embedded archive serving TAP at %s", self.tap_url)
        return self

    def stop(self) -> None:
        self.jobs.shutdown()
        self._http.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def __enter__(self) -> EmbeddedArchive:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection for tests and benchmarks ----------------------------------------
    def stats(self) -> dict[str, dict]:
        with self._stats_lock:
            return {
                name: {
                    "requests": s.requests,
                    "bytes": s.bytes,
                    "status": dict(s.status),
                    "authorization": s.authorization,
                    "methods": dict(s.methods),
                }
                for name, s in self._stats.items()
            }

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats.clear()

    def set_faults(self, plan: FaultPlan) -> None:
        """Change the injected faults of a running archive (tests switch them per case)."""
        self.faults.configure(plan)

    def truth(self, ra: float, dec: float) -> frozenset[str]:
        """``obs_publisher_did`` of every image whose pixels (header WCS) contain the point."""
        return frozenset(self.sky.product(pid).obs_publisher_did for pid in self.sky.truth(ra, dec))

    def creator_truth(self, ra: float, dec: float) -> frozenset[str]:
        """:meth:`truth` as creator DIDs: equal for an archive and its mirrors, so a test
        can compare what a run over several of them stored, one image once."""
        return frozenset(self.sky.product(pid).obs_creator_did for pid in self.sky.truth(ra, dec))

    def creator_dids(self) -> dict[str, str]:
        """Every ``obs_publisher_did`` served -> the image's ``obs_creator_did`` (the
        release's own DID: the same string when this archive is no mirror)."""
        return {p.obs_publisher_did: p.obs_creator_did for p in self.sky.products}

    def _arrived(self, request: Request, conn: Connection) -> None:
        """Count a request by method as it arrives, before any fault may hold it."""
        with self._stats_lock:
            self._stats[endpoint_of(request.path)].methods[request.method] += 1

    def _book(self, request: Request | None, response: Response, conn: Connection) -> None:
        """Count a response before it is sent, with the bytes it announces."""
        with self._stats_lock:
            stats = self._stats[endpoint_of(request.path if request else "/")]
            stats.requests += 1
            stats.status[response.status] += 1
            stats.bytes += conn.planned_bytes
            conn.state["booked"] = stats  # settled there, even if the stats are reset meanwhile
            if request is not None and request.header("authorization"):
                stats.authorization += 1

    def _settle(self, request: Request, response: Response | None, conn: Connection) -> None:
        """After sending: book dropped connections, and bytes a cut-short body never sent."""
        with self._stats_lock:
            stats = self._stats[endpoint_of(request.path)]
            if response is None:
                stats.requests += 1
                stats.status[0] += 1
                if request.header("authorization"):
                    stats.authorization += 1
            else:  # where it was booked: a reset since then must not lose these bytes
                booked = conn.state.get("booked", stats)
                booked.bytes -= conn.planned_bytes - conn.bytes_sent  # type: ignore[attr-defined]

    # -- routing -----------------------------------------------------------------------
    def _authorize(self, request: Request, conn: Connection) -> Response | None:
        """The RSP's gate: services need a bearer token; signed file URLs do not."""
        token = self.settings.token
        if not token or endpoint_of(request.path).split("_")[0] not in PROTECTED:
            return None
        header = request.header("authorization") or ""
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token):
            return None
        response = text(401, "authentication required: send Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="simarchive"'
        if header:
            response.headers["WWW-Authenticate"] += ', error="invalid_token"'
        return response

    def handle(self, request: Request) -> Response:
        parts = [unquote(p) for p in request.path.split("/") if p]
        if not parts:
            return text(200, f"simarchive: TAP at {self.tap_url}\n")
        head = parts[0]
        if head == "tap":
            return self._tap(request, parts[1:])
        if head == "datalink" and parts[1:] == ["links"]:
            return self._datalink(request)
        if head == "files":
            return self._file(request)
        if head == "data":
            return self._data(request)
        if head == "product":
            return self._product(request)
        if head == "cutout" and parts[1:] == ["sync"]:
            return self._cutout(request)
        if head == "_stats":
            if parts[1:] == ["reset"] and request.method == "POST":
                self.reset_stats()
                return text(200, "reset")
            body = {"endpoints": self.stats(), "faults": self.faults.report()}
            return Response(200, json.dumps(body).encode(), "application/json")
        if head == "_faults" and request.method == "POST":
            try:
                self.set_faults(
                    FaultPlan.parse(request.params("fault"), seed=int(request.param("seed", "0")))
                )
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            return text(200, "faults set")
        if head == "_truth":
            return self._truth(request)
        if head == "_visits" and request.method == "POST":
            try:
                added = self.add_visits(int(request.param("n", "1")))
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            return Response(200, json.dumps({"rows_added": added}).encode(), "application/json")
        return text(404, f"no such resource: {request.path}")

    def _tap(self, request: Request, parts: list[str]) -> Response:
        if not parts:
            return text(200, "TAP 1.1 service: sync, async, tables, capabilities, availability")
        name, rest = parts[0], parts[1:]
        if name == "sync" and not rest:
            return self._sync(request)
        if name == "async":
            return self._async(request, rest)
        if rest:
            return text(404, f"no such resource: {request.path}")
        if name == "capabilities":
            s = self.settings
            return Response(
                200,
                capabilities_xml(
                    self.tap_url,
                    geometry_functions=s.geometry_functions,
                    maxrec_default=s.maxrec_default,
                    maxrec_hard=s.maxrec_hard,
                    execution_duration=s.execution_duration,
                    retention_period=7 * 86400,
                    upload_limit_bytes=32 * 1024 * 1024,
                    untyped=s.dialect.capabilities == "untyped",
                    upload=s.dialect.upload == "on",
                ).encode(),
                XML,
            )
        if name == "tables":
            return Response(200, tables_xml(self.published).encode(), XML)
        if name == "availability":
            return Response(200, availability_xml().encode(), XML)
        return text(404, f"no such resource: {request.path}")

    # -- queries -----------------------------------------------------------------------
    def execute(
        self, params: list[tuple[str, str]], files: dict[str, Upload] | None = None
    ) -> tuple[bytes, str | None]:
        """Run a TAP query from its DALI parameters: (VOTable, error message or None)."""
        lookup = {}
        for key, value in params:
            lookup[key.upper()] = value
        try:
            lang = lookup.get("LANG", "ADQL")
            if not lang.upper().startswith("ADQL"):
                raise AdqlError(f"LANG={lang} is not supported; use ADQL")
            request = lookup.get("REQUEST", "doQuery")
            if request.lower() != "doquery":
                raise AdqlError(f"REQUEST={request} is not supported; use doQuery")
            query = lookup.get("QUERY")
            if not query or not query.strip():
                raise AdqlError("missing QUERY parameter")
            fmt = (
                (lookup.get("RESPONSEFORMAT") or lookup.get("FORMAT") or "votable").strip().lower()
            )
            if fmt not in VOTABLE_FORMATS | BINARY2_FORMATS:
                raise AdqlError(f"RESPONSEFORMAT={fmt} is not supported; use votable")
            maxrec = self._maxrec(lookup.get("MAXREC"))
            if self.settings.query_delay:
                time.sleep(self.settings.query_delay)
            disabled = frozenset(ALL_GEOMETRY) - set(self.settings.geometry_functions)
            uploads = [v for k, v in params if k.upper() == "UPLOAD"]
            tables = self.tables
            if uploads:
                tables = {**self.tables, **load_uploads(uploads, files or {}, _fetch_upload)}
            self._dialect_refuses(query, uploads)
            result = run_adql(query, tables, maxrec, disabled_functions=disabled)
            # CONTAINS ran against the stored region: only the served value changes
            result.table = served_s_region(result.table, self.settings.dialect.s_region_dialect)
            if self.settings.dialect.table_case == "upper":  # a back end that shouts
                result.table.rename_columns(
                    result.table.colnames, [c.upper() for c in result.table.colnames]
                )
            descriptors, ids = self._result_descriptors(result.table.colnames)
            tabledata = self.settings.dialect.serialization == "tabledata"
            body = results_votable(
                result.table,
                overflow=result.overflow,
                binary=fmt in BINARY2_FORMATS and not tabledata,
                field_ids=ids,
                resources=descriptors,
                status_last=tabledata,
                version="1.3" if tabledata else None,
            )
            return body, None
        except AdqlError as exc:
            if self.settings.dialect.errors == "text":
                said = plain_error(str(exc))
                return (said + "\n").encode(), said
            return error_votable(str(exc)), str(exc)

    @property
    def _result_type(self) -> str:
        """``serialization=tabledata`` servers label every result plain XML."""
        if self.settings.dialect.serialization == "tabledata":
            return "application/xml"
        return VOTABLE_CONTENT_TYPE

    @property
    def _error_type(self) -> str:
        """``errors=text`` servers answer errors as plain text, not as DALI VOTables."""
        return TEXT if self.settings.dialect.errors == "text" else VOTABLE_CONTENT_TYPE

    def _dialect_refuses(self, query: str, uploads: list[str]) -> None:
        """What a server of this dialect cannot run: a case-sensitive table name, an
        upload it does not take, an upload joined on CONTAINS it breaks on, too many ORs."""
        d = self.settings.dialect
        if d.table_case == "lower":
            for name in _IVOA_TABLE.findall(query):
                if name.lower() == "obscore" and name != "obscore":
                    raise AdqlError(f"Table ivoa.{name} not found")
        if uploads and d.upload == "off":
            raise AdqlError("UPLOAD is not supported by this service")
        if uploads and d.upload_join == "broken" and re.search(r"\bCONTAINS\b", query, re.I):
            raise ServerFault("java.lang.NullPointerException in spatial join")
        if d.or_limit and len(re.findall(r"\bOR\b", query, re.I)) + 1 > d.or_limit:
            raise AdqlError(f"query too complex: more than {d.or_limit} OR-ed conditions")

    def _result_descriptors(self, columns: list[str]) -> tuple[tuple[str, ...], frozenset[str]]:
        """The Datalink descriptor ObsCore results carry, in the profile's shape.

        With ``access_style="descriptor"`` it is the only way to Datalink, so even the rubin
        profile then references the ``obs_publisher_did`` column.
        """
        if self.settings.profile == "rubin" and self.settings.access_style != "descriptor":
            if any(c.lower() == "access_url" for c in columns):
                return (obscore_datalink_descriptor(self.datalink_url, rubin=True),), frozenset()
            return (), frozenset()
        did = next((c for c in columns if c.lower() == "obs_publisher_did"), None)
        if did is not None:  # the FIELD as served (table_case=upper: shouted), ID = its name
            return (
                (obscore_datalink_descriptor(self.datalink_url, rubin=False, ref=did),),
                frozenset({did}),
            )
        return (), frozenset()

    def _maxrec(self, value: str | None) -> int:
        if value is None or value == "":  # a default above the hard limit is cut to it
            return min(self.settings.maxrec_default, self.settings.maxrec_hard)
        try:
            maxrec = int(value)
        except ValueError:
            raise AdqlError(f"MAXREC={value!r} is not an integer") from None
        if maxrec < 0:
            raise AdqlError(f"MAXREC={maxrec} must not be negative")
        return min(maxrec, self.settings.maxrec_hard)

    def _sync(self, request: Request) -> Response:
        if self.settings.dialect.sync == "post" and request.method != "POST":
            response = text(405, "this service takes TAP queries by POST only")
            response.headers["Allow"] = "POST"
            return response
        if request.method not in ("GET", "POST"):
            return text(405, "use GET or POST")
        started = time.monotonic()
        try:
            body, error = self.execute([*request.query, *request.form], request.files)
        except ServerFault as exc:  # what a server that breaks on a query answers
            return text(500, f"Internal Server Error: {exc}")
        limit = self.settings.sync_timeout
        if limit is not None and time.monotonic() - started > limit:
            # what a gateway in front of a real service answers: HTML, not VOTable
            return Response(
                504,
                b"<html><head><title>504 Gateway Time-out</title></head><body>"
                b"<h1>504 Gateway Time-out</h1></body></html>",
                "text/html",
            )
        if error:
            return Response(400, body, self._error_type)
        return Response(200, body, self._result_type)

    def _run_job(self, job: Job) -> JobOutcome:
        try:
            body, error = self.execute(job.parameters, job.uploads)
        except ServerFault as exc:
            said = f"Internal Server Error: {exc}"
            return JobOutcome(error_message=said, error_document=error_votable(said))
        if error:
            return JobOutcome(error_message=error, error_document=body)
        return JobOutcome(result=body)

    def _start(self, job: Job) -> None:
        """``async=inline`` servers run the job inside the request that says RUN, so the
        303 that answers it leads to a job already COMPLETED or ERROR."""
        if self.settings.dialect.async_ == "inline":
            self.jobs.run_inline(job)
        else:
            self.jobs.start(job)

    def _async(self, request: Request, rest: list[str]) -> Response:
        if self.settings.dialect.async_ == "off":  # sync-only services have no UWS at all
            return text(404, f"no such resource: {request.path}")
        base = f"{self.tap_url}/async"
        if not rest:
            if request.method == "POST":
                params = [*request.query, *request.form]
                job = self.jobs.create(params, uploads=request.files)
                run_asked = (request.param("PHASE") or "").upper() == "RUN"
                if run_asked and self.settings.dialect.async_ != "deferred":
                    self._start(job)
                return redirect(f"{base}/{job.job_id}")
            return Response(200, jobs_xml(self.jobs.list(), base).encode(), XML)
        job = self.jobs.get(rest[0])
        if job is None:
            return text(404, f"no such job: {rest[0]}")
        job_url = f"{base}/{job.job_id}"
        sub = rest[1:]
        if not sub:
            if request.method == "DELETE" or (
                request.method == "POST" and (request.param("ACTION") or "").upper() == "DELETE"
            ):
                self.jobs.delete(job.job_id)
                return redirect(base)
            if request.method == "POST":  # UWS 1.1: parameters may be POSTed to the job
                return self._post_parameters(request, job, job_url)
            self._block(request, job)
            return Response(200, job.to_xml(job_url).encode(), XML)
        what = sub[0]
        if what == "phase":
            if request.method == "POST":
                phase = (request.param("PHASE") or "").upper()
                if phase == "RUN":
                    self._start(job)
                elif phase == "ABORT":
                    self.jobs.abort(job)
                else:
                    raise BadRequest(f"PHASE={phase or '(missing)'} is not RUN or ABORT")
                return redirect(job_url)
            return text(200, job.phase)
        if what == "results":
            if sub[1:] == ["result"]:
                if job.phase != "COMPLETED" or job.outcome is None or job.outcome.result is None:
                    return text(404, f"job {job.job_id} has no result (phase {job.phase})")
                return Response(200, job.outcome.result, self._result_type)
            xml = job.to_xml(job_url)
            start, end = xml.find("<uws:results>"), xml.find("</uws:results>")
            body = '<?xml version="1.0" encoding="UTF-8"?>\n' + xml[start:end] + "</uws:results>\n"
            body = body.replace(
                "<uws:results>",
                '<uws:results xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
                'xmlns:xlink="http://www.w3.org/1999/xlink">',
                1,
            )
            return Response(200, body.encode(), XML)
        if what == "error":
            if job.phase != "ERROR" or job.outcome is None:
                return text(404, f"job {job.job_id} has no error (phase {job.phase})")
            return Response(200, job.outcome.error_document or b"", self._error_type)
        if what == "parameters":
            if request.method == "POST":
                return self._post_parameters(request, job, job_url)
            xml = job.to_xml(job_url)
            start, end = xml.find("<uws:parameters>"), xml.find("</uws:parameters>")
            return Response(
                200,
                (xml[start:end] + "</uws:parameters>\n")
                .replace(
                    "<uws:parameters>",
                    '<uws:parameters xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0">',
                    1,
                )
                .encode(),
                XML,
            )
        if what in ("executionduration", "destruction", "quote", "owner"):
            return self._job_attribute(request, job, job_url, what)
        return text(404, f"no such resource: {request.path}")

    def _post_parameters(self, request: Request, job: Job, job_url: str) -> Response:
        if job.phase != "PENDING":
            raise BadRequest(
                f"job {job.job_id} is {job.phase}; parameters can only change while PENDING"
            )
        job.parameters.extend([*request.query, *request.form])
        job.uploads.update(request.files)
        return redirect(job_url)

    def _job_attribute(self, request: Request, job: Job, job_url: str, what: str) -> Response:
        from datetime import datetime

        if request.method == "POST":
            value = request.param(what.upper())
            if value is None:
                raise BadRequest(f"missing {what.upper()} parameter")
            if what == "executionduration":
                try:
                    job.execution_duration = min(int(value), self.settings.execution_duration)
                except ValueError:
                    raise BadRequest(f"EXECUTIONDURATION={value!r} is not an integer") from None
            elif what == "destruction":
                try:
                    job.destruction = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    raise BadRequest(f"DESTRUCTION={value!r} is not an ISO 8601 time") from None
            else:
                raise BadRequest(f"{what} cannot be changed")
            return redirect(job_url)
        values = {
            "executionduration": str(job.execution_duration),
            "destruction": job.destruction.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "quote": "",
            "owner": job.owner or "",
        }
        return text(200, values[what])

    def _block(self, request: Request, job: Job) -> None:
        """UWS 1.1 WAIT: hold the request while the job is active and unchanged."""
        wait = request.param("WAIT")
        if wait is None or job.phase not in ACTIVE_PHASES:
            return
        try:
            seconds = float(wait)
        except ValueError:
            raise BadRequest(f"WAIT={wait!r} is not a number") from None
        seconds = MAX_WAIT_SECONDS if seconds < 0 else min(seconds, MAX_WAIT_SECONDS)
        wanted = (request.param("PHASE") or job.phase).upper()
        job.wait_for_change(seconds, from_phase=wanted)

    # -- datalink and files ---------------------------------------------------------------
    def _datalink(self, request: Request) -> Response:
        ids = request.params("ID")
        if not ids:
            body = error_votable("UsageFault: missing ID parameter")
            return Response(400, body, VOTABLE_CONTENT_TYPE)
        if self.settings.datalink_multi_id == "first":
            ids = ids[:1]  # what services without multi-ID support do: the rest is ignored
        # soda=proc: SODA as GAVO DaCHS offers it, a #proc row per ID naming that ID's
        # own descriptor (the ID as its value), and no #cutout row
        procs = _proc_service_ids(ids) if self.settings.dialect.soda == "proc" else None
        links = links_for(
            ids,
            self._product_by_id,
            self._sign,
            self.files.served_size,
            cutout_service=CUTOUT_SERVICE_ID,
            content_type=self.files.served.content_type,
            proc_services=procs,
        )
        if self.settings.datalink_order == "shuffled":
            links = scramble(links, self.settings.seed)
        if procs is None:
            descriptors = (cutout_descriptor(self.soda_url, ids),)
        else:
            descriptors = tuple(
                proc_descriptor(self.soda_url, ident, resource)
                for ident, resource in procs.items()
                if self._product_by_id(ident) is not None
            )
        return Response(200, links_votable(links, descriptors), VOTABLE_CONTENT_TYPE)

    def _product_by_id(self, ident: str):
        """Datalink IDs are the butler-style IDs in access_url, or obs_publisher_did."""
        try:
            return self.sky.product(ident)
        except KeyError:
            return self._products_by_did.get(ident)

    def _sign(self, product) -> str:
        path = f"/files/{self.files.url_path(product)}"
        stale = self.faults.issue_expired(path)  # the injected 'files.expired' fault
        return self.signer.sign(self.signed_base_url, path, lifetime=-60 if stale else None)

    def _file(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return text(405, "files are read-only")
        path = request.path
        refusal = self.signer.check(
            unquote(path), request.param("Signature"), request.param("Expires")
        )
        if refusal:
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                f"<Message>{refusal}</Message></Error>"
            ).encode()
            return Response(403, body, "application/xml")
        rel = unquote(path)[len("/files/") :]
        product = self._products_by_path.get(rel)
        served = self.files.served
        if product is not None:
            file_path, etag = self.files.ensure(product)
        elif rel.startswith(CUTOUT_DIR + "/") and (found := self.files.existing(rel)):
            file_path, etag = found
            served = SERVED["fits"]  # SODA writes plain FITS whatever the archive's files
        else:
            return text(404, f"no such file: {path}")
        return file_response(
            file_path, etag, request.header("range"), request.header("if-none-match"), served
        )

    def _data(self, request: Request) -> Response:
        """Permanent, unsigned file URLs (``direct``/``unlabelled``), served like files."""
        if request.method not in ("GET", "HEAD"):
            return text(405, "files are read-only")
        product = self._products_by_path.get(unquote(request.path)[len(DATA_PATH) :])
        if product is None:
            return text(404, f"no such file: {request.path}")
        file_path, etag = self.files.ensure(product)
        return file_response(
            file_path,
            etag,
            request.header("range"),
            request.header("if-none-match"),
            self.files.served,
        )

    def _product(self, request: Request) -> Response:
        """DaCHS's getproduct pattern: a URL without ID that redirects to the Datalink."""
        if request.method not in ("GET", "HEAD"):
            return text(405, "use GET")
        product = self._products_by_path.get(unquote(request.path)[len(PRODUCT_PATH) :])
        if product is None:
            return text(404, f"no such product: {request.path}")
        did = urllib.parse.quote(product.obs_publisher_did, safe="")
        return redirect(f"{self.datalink_url}?ID={did}")

    def _cutout(self, request: Request) -> Response:
        """SODA sync, as the RSP serves it: one ID, one shape, a redirect to the result;
        with ``soda=proc`` as DaCHS' ``dlget`` does, the cutout itself in the reply."""
        try:
            ident, shape = parse_soda_params([*request.query, *request.form])
        except SodaError as exc:
            return text(exc.status, str(exc))
        product = self._product_by_id(ident)
        if product is None:
            return text(404, f"NotFoundFault: {ident} is not a known dataset")
        source, _ = self.files.ensure_plain(product)  # cut from the uncompressed file
        digest = hashlib.sha1(f"{product.id}|{shape}".encode()).hexdigest()[:24]
        rel = f"{CUTOUT_DIR}/{digest}.fits"
        try:
            self.files.ensure_derived(
                rel, lambda tmp: write_cutout(str(source), shape, tmp, dataset_id=ident)
            )
        except SodaError as exc:
            return text(exc.status, str(exc))
        if self.settings.dialect.soda == "proc":
            path, etag = self.files.ensure_derived(rel, lambda tmp: None)  # made just above
            return file_response(path, etag, None, None)
        return redirect(self.signer.sign(self.signed_base_url, f"/files/{rel}"))

    def _truth(self, request: Request) -> Response:
        try:
            ra, dec = float(request.param("ra", "")), float(request.param("dec", ""))
        except ValueError:
            raise BadRequest("give ra and dec in degrees") from None
        dids = sorted(self.truth(ra, dec))
        creators = sorted(self.creator_truth(ra, dec))
        body = {"ra": ra, "dec": dec, "obs_publisher_did": dids, "obs_creator_did": creators}
        return Response(200, json.dumps(body).encode(), "application/json")
