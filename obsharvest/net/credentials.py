"""Object-storage options for ``s3://`` locations: credentials read elsewhere (flows/
reads a named credentials block; see ``flows/blocks.py``) overlaid by the explicit ones.

The options arrive here as a plain dict: the library never reads a secret store itself,
and the options are applied where the storage is opened, never written into parameters,
logs or Parquet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

S3_SCHEMES = ("s3://", "s3a://")


def merged(base: Mapping[str, Any], explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The credentials' options (``base``) overlaid by the explicit ones (``client_kwargs``
    merged key by key, so a profile can add ``endpoint_url`` to credentials that have only
    keys)."""
    out = {**base, **explicit}
    if "client_kwargs" in base and "client_kwargs" in explicit:
        out["client_kwargs"] = {**base["client_kwargs"], **explicit["client_kwargs"]}
    return out


def is_s3(url: str) -> bool:
    return url.lower().startswith(S3_SCHEMES)
