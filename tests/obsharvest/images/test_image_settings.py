"""The image settings take every value from the parameters: a default lives in one place.

``ImageSettings`` once had defaults of its own that disagreed with ``flows/params.py``
(download_workers 4 against 8, datalink_workers 8 against 4).
"""

from __future__ import annotations

import dataclasses

from obsharvest.flows.params import Concurrency, HarvestParams
from obsharvest.flows.settings import archive, image_settings
from obsharvest.images.settings import ImageSettings


def test_no_second_default() -> None:
    """Only what the parameters do not hold (the token callback, set per task) has one."""
    defaulted = [
        f.name
        for f in dataclasses.fields(ImageSettings)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert defaulted == ["auth_headers"]


def test_defaults_come_from_the_parameters() -> None:
    params = HarvestParams.model_validate(
        {"service": {"tap_url": "http://127.0.0.1:9/tap"}, "ra": 62.0, "dec": -37.0}
    )
    found = archive(params, params.service, "http://127.0.0.1:9/tap", None, None)
    settings = image_settings(params, found)
    fields = Concurrency.model_fields
    for name in (
        "download_workers",
        "datalink_workers",
        "datalink_batch",
        "verify_workers",
        "max_per_host",
    ):
        assert getattr(settings, name) == fields[name].default, name
    assert settings.block_size == params.verification.header_block_size


def test_a_lone_batch_keeps_its_archive_s_whole_per_host_limits() -> None:
    """Workers share an archive's per-host limits only with its other batches: a service
    whose images fit in one batch must not run it at 1/task_workers of them (several
    services at once each have one batch here)."""
    from obsharvest.images import processes

    params = HarvestParams.model_validate(
        {
            "service": {"tap_url": "http://127.0.0.1:9/tap"},
            "ra": 62.0,
            "dec": -37.0,
            "concurrency": {"task_workers": 4, "max_per_host": 16, "verify_workers": 8},
        }
    )
    settings = dataclasses.replace(
        image_settings(
            params, archive(params, params.service, "http://127.0.0.1:9/tap", None, None)
        ),
        processes=4,
    )
    lone = processes.share(processes.sized(settings, 1))
    assert (lone.max_per_host, lone.verify_workers) == (16, 8)
    two = processes.share(processes.sized(settings, 2))
    assert (two.max_per_host, two.verify_workers) == (8, 4)
    many = processes.share(processes.sized(settings, 9))
    assert (many.max_per_host, many.verify_workers) == (4, 2)
    off = dataclasses.replace(settings, processes=0)
    assert processes.sized(off, 3) is off
