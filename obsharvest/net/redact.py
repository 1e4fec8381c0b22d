"""Keep secrets out of messages: signed-URL credentials and bearer tokens.

Signed URLs are bearer credentials for an hour; a log line or a Parquet cell holding one
leaks the file. Everything obsharvest writes for people goes through ``redact``, which
masks the credential parameters of a URL but keeps the rest (a Datalink ``ID`` is useful
in an error message).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from types import TracebackType

_SENSITIVE = re.compile(
    r"(?i)\b((?:signature|x-amz-[a-z-]+|x-goog-[a-z-]+|awsaccesskeyid|googleaccessid|expires"
    r"|sig|se|st|sp|sv|token|access_token|key)=)[^&\s'\"<>]+"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
# The run's secrets, longest first (a variant is masked before a piece of it). A tuple
# replaced whole under the lock: ``redact`` reads it from any thread without one.
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()
_MIN_SECRET = 6  # shorter values would mask ordinary words


def register_secret(value: str | None) -> None:
    """Remember a secret (a token) so that ``redact`` masks it wherever it appears, even
    in text no pattern foresaw: a library's exception quoting the header it refused, a
    service echoing it, a traceback. Its quoted forms (``repr``, JSON: how a traceback or
    a JSON log shows a value holding a control character) are masked too."""
    global _secrets
    if not value or len(value) < _MIN_SECRET:
        return
    forms = {value, repr(value)[1:-1], json.dumps(value)[1:-1]}
    with _secrets_lock:
        known = set(_secrets)
        if forms <= known:
            return
        _secrets = tuple(sorted(known | forms, key=len, reverse=True))


def strip_query(url: str) -> str:
    """A URL without its query string: how signed URLs are named in messages."""
    return url.split("?", 1)[0]


def redact(text: str) -> str:
    """``text`` with every registered secret, bearer token and URL credential masked."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    text = _SENSITIVE.sub(r"\1***", text)
    return _BEARER.sub(r"\1***", text)


def scrub_exception(exc: BaseException) -> BaseException:
    """Mask, in place, a registered secret or a bearer header quoted by ``exc`` (and the
    exceptions it was raised from). A library exception's text travels far: Prefect
    stores it as the state message of a failed task or flow, in its database; a
    traceback prints it. Only the arguments holding a secret are rewritten, so the
    exception keeps its type (retries classify by type) and its other arguments."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            args = current.args
            if any(_holds_secret(str(a)) for a in args):
                current.args = tuple(redact(str(a)) if _holds_secret(str(a)) else a for a in args)
        except Exception:  # noqa: BLE001 - an exception whose str() fails says no secret
            pass
        current = current.__cause__ or current.__context__
    return exc


def _holds_secret(text: str) -> bool:
    return redact(text) != text


# Libraries that log whole request URLs (signed ones included) at DEBUG: urllib3's
# connection pool ("GET /files/...?Signature=..."), fsspec's HTTP file system and cache
# ("Fetch range for <File-like object HTTPFileSystem, http://...?Signature=...>").
# ``obsharvest -v`` turns DEBUG on, so their records are redacted at the source.
URL_LOGGERS = (
    "urllib3.connectionpool",
    "fsspec",
    "fsspec.http",
    "fsspec.caching",
    "aiohttp.client",
    "requests",
)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through :func:`redact` (a logger filter: it sees the
    records created on the logger it is attached to, whatever the handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)  # fsspec logs tracebacks quoting URLs
        if record.exc_text:
            record.exc_info = None  # handlers format exc_text, never the raw exception
        return True


_FILTER = RedactingFilter()


def install_log_redaction(names: tuple[str, ...] = URL_LOGGERS) -> None:
    """Attach the redacting filter to ``names`` (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


install_log_redaction()  # every module that makes requests imports this one


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record's message and traceback text through :func:`redact`. The exception is
    kept (filters such as the CLI's look at its type) but its text is formatted here,
    redacted, into ``exc_text``: every ``logging.Formatter`` prints ``exc_text`` when it
    is set and formats ``exc_info`` only when it is not."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


_record_factory_installed = False


def install_redaction(*, excepthooks: bool = True) -> None:
    """Redact every log record this process creates, and every traceback it prints
    (idempotent). Installed at the edges, where a run starts: the CLI and the flow. A
    logger filter sees only its own logger's records and a handler filter only its
    handler's: a record factory sees every record before any handler (the console,
    Prefect's API handler that writes to its database, a file) formats it. With
    ``excepthooks``, uncaught exceptions (a bug's traceback, in the main thread or
    another) are printed redacted: for a process's owner (the CLI), not a flow that runs
    inside someone else's (a worker, a test session)."""
    global _record_factory_installed
    if not _record_factory_installed:
        _record_factory_installed = True
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs) -> logging.LogRecord:
            return _redact_record(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
    if not excepthooks or getattr(sys.excepthook, "_obsharvest_redacting", False):
        return
    sys.excepthook = _redacting_excepthook
    threading.excepthook = _redacting_thread_excepthook


def _print_redacted(
    kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
) -> None:
    text = "".join(traceback.format_exception(kind, value, tb))
    stream = sys.stderr or sys.__stderr__
    if stream is not None:
        stream.write(redact(text))
        stream.flush()


def _redacting_excepthook(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    _print_redacted(kind, value, tb)


_redacting_excepthook._obsharvest_redacting = True  # type: ignore[attr-defined]


def _redacting_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    _print_redacted(args.exc_type, args.exc_value, args.exc_traceback)
