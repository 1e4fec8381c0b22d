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


def token_of(params: HarvestParams, svc: Service) -> tuple[str | None, str]:
    """A service's token and where it comes from. Of several services, only one that
    names its own ``token_env`` or ``token_secret_block`` gets one: a token in
    ``$ACCESS_TOKEN`` (the default) is for one archive, never sent to every service of
    the run."""
    named = {"token_env", "token_secret_block"} & svc.model_fields_set
    if params.service is None and not named:
        return None, f"no token (services: {svc.label} names no token_env)"
    return service_token(svc.token_env, svc.token_secret_block)


@contextlib.contextmanager
def connect(params: HarvestParams, svc: Service) -> Iterator[Archive]:
    """One of the run's services as an archive record; starts the embedded archive when
    the profile asks."""
    token, source = token_of(params, svc)
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
