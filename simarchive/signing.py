"""Time-limited signed URLs, as the RSP's Datalink hands out for object storage.

The signature covers the path and the expiry, so a client cannot extend a URL or point it
at another file; expired or tampered URLs get 403, which a harvester must answer by
resolving Datalink again. The parameter names follow the S3/GCS V2 style seen in the
seed tutorial (``AWSAccessKeyId``, ``Signature``, ``Expires``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote

SIGNED_PARAMS = ("AWSAccessKeyId", "Signature", "Expires")
ACCESS_KEY_ID = "SIMARCHIVE0000000000"


class UrlSigner:
    def __init__(
        self,
        lifetime: float,
        *,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock

    def _signature(self, path: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"GET\n{expires}\n{path}".encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    def sign(self, base_url: str, path: str, *, lifetime: float | None = None) -> str:
        """Return ``base_url + path`` with a signature valid for ``lifetime`` seconds
        (the signer's own by default; a negative one gives a URL that has already expired)."""
        expires = int(self._clock() + (self.lifetime if lifetime is None else lifetime))
        signature = quote(self._signature(path, expires), safe="")
        return f"{base_url}{quote(path)}?AWSAccessKeyId={ACCESS_KEY_ID}&Signature={signature}&Expires={expires}"

    def check(self, path: str, signature: str | None, expires: str | None) -> str | None:
        """Return why the request is refused, or None when the signature is valid and current."""
        if not signature or not expires:
            return "Query-string authentication requires the Signature and Expires parameters"
        try:
            expiry = int(expires)
        except ValueError:
            return "Invalid Expires parameter"
        if not hmac.compare_digest(self._signature(path, expiry), signature):
            return "The request signature we calculated does not match the signature you provided"
        if self._clock() > expiry:
            return "Request has expired"
        return None
