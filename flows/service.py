"""The run's connection to its ObsTAP service, starting the embedded archive when the
profile asks for it (``service.embedded``: the demo and the tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from obsharvest.errors import ConfigError
from obsharvest.net.archive import Archive

from . import settings
from .blocks import service_token
from .params import HarvestParams, Service


@contextlib.contextmanager
def connect(params: HarvestParams, svc: Service) -> Iterator[Archive]:
    """One of the run's services as an archive record; starts the embedded archive when
    the profile asks."""
    token, source = service_token(svc.token_env, svc.token_secret_block)
    if svc.embedded is None:
        assert svc.tap_url is not None  # Service: exactly one of tap_url and embedded
        yield settings.archive(params, svc, svc.tap_url, token, source)
        return
    try:
        from obsharvest.simarchive.dialect import Dialect
        from obsharvest.simarchive.faults import FaultPlan
        from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
    except ImportError as exc:  # installed without the archive's extra
        raise ConfigError(f"service.embedded: {exc}") from None

    e = svc.embedded
    archive_settings = ArchiveSettings(
        port=e.port,
        seed=e.seed,
        n_visits=e.n_visits,
        binning=e.binning,
        profile=e.profile,
        naming=e.naming,
        access_style=e.access_style,
        datalink_multi_id=e.datalink_multi_id,
        datalink_order=e.datalink_order,
        faults=FaultPlan.parse(e.faults, seed=e.seed),
        dialect=Dialect.parse(e.dialect),
    )
    with EmbeddedArchive(archive_settings) as archive:
        yield settings.archive(params, svc, archive.tap_url, token, source)
