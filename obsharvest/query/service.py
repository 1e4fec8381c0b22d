"""A pyvo TAP service that keeps its session in sight, for the requests pyvo does not make."""

from __future__ import annotations

import pyvo
import requests


class TapService(pyvo.dal.TAPService):
    """pyvo's TAP service with the session it was built with in sight (pyvo keeps it to
    itself): the requests pyvo does not make for us (VOSI capabilities read with their real
    status, UWS long polls) go with the same token and timeouts."""

    def __init__(self, baseurl: str, session: requests.Session | None = None) -> None:
        self.session = session if session is not None else requests.Session()
        super().__init__(baseurl, session=self.session)


def session_of(service: pyvo.dal.TAPService) -> requests.Session:
    """The session of a :class:`TapService`; a plain pyvo service gets a fresh one (its
    requests then carry no token: build a TapService to send one)."""
    session = getattr(service, "session", None)
    return session if isinstance(session, requests.Session) else requests.Session()
