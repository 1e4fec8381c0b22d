"""Replies another attempt will not change: end the step at once, with the service's words.

Only a timeout, a dropped connection, 429 and 5xx are worth another attempt (408 and 425
say "try again" too). Every other 4xx is the request's or the configuration's problem: 401
(no token, or one the service refused), 403 (no rights; a signed file URL that expired is
the one exception, handled where files are read), 404 (wrong URL), 400 and 405. A reply
whose body is not the document the protocol promises (an HTML page with status 200: a
login portal, a web site at the wrong URL) is as permanent: the status, not the body,
says whether a proxy's HTML error page is transient (502) or not (404).

A :class:`RefusedError` carries the status, the URL asked (query string removed: signed
URLs carry credentials there) and the service's own message, and its text ends with a
hint a person can act on (which variable holds the token, which URL was asked).
"""

from __future__ import annotations

import ast
import json
import re

from obsharvest.errors import (
    RefusedError,
)
from obsharvest.net.redact import redact, strip_query

SAID_LIMIT = 200  # characters of the service's own message quoted back
# where services put the words in an error body that is a dict (JSON, or a Python repr)
MESSAGE_KEYS = ("error", "message", "detail", "msg", "reason", "description", "error_message")
_DICT_LIMIT = 20_000  # characters: a longer "dict" is not parsed, only quoted
_TAGS = re.compile(r"<[^>]+>")
_TITLE = re.compile(r"(?is)<title[^>]*>(.*?)</title>")


def said_by(body: bytes | str | None, content_type: str = "") -> str:
    """The service's own message from an error body, on one line: the text of a plain or
    XML reply, the title of an HTML page; nothing for binary bodies."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if "\x00" in text[:512]:
        return ""
    if "html" in content_type.lower() or text.lstrip()[:15].lower().startswith(
        ("<!doctype", "<html")
    ):
        match = _TITLE.search(text)
        text = match.group(1) if match else _TAGS.sub(" ", text)
    elif text.lstrip().startswith("<"):
        text = _TAGS.sub(" ", text)
    else:
        text = dict_message(text) or text
    text = redact(" ".join(text.split()))
    return text if len(text) <= SAID_LIMIT else text[: SAID_LIMIT - 1] + "…"


def dict_message(text: str) -> str | None:
    """The message in an error body that is a dict: JSON, or the ``repr`` of a Python dict
    (``{'error': 'Table ivoa.foo not found', 'code': 400}``, as some servers answer a 400
    in plain text); ``None`` for anything else. Read as a literal, never evaluated."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")) or len(text) > _DICT_LIMIT:
        return None
    for read in (json.loads, ast.literal_eval):
        try:
            value = read(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return _message_in(value) if isinstance(value, dict) else None
    return None


def _message_in(value: dict, depth: int = 0) -> str | None:
    """The first message-like entry, looking one level into ``{"error": {...}}``."""
    named = {str(k).lower(): v for k, v in value.items()}
    for key in MESSAGE_KEYS:
        found = named.get(key)
        if isinstance(found, str) and found.strip():
            return found
        if isinstance(found, dict) and depth == 0 and (inner := _message_in(found, 1)):
            return inner
    return None


def token_hint(status: int | None, token_source: str | None, token_sent: bool) -> str:
    """What to do about a 401/403, naming where the token comes from."""
    source = token_source or "the token setting"
    if status == 401:
        if not token_sent:
            return f"no token was sent: set {source}"
        return f"the token from {source} was refused: it may have expired or be mistyped"
    if status == 403:
        if not token_sent:
            return f"access refused and no token was sent: set {source}"
        return (
            f"the token from {source} was accepted but lacks the rights for this "
            "(on the RSP it needs the read:tap and read:image scopes)"
        )
    return ""


def refused(
    what: str,
    url: str,
    status: int,
    reason: str = "",
    said: str = "",
    *,
    token_source: str | None = None,
    token_sent: bool = False,
    cls: type[RefusedError] = RefusedError,
    hint: str = "",
) -> RefusedError:
    """``{what} {url} answered {status} {reason}: "{said}"; {hint}`` as ``cls``."""
    where = strip_query(url)
    head = f"{what} {where} answered {status}{(' ' + reason) if reason else ''}"
    if said and said.lower() not in head.lower():
        head += f': "{said}"'
    advice = hint or token_hint(status, token_source, token_sent)
    if not advice and status in (404, 410):
        advice = "check the URL (is it the service's base URL?)"
    if not advice and status == 405:
        advice = "the service does not take this request at this URL: check the URL"
    return cls(f"{head}; {advice}" if advice else head, status=status, url=where)
