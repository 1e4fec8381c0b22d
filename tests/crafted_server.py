"""A tiny HTTP server whose every route answers exactly what a test tells it to.

The embedded archive speaks the protocols correctly; this one answers wrongly on purpose
(HTML for a VOTable, a body shorter than its Content-Length, a redirect loop, ...), so the
tests can drive obsharvest's real HTTP code at replies no honest archive gives. Stdlib
only (``http.server`` on 127.0.0.1, a free port, a daemon thread).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Reply:
    """What one request gets back.

    ``announce`` overrides Content-Length (announce more than is sent, then close);
    ``ranges`` answers ``Range: bytes=a-b`` with 206 like a static file server.
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    announce: int | None = None
    ranges: bool = False


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


Route = Reply | Callable[[Request], Reply]


class CraftedServer:
    """``server.route("/tap/sync", Reply(...))``; ``server.url("/tap")``; ``server.hits``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # clients hang up on purpose
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # shutdown() is seen between selects: 0.05 s, not socketserver's 0.5 s per server
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> CraftedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str) -> str:
        return self.base_url + path

    def route(self, path: str, reply: Route) -> str:
        """Answer ``path`` (exactly, or every path under it when it ends with ``/*``)."""
        self.routes[path] = reply
        return self.url(path.removesuffix("/*"))

    def _find(self, path: str) -> Route | None:
        if path in self.routes:
            return self.routes[path]
        for pattern, route in self.routes.items():
            if pattern.endswith("/*") and (path + "/").startswith(pattern[:-1]):
                return route
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.hits[request.path] += 1
            self.requests.append(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    method,
                    parts.path,
                    parts.query,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                server._record(request)
                route = server._find(parts.path)
                if route is None:
                    reply = Reply(404, b"no such route", {"Content-Type": "text/plain"})
                else:
                    reply = route(request) if callable(route) else route
                self._send(method, reply)

            def _send(self, method: str, reply: Reply) -> None:
                status, body = reply.status, reply.body
                headers = dict(reply.headers)
                wanted = self.headers.get("Range", "")
                match = _RANGE.match(wanted.strip()) if reply.ranges and status == 200 else None
                if reply.ranges:
                    headers.setdefault("Accept-Ranges", "bytes")
                if match and method != "HEAD":
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else len(body) - 1
                    end = min(end, len(body) - 1)
                    if start >= len(body):
                        status, body = 416, b""
                        headers["Content-Range"] = f"bytes */{len(reply.body)}"
                    else:
                        status, body = 206, body[start : end + 1]
                        headers["Content-Range"] = f"bytes {start}-{end}/{len(reply.body)}"
                self.send_response(status)
                announce = reply.announce if reply.announce is not None else len(body)
                headers.setdefault("Content-Type", "application/octet-stream")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(announce))
                if reply.announce is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)
                    self.wfile.flush()
                if reply.announce is not None:
                    self.close_connection = True

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_HEAD(self) -> None:
                self._serve("HEAD")

        return Handler


# -- replies that look like protocol documents --------------------------------------------

HTML_ERROR_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1><p>The proxy got no answer.</p></body></html>\n"
)


def html(status: int = 200) -> Reply:
    return Reply(status, HTML_ERROR_PAGE, {"Content-Type": "text/html"})


def votable_error(message: str) -> Reply:
    """A TAP/DALI error document: ``QUERY_STATUS=ERROR`` with the service's message."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
        '<RESOURCE type="results">\n'
        f'<INFO name="QUERY_STATUS" value="ERROR">{message}</INFO>\n'
        "</RESOURCE>\n</VOTABLE>\n"
    ).encode()
    return Reply(200, body, {"Content-Type": "application/x-votable+xml"})


DATALINK_FIELDS = (
    ("ID", "char"),
    ("access_url", "char"),
    ("service_def", "char"),
    ("error_message", "char"),
    ("semantics", "char"),
    ("description", "char"),
    ("content_type", "char"),
    ("content_length", "long"),
)


def datalink(rows: list[dict]) -> Reply:
    """A DataLink 1.1 links document with these rows (missing columns empty)."""
    from xml.sax.saxutils import escape

    head = "".join(
        f'<FIELD name="{name}" datatype="{kind}"'
        + (' arraysize="*"' if kind == "char" else "")
        + "/>"
        for name, kind in DATALINK_FIELDS
    )
    body_rows = []
    for row in rows:
        cells = []
        for name, _kind in DATALINK_FIELDS:
            value = row.get(name)
            cells.append(f"<TD>{escape(str(value))}</TD>" if value is not None else "<TD/>")
        body_rows.append("<TR>" + "".join(cells) + "</TR>")
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
        '<RESOURCE type="results"><INFO name="standardID" '
        'value="ivo://ivoa.net/std/DataLink#links-1.1"/>\n'
        f"<TABLE>{head}<DATA><TABLEDATA>{''.join(body_rows)}</TABLEDATA></DATA></TABLE>\n"
        "</RESOURCE>\n</VOTABLE>\n"
    )
    return Reply(200, text.encode(), {"Content-Type": "application/x-votable+xml;content=datalink"})
