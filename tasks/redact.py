"""Keep secrets out of messages: signed-URL credentials and bearer tokens.

Signed URLs are bearer credentials for an hour; a log line or a Parquet cell holding one
leaks the file. Everything obsharvest writes for people goes through ``redact``, which
masks the credential parameters of a URL but keeps the rest (a Datalink ``ID`` is useful
in an error message).
"""

from __future__ import annotations

import re

_SENSITIVE = re.compile(
    r"(?i)\b((?:signature|x-amz-[a-z-]+|x-goog-[a-z-]+|awsaccesskeyid|googleaccessid|expires"
    r"|sig|se|st|sp|sv|token|access_token|key)=)[^&\s'\"<>]+"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret (a token) so it is masked wherever it appears."""
    if value and len(value) >= 6:
        _secrets.add(value)


def strip_query(url: str) -> str:
    """A URL without its query string: how signed URLs are named in messages."""
    return url.split("?", 1)[0]


def redact(text: str) -> str:
    text = _SENSITIVE.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text
