"""One record per archive: what belongs to one ObsTAP service travels together, and its
token goes only to that service's hosts."""

from __future__ import annotations

import dataclasses
import pickle

from obsharvest.flows.params import HarvestParams
from obsharvest.flows.settings import archive, image_settings, query_options
from obsharvest.net.archive import Archive, Politeness, name_of
from obsharvest.net.retry import RetryPolicy


def _params(**extra) -> HarvestParams:
    return HarvestParams.model_validate(
        {"service": {"tap_url": "https://data.example.org/api/tap"}, "ra": 62, "dec": -37} | extra
    )


def test_the_archive_record_holds_what_belongs_to_one_service():
    params = _params(
        service={
            "tap_url": "https://data.example.org/api/tap",
            "extra_token_hosts": ["https://files.example.org"],
            "band_column": "band",
        },
        retry={"connect_timeout": 3, "read_timeout": 7, "attempts": 2},
        concurrency={"verify_workers": 5, "max_per_host": 9},
        execution={"archive_concurrency_limit": "example"},
    )
    found = archive(params, params.service, params.service.tap_url, "s3cret", "$ACCESS_TOKEN")
    assert found.name == "data-example-org"
    assert found.token_hosts == ("https://files.example.org",)
    assert found.timeout == (3, 7)
    assert found.retry.attempts == 2
    assert found.politeness == Politeness(start_per_host=5, max_per_host=9, slot="example")
    assert found.band_column == "band"
    # what works against it takes its values from it, not from a second copy
    images = image_settings(params, found)
    assert (images.timeout, images.retry) == (found.timeout, found.retry)
    assert (images.verify_workers, images.max_per_host) == (5, 9)
    assert query_options(params).retry == found.retry


def test_no_default_of_its_own():
    """Every value comes from the parameters: a default lives in one place."""
    for record in (Archive, Politeness):
        defaulted = [
            f.name
            for f in dataclasses.fields(record)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        ]
        assert defaulted == [], record


def test_the_token_stays_out_of_reprs_and_goes_only_to_its_hosts():
    found = Archive(
        name="x",
        tap_url="https://tap.example.org/tap",
        token="s3cret-token",
        token_hosts=("https://files.example.org",),
        token_source="$ACCESS_TOKEN",
        timeout=(1.0, 2.0),
        retry=RetryPolicy(),
        politeness=Politeness(start_per_host=1, max_per_host=2, slot=None),
        band_column="band",
    )
    assert "s3cret" not in repr(found)
    session = found.session()
    assert session.timeout == (1.0, 2.0)
    assert session.auth_headers("https://tap.example.org/tap/sync") == {
        "Authorization": "Bearer s3cret-token"
    }
    assert session.auth_headers("https://files.example.org/a.fits")
    assert session.auth_headers("https://bucket.s3.amazonaws.com/a.fits?X-Amz-Signature=1") == {}
    assert pickle.loads(pickle.dumps(found)) == found  # Dask workers get it pickled


def test_a_service_is_named_by_its_host():
    assert name_of("https://data.lsst.cloud/api/tap") == "data-lsst-cloud"
    assert name_of("http://127.0.0.1:8080/tap") == "127-0-0-1-8080"
