"""A small threaded HTTP/1.1 server with full control over the connection.

The archive is built on the standard library's ``http.server`` rather than an ASGI stack
because the fault injection this archive must offer (drop a connection with no response,
truncate a body mid-stream, throttle bandwidth, delay the first byte, hold a connection
open without ever answering) needs the raw socket, which ASGI servers hide. Handlers are
plain functions ``Request -> Response``.

The server keeps track of its request threads and their sockets because a held
connection (a real archive that never answers a HEAD, say) must not outlive ``stop()``:
stopping lets every held connection go, shuts down every client socket still open (idle
keep-alive ones included) and joins the request threads with a deadline, so a test that
stops an archive gets its threads back and the port closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024  # TAP_UPLOAD tables are small; refuse anything silly
STOP_POLL = 0.05  # s between the serving loop's looks for stop() (see ArchiveHTTPServer.start)


@dataclass
class Upload:
    """One file part of a multipart/form-data body (TAP_UPLOAD's inline tables)."""

    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    form: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes = b""
    files: dict[str, Upload] = field(default_factory=dict)

    def params(self, name: str) -> list[str]:
        """All values of a parameter, name matched case-insensitively as DALI requires."""
        key = name.lower()
        return [v for k, v in (*self.query, *self.form) if k.lower() == key]

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.params(name)
        return values[-1] if values else default

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass
class FileBody:
    """A byte range of a file on disk, streamed without loading it into memory."""

    path: str
    start: int
    length: int


@dataclass
class Response:
    status: int = 200
    body: bytes | FileBody = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.body.length if isinstance(self.body, FileBody) else len(self.body)


def text(status: int, message: str) -> Response:
    return Response(status, (message.rstrip("\n") + "\n").encode())


def redirect(location: str, status: int = 303) -> Response:
    return Response(status, b"", headers={"Location": location})


class BadRequest(Exception):
    """Raised by handlers for a malformed request; becomes a 400 with the message."""


Handler = Callable[[Request], Response]
# Hooks the fault injector (and the statistics) plug into; see simarchive.faults.
BeforeHook = Callable[[Request, "Connection"], Response | None]


class Connection:
    """What a hook may do to the client connection: drop it or throttle what is written."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._handler = handler
        self.dropped = False
        self.bytes_sent = 0  # body bytes actually written, for the statistics
        self.planned_bytes = 0  # body bytes the response announced
        self.state: dict[str, object] = {}  # what hooks decided for this request

    def drop(self) -> None:
        """Close the socket without sending anything (the client sees RemoteDisconnected)."""
        self.dropped = True
        self._handler.close_connection = True
        with contextlib.suppress(OSError):
            self._handler.connection.shutdown(socket.SHUT_RDWR)

    def hold(self, poll: float = 0.25) -> None:
        """Keep the connection open and send nothing more, then drop it.

        Returns when the server stops or when the client hangs up (its timeout fired):
        a held connection costs a thread, and one the client has given up on frees it.
        Never on the accept loop: every connection has its own thread.
        """
        server: ArchiveHTTPServer = self._handler.server  # type: ignore[assignment]
        sock = self._handler.connection
        with server._live_lock:
            server._held += 1
        try:
            while not server.closing.wait(poll):
                if _peer_closed(sock):
                    break
        finally:
            with server._live_lock:
                server._held -= 1
        self.drop()


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client closed its end (readable, and a peek reads end of stream)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _parse_multipart(
    content_type: str, body: bytes
) -> tuple[list[tuple[str, str]], dict[str, Upload]]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise BadRequest("malformed multipart/form-data body")
    form: list[tuple[str, str]] = []
    files: dict[str, Upload] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None or part.get_content_type() not in ("text/plain",):
            files[name] = Upload(filename, part.get_content_type(), payload)
        if filename is None:
            form.append((name, payload.decode("utf-8", errors="replace")))
    return form, files


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "simarchive/1.0"
    # TCP_NODELAY, as real HTTP servers set it (nginx's tcp_nodelay, S3): the headers and a
    # small body go out as two writes, and with Nagle's algorithm the body waits for the
    # client's delayed ACK of the headers, 40 ms on Linux. Every Datalink reply and header
    # range read took 50 + 40 ms at 50 ms of injected latency.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s - %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        app: ArchiveHTTPServer = self.server  # type: ignore[assignment]
        conn = Connection(self)
        try:
            request = self._read_request()
        except BadRequest as exc:
            self._send(None, text(400, str(exc)), conn, head=False)
            return
        response = None
        for hook in app.before_hooks:
            response = hook(request, conn)
            if conn.dropped:
                for after in app.after_hooks:
                    after(request, None, conn)
                return
            if response is not None:
                break
        if response is None:
            try:
                response = app.handler(request)
            except BadRequest as exc:
                response = text(400, str(exc))
            except Exception:  # a bug in the archive: say so, keep serving
                log.exception("archive handler failed for %s %s", request.method, request.path)
                response = text(500, "internal error in the embedded archive")
        self._send(request, response, conn, head=request.method == "HEAD")
        for after in app.after_hooks:
            after(request, response, conn)

    def _read_request(self) -> Request:
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise BadRequest(f"request body of {length} bytes is over the {MAX_BODY} limit")
        body = self.rfile.read(length) if length else b""
        form: list[tuple[str, str]] = []
        files: dict[str, Upload] = {}
        ctype = headers.get("content-type", "")
        if body and ctype.startswith("application/x-www-form-urlencoded"):
            form = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        elif body and ctype.startswith("multipart/form-data"):
            form, files = _parse_multipart(ctype, body)
        return Request(
            method=self.command,
            path=url.path,
            query=parse_qsl(url.query, keep_blank_values=True),
            form=form,
            headers=headers,
            body=body,
            files=files,
        )

    def _send(
        self, request: Request | None, response: Response, conn: Connection, *, head: bool
    ) -> None:
        server: ArchiveHTTPServer = self.server  # type: ignore[assignment]
        conn.planned_bytes = 0 if head else response.length
        for hook in server.send_hooks:
            hook(request, response, conn)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(response.length))
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if head or response.length == 0:
            return
        writer = server.body_writer or write_body
        try:
            writer(self.wfile, response, conn)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _dispatch


def iter_body(response: Response, chunk: int = 256 * 1024) -> Iterable[bytes]:
    """Yield the response body in chunks (files are read lazily)."""
    body = response.body
    if isinstance(body, bytes):
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]
        return
    with open(body.path, "rb") as fh:
        fh.seek(body.start)
        remaining = body.length
        while remaining > 0:
            data = fh.read(min(chunk, remaining))
            if not data:
                break
            remaining -= len(data)
            yield data


def write_body(wfile, response: Response, conn: Connection) -> None:
    """Default writer: the whole body, files in large chunks."""
    body = response.body
    if isinstance(body, bytes):
        wfile.write(body)
        conn.bytes_sent += len(body)
        return
    with open(body.path, "rb") as fh:
        fh.seek(body.start)
        if body.start == 0 and body.length == os.fstat(fh.fileno()).st_size:
            shutil.copyfileobj(fh, wfile, 1024 * 1024)
            conn.bytes_sent += body.length
        else:
            for data in iter_body(response, 1024 * 1024):
                wfile.write(data)
                conn.bytes_sent += len(data)


class ArchiveHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    block_on_close = False  # stop() joins the request threads itself, with a deadline

    def __init__(self, address: tuple[str, int], handler: Handler) -> None:
        super().__init__(address, _RequestHandler)
        self.handler = handler
        self.before_hooks: list[BeforeHook] = []
        # called just before a response is sent (statistics book bytes here, so a client
        # that has its answer always sees it counted)
        self.send_hooks: list[Callable[[Request | None, Response, Connection], None]] = []
        # called after the response went out (response None: the connection was dropped)
        self.after_hooks: list[Callable[[Request, Response | None, Connection], None]] = []
        self.body_writer: Callable | None = None
        self._thread: threading.Thread | None = None
        self.closing = threading.Event()  # set by stop(): held connections let go
        self._live: dict[threading.Thread, socket.socket] = {}  # request threads, their sockets
        self._live_lock = threading.Lock()
        self._held = 0  # connections held open by Connection.hold()

    def process_request(self, request, client_address) -> None:
        """One thread per connection, remembered until it ends (see ``stop``)."""
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"simarchive-request-{self.port}",
            daemon=True,
        )
        with self._live_lock:
            if self.closing.is_set():
                self.shutdown_request(request)
                return
            self._live[thread] = request
        thread.start()

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(threading.current_thread(), None)

    def held_connections(self) -> int:
        """Connections held open right now without an answer (stall faults)."""
        with self._live_lock:
            return self._held

    def live_threads(self) -> int:
        """Request threads still running (a test checks none survive ``stop()``)."""
        with self._live_lock:
            return len(self._live)

    def handle_error(self, request, client_address) -> None:
        """A client hanging up mid-request is normal (range reads, retries): no traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("client %s went away: %s", client_address, exc)
            return
        log.exception("error serving %s", client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._served = True  # from here on, shutdown() has a loop to stop
        super().serve_forever(poll_interval)

    def start(self) -> None:
        """Serve in a thread; ``stop()`` ends it within ``STOP_POLL`` (socketserver's loop
        looks for a shutdown only between selects: 0.5 s each by default, half a second
        added to every archive a test starts and stops)."""
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": STOP_POLL},
            name="simarchive-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, release held connections, close client sockets, join threads."""
        self.closing.set()
        if getattr(self, "_served", False):  # shutdown() waits forever on a loop never run
            self.shutdown()
        with self._live_lock:
            live = dict(self._live)
        for sock in live.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in live:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
