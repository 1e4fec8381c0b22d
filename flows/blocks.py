"""Prefect blocks, read at the edge and handed down as plain values.

A flow's parameters are stored by the Prefect server and shown in its UI, so a secret put
into them can be read by anyone with access to the server. A block keeps the secret
encrypted server-side: the parameters only name it (``service.token_secret_block``, a
``Secret``; ``storage.aws_credentials_block``, a prefect-aws ``AwsCredentials``), and it is
read here, inside the run, into what the library takes: a token string, a dict of s3fs
options. The library (``obsharvest/``) never imports Prefect.

Prefect is imported inside the functions: the CLI imports this module (through the
preflight) before it needs Prefect at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from obsharvest.errors import CredentialsError, TokenError
from obsharvest.net.http import clean_token, resolve_token, token_source

if TYPE_CHECKING:
    from prefect.blocks.system import Secret


# -- the service's token: a Secret block ----------------------------------------------


def secret_source(name: str) -> str:
    """Where a token read from the Secret block ``name`` comes from, as a message names it."""
    return f"the Prefect Secret block {name!r} (service.token_secret_block)"


def service_token(env: str, secret_block: str | None = None) -> tuple[str | None, str]:
    """The service's token and where it came from (for messages): the Secret block
    ``secret_block`` when one is named (an empty block is no token: the environment is not
    read then), else the environment variable ``env``. Held to the same hygiene either way
    (:func:`obsharvest.net.http.clean_token`: surrounding whitespace stripped, a control
    character inside refused naming the source, never the value)."""
    if secret_block:
        source = secret_source(secret_block)
        return clean_token(read_secret(secret_block), source), source
    return resolve_token(env=env), token_source(env)


def read_secret(name: str) -> str | None:
    """The value of the Secret block ``name`` as it was saved (not yet cleaned)."""
    from prefect.blocks.system import Secret

    try:
        # a sync caller gets the block, not a coroutine (Prefect's async_dispatch)
        value = cast("Secret[str]", Secret.load(name)).get()
    except ValueError as exc:  # Prefect: no block of that name (or of another type)
        raise TokenError(
            f"service.token_secret_block: no Secret block named {name!r} ({exc})"
        ) from None
    return str(value) if value else None


# -- object-storage credentials: an AwsCredentials block --------------------------------


def aws_storage_options(name: str) -> dict[str, Any]:
    """The s3fs options of the prefect-aws ``AwsCredentials`` block ``name``."""
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
