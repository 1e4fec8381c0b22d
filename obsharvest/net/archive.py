"""One ObsTAP service as a run reaches it: one record per archive.

Everything that belongs to one archive travels together -- its TAP URL, its token and
the hosts that token may go to, how long its replies may take (timeouts), how requests to
it are retried, and how hard it may be pushed (politeness) -- so a run over several
archives holds several of these and nothing else changes. The values come from the
parameters (``obsharvest.flows.settings.archive``); nothing here has a default of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from obsharvest.net.http import ServiceSession
from obsharvest.net.retry import RetryPolicy


@dataclass(frozen=True)
class Politeness:
    """How hard one archive may be pushed: images in flight per host to start with and at
    most (``net.pacing`` grows the limit while replies come back, halves it on 429/503),
    and the Prefect global concurrency limit its query and image batches hold a slot of
    (shared by every run and worker; None: none)."""

    start_per_host: int
    max_per_host: int
    slot: str | None


@dataclass(frozen=True)
class Archive:
    """How to reach one ObsTAP service during a run. Picklable (tasks may run in Dask
    workers); the token is read where the run starts (the environment or a secret store),
    never from the parameters, and is sent only to ``tap_url``'s host and ``token_hosts``."""

    name: str  # how reports and the Parquet name this service
    tap_url: str
    token: str | None = field(repr=False)
    token_hosts: tuple[str, ...]  # other URLs (scheme://host:port) the token may go to
    token_source: str | None  # where the token comes from, for refusal messages
    timeout: tuple[float, float]  # connect, read (longest pause between two bytes) seconds
    retry: RetryPolicy
    politeness: Politeness
    band_column: str  # the ObsCore column holding the band (lsst_band on the RSP)

    def session(self, pool: int = 16) -> ServiceSession:
        """A session for TAP (pyvo), Datalink and SODA: every request has this archive's
        timeouts, and its token goes only to this archive's hosts."""
        return ServiceSession(
            self.token,
            [self.tap_url, *self.token_hosts],
            pool=pool,
            timeout=self.timeout,
            token_source=self.token_source,
        )


_NOT_NAME = re.compile(r"[^a-z0-9]+")


def name_of(tap_url: str) -> str:
    """A service's name when the profile gives none: its host and the port it gives, in
    lower-case letters, digits and dashes (``data-lsst-cloud``, ``127-0-0-1-8765``): the
    same name in a run's reports, its Parquet (``obsh_service``) and ``obsharvest
    discover``'s profiles."""
    parts = urlsplit(tap_url)
    host = (parts.hostname or "service").removeprefix("www.")
    port = f"-{parts.port}" if parts.port else ""
    return _NOT_NAME.sub("-", f"{host}{port}".lower()).strip("-") or "service"
