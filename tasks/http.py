"""HTTP sessions that send the bearer token only where it belongs.

The RSP wants ``Authorization: Bearer <token>`` on TAP, Datalink and SODA, but Datalink
hands out signed URLs on other hosts (cloud storage). A plain ``requests.Session`` with
the header set would leak the token to every host it talks to; this session adds it per
request, only for the configured service hosts, and requests itself drops it when a
redirect leaves the host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .redact import register_secret

TOKEN_ENV = "ACCESS_TOKEN"  # what the RSP's own tools read


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
    ) -> None:
        super().__init__()
        self._token = token
        self._hosts = {host_of(u) for u in service_urls}
        register_secret(token)
        adapter = HTTPAdapter(pool_connections=pool, pool_maxsize=pool)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self.headers["User-Agent"] = user_agent

    def auth_headers(self, url: str) -> dict[str, str]:
        """The Authorization header for ``url`` if it is a service host, else nothing."""
        if self._token and host_of(url) in self._hosts:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def allow_host(self, url: str) -> None:
        self._hosts.add(host_of(url))

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        if self._token and host_of(url) in self._hosts:
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("Authorization", f"Bearer {self._token}")
            kwargs["headers"] = headers
        return super().request(method, url, *args, **kwargs)


def resolve_token(
    explicit: str | None = None, *, env: str = TOKEN_ENV, secret_block: str | None = None
) -> str | None:
    """The token from (in order) an explicit value, a Prefect Secret block, the environment."""
    if explicit:
        return explicit
    if secret_block:
        from prefect.blocks.system import Secret

        return Secret.load(secret_block).get()
    return os.environ.get(env) or None
