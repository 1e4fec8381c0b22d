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
