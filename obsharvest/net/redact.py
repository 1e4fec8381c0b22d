"""Keep secrets out of messages: signed-URL credentials and bearer tokens.

Signed URLs are bearer credentials for an hour; a log line or a Parquet cell holding one
leaks the file. Everything obsharvest writes for people goes through ``redact``, which
masks the credential parameters of a URL but keeps the rest (a Datalink ``ID`` is useful
in an error message).
"""

from __future__ import annotations

import logging
import re

_SENSITIVE = re.compile(
    r"(?i)\b((?:signature|x-amz-[a-z-]+|x-goog-[a-z-]+|awsaccesskeyid|googleaccessid|expires"
    r"|sig|se|st|sp|sv|token|access_token|key)=)[^&\s'\"<>]+"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret (a token) so it is masked wherever it appears."""
    if value and len(value) >= 6:
        _secrets.add(value)


def strip_query(url: str) -> str:
    """A URL without its query string: how signed URLs are named in messages."""
    return url.split("?", 1)[0]


def redact(text: str) -> str:
    text = _SENSITIVE.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


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
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:  # fsspec logs tracebacks quoting URLs
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
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
