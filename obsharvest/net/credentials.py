"""Object-storage credentials from a prefect-aws ``AwsCredentials`` block.

Why a block: a flow's parameters are stored by the Prefect server and shown in its UI, so
a secret put into ``storage_options`` can be read by anyone with access to the server. A
block keeps the secret encrypted server-side; the flow names the block and the options are
built where the storage is opened, never written into parameters, logs or Parquet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from obsharvest.errors import CredentialsError

S3_SCHEMES = ("s3://", "s3a://")


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)


def s3_options_from_aws_credentials(creds: Any) -> dict[str, Any]:
    """s3fs options equivalent to an ``AwsCredentials`` block (fields left empty are left
    to botocore's own chain: environment, profile, instance role)."""
    options: dict[str, Any] = {}
    for option, field in (
        ("key", "aws_access_key_id"),
        ("secret", "aws_secret_access_key"),
        ("token", "aws_session_token"),
        ("profile", "profile_name"),
    ):
        value = _secret(getattr(creds, field, None))
        if value:
            options[option] = value
    client_kwargs: dict[str, Any] = {}
    if getattr(creds, "region_name", None):
        client_kwargs["region_name"] = creds.region_name
    client = getattr(creds, "aws_client_parameters", None)
    if client is not None:
        if getattr(client, "endpoint_url", None):
            client_kwargs["endpoint_url"] = client.endpoint_url
        if getattr(client, "verify", True) is False:
            client_kwargs["verify"] = False
        elif getattr(client, "verify_cert_path", None):
            client_kwargs["verify"] = str(client.verify_cert_path)
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def merged(base: Mapping[str, Any], explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The block's options overlaid by the explicit ones (``client_kwargs`` merged key by
    key, so a profile can add ``endpoint_url`` to a block that has only keys)."""
    out = {**base, **explicit}
    if "client_kwargs" in base and "client_kwargs" in explicit:
        out["client_kwargs"] = {**base["client_kwargs"], **explicit["client_kwargs"]}
    return out


def is_s3(url: str) -> bool:
    return url.lower().startswith(S3_SCHEMES)


def load_aws_block(name: str) -> dict[str, Any]:
    """Load the block by name and return its s3fs options."""
    try:
        from prefect_aws import AwsCredentials
    except ImportError:
        raise CredentialsError(
            f"storage.aws_credentials_block={name!r} needs prefect-aws: "
            "pip install 'obsharvest[aws]'"
        ) from None
    try:
        creds = AwsCredentials.load(name)
    except ValueError as exc:
        raise CredentialsError(
            f"storage.aws_credentials_block: no AwsCredentials block named {name!r} ({exc})"
        ) from None
    return s3_options_from_aws_credentials(creds)
