"""HTTP sessions that send the bearer token only where it belongs.

The RSP wants ``Authorization: Bearer <token>`` on TAP, Datalink and SODA, but Datalink
hands out signed URLs on other hosts (cloud storage). A plain ``requests.Session`` with
the header set would leak the token to every host it talks to; this session adds it per
request, only for the configured service hosts, and requests itself drops it when a
redirect leaves the host.

It also gives every request a ``(connect, read)`` timeout. ``requests`` has none by
default, and pyvo sets one only on a few UWS calls, so a TAP service that accepts a
connection and never answers (capabilities, a sync query, a job submission, a result
fetch) would hold the run forever. A request that names its own timeout keeps it, except
a UWS blocking poll (``WAIT=n``): the server may rightly stay silent for ``n`` seconds,
so its read timeout is at least ``n`` plus the configured read timeout.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
import unicodedata
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import HTTPAdapter

from obsharvest.errors import TokenError
from obsharvest.net.redact import register_secret, scrub_exception

TOKEN_ENV = "ACCESS_TOKEN"  # what the RSP's own tools read
DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (longest pause between two bytes) seconds

Timeout = float | tuple[float | None, float | None]


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class ServiceSession(requests.Session):
    """A session whose token goes to ``service_urls``' hosts (scheme+host+port) only."""

    def __init__(
        self,
        token: str | None,
        service_urls: Iterable[str],
        *,
        pool: int = 16,
        user_agent: str = "obsharvest",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        token_source: str | None = None,
    ) -> None:
        super().__init__()
        self.timeout = (float(timeout[0]), float(timeout[1]))
        # a library caller's token is held to the rules the CLI and flows apply
        self._token = clean_token(token, token_source or "the session's token")
        # where the token comes from, for messages about a refused request ("ACCESS_TOKEN")
        self.token_source = token_source
        self._hosts = {host_of(u) for u in service_urls}
        adapter = HTTPAdapter(pool_connections=pool, pool_maxsize=pool)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self.headers["User-Agent"] = user_agent
        self._environment: dict[tuple, dict[str, Any]] = {}  # merge_environment_settings, per host

    def auth_headers(self, url: str) -> dict[str, str]:
        """The Authorization header for ``url`` if it is a service host, else nothing."""
        if self._token and host_of(url) in self._hosts:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def token_sent_to(self, url: str) -> bool:
        """Whether a request to ``url`` carries the token."""
        return bool(self._token) and host_of(url) in self._hosts

    def allow_host(self, url: str) -> None:
        self._hosts.add(host_of(url))

    def request(self, method, url, *args, **kwargs):
        if self._token and host_of(url) in self._hosts:
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("Authorization", f"Bearer {self._token}")
            kwargs["headers"] = headers
        try:
            return super().request(method, url, *args, **kwargs)
        except Exception as exc:  # a header or URL quoted by requests/urllib3: masked
            scrub_exception(exc)
            raise

    def send(self, request, **kwargs):
        """Every request, redirects and direct ``send`` calls included, with a timeout."""
        kwargs["timeout"] = self.timeout_for(request.url or "", kwargs.get("timeout"))
        try:
            return super().send(request, **kwargs)
        except Exception as exc:
            scrub_exception(exc)
            raise

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        """requests' own, made once per scheme+host: it reads the proxies, ``NO_PROXY``
        and CA bundle variables from the environment for every request (~0.4 ms here,
        three requests per image); they do not change during a run. A request that names
        its own proxies is merged afresh."""
        if proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = (host_of(url or ""), stream, verify, cert)
        try:
            kept = self._environment.get(key)
        except TypeError:  # a cert given as a list: not a key, merged afresh
            return super().merge_environment_settings(url, {}, stream, verify, cert)
        if kept is None:
            kept = dict(super().merge_environment_settings(url, {}, stream, verify, cert))
            self._environment[key] = kept
        return {**kept, "proxies": dict(kept["proxies"] or {})}

    def timeout_for(self, url: str, asked: Timeout | None) -> tuple[float, float]:
        """The ``(connect, read)`` timeout of a request to ``url``; ``asked`` is the
        caller's (``None``: the session's). A UWS blocking poll (``WAIT=n``, n > 0) gets
        a read timeout of at least n + the configured read timeout."""
        connect, read = self.timeout
        if asked is not None:
            a_connect, a_read = asked if isinstance(asked, tuple) else (asked, asked)
            connect = connect if a_connect is None else float(a_connect)
            read = read if a_read is None else float(a_read)
        wait = uws_wait(url)
        if wait is not None and wait > 0:
            read = max(read, wait + self.timeout[1])
        return connect, read


def uws_wait(url: str) -> float | None:
    """The ``WAIT`` parameter of a UWS job URL (UWS 1.1 blocking poll), if any."""
    for name, value in parse_qsl(urlsplit(url).query):
        if name.upper() == "WAIT":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def token_source(env: str = TOKEN_ENV) -> str:
    """Where a token read from the environment comes from, as a message names it."""
    return f"${env} (service.token_env)"


_INVISIBLE = re.compile(r"[^!-~]+")  # anything but visible ASCII


def clean_token(value: str | None, source: str) -> str | None:
    """``value`` without surrounding whitespace, or None when nothing is left; registered
    as a secret to mask (:func:`obsharvest.net.redact.register_secret`).

    ``$(cat token-file)`` keeps nothing extra, but ``export TOKEN=$(<file)`` on a file
    saved on Windows, a secret store's value pasted with its newline, or a YAML ``|`` block
    leave
    ``\r``/``\n`` at the end: sent as is, requests refuses the header and quotes it in
    the exception. A bearer token (RFC 6750 ``b64token``) is one word of visible ASCII,
    so anything else inside it (a control character, whitespace, a non-ASCII letter) is a
    saving accident: refused as a :class:`TokenError` naming ``source`` and the kind of
    character, never the value.
    """
    if value is None:
        return None
    token = value.strip()
    if not token:
        return None
    register_secret(token)  # masked from now on, even when refused below
    bad = next((c for c in token if not "!" <= c <= "~"), None)
    if bad is None:
        return token
    for piece in _INVISIBLE.split(token):  # what a library might quote of a refused value
        register_secret(piece)
    if unicodedata.category(bad).startswith("C"):  # \r, \n, \t, ESC, BEL, ...
        kind = "a control character"
    elif bad.isspace():
        kind = "whitespace"
    else:
        kind = "a non-ASCII character"
    raise TokenError(
        f"{source}: the token has {kind} (U+{ord(bad):04X}) inside it; an OAuth 2 token is "
        "one word of visible ASCII: save it again without it"
    )


def resolve_token(
    explicit: str | None = None, *, env: str = TOKEN_ENV, source: str | None = None
) -> str | None:
    """The token: ``explicit`` when given (a value the caller read, e.g. from a secret
    store; ``source`` names where it came from in messages), else the environment variable
    ``env``; stripped of surrounding whitespace, refused with a :class:`TokenError` naming
    where it came from if a character inside it cannot be sent (:func:`clean_token`).
    """
    if explicit:
        return clean_token(explicit, source or "the token given")
    return clean_token(os.environ.get(env) or None, token_source(env))


def retry_after(response: requests.Response) -> float | None:
    """Seconds a 429/503 reply asks to wait (``Retry-After``: seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
