"""AwsCredentials blocks as s3fs options (pure), and where the parameters allow them."""

from __future__ import annotations

import pytest
from prefect_aws import AwsClientParameters, AwsCredentials
from pydantic import ValidationError

from obsharvest.flows.blocks import s3_options_from_aws_credentials
from obsharvest.flows.params import HarvestParams
from obsharvest.net.credentials import is_s3, merged


def test_block_fields_become_s3fs_options():
    creds = AwsCredentials(
        aws_access_key_id="AKIA-TEST",
        aws_secret_access_key="s3cr3t",
        aws_session_token="tok",
        region_name="eu-west-3",
        aws_client_parameters=AwsClientParameters(endpoint_url="http://127.0.0.1:9000"),
    )
    assert s3_options_from_aws_credentials(creds) == {
        "key": "AKIA-TEST",
        "secret": "s3cr3t",
        "token": "tok",
        "client_kwargs": {"region_name": "eu-west-3", "endpoint_url": "http://127.0.0.1:9000"},
    }


def test_an_empty_block_leaves_everything_to_botocores_chain():
    assert s3_options_from_aws_credentials(AwsCredentials()) == {}
    assert s3_options_from_aws_credentials(AwsCredentials(profile_name="lab")) == {"profile": "lab"}


def test_explicit_options_win_and_client_kwargs_merge():
    base = {"key": "k", "secret": "s", "client_kwargs": {"region_name": "r"}}
    explicit = {"key": "k2", "client_kwargs": {"endpoint_url": "http://e"}}
    assert merged(base, explicit) == {
        "key": "k2",
        "secret": "s",
        "client_kwargs": {"region_name": "r", "endpoint_url": "http://e"},
    }
    assert merged(base, {}) == base


@pytest.mark.parametrize(
    ("url", "s3"), [("s3://b/p", True), ("S3A://b", True), ("gs://b", False), ("/data", False)]
)
def test_is_s3(url, s3):
    assert is_s3(url) is s3


def _params(**extra) -> dict:
    return {"service": {"tap_url": "http://127.0.0.1:9/tap"}, "ra": 62, "dec": -37, **extra}


def test_a_block_needs_an_s3_location():
    with pytest.raises(ValidationError, match="aws_credentials_block is for S3"):
        HarvestParams.model_validate(
            _params(output_url="/tmp/out", storage={"aws_credentials_block": "b"})
        )
    ok = HarvestParams.model_validate(
        _params(output_url="/tmp/out", storage={"url": "s3://b/fits", "aws_credentials_block": "b"})
    )
    assert ok.storage.aws_credentials_block == "b"
