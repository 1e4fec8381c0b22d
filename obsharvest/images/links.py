"""How each image of a batch is reached: Datalink, the access_url itself, or the first
reply's say; signed URLs kept fresh.

Signed URLs are resolved just before use and resolved again when the archive says they
expired (403).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TypeVar

import requests

from obsharvest.access.datalink import DatalinkResolver
from obsharvest.access.kinds import Access, Kind, sniff
from obsharvest.access.ranged import RangedHttpFile
from obsharvest.errors import UrlExpiredError
from obsharvest.models import AccessLink, ImageWork
from obsharvest.net.redact import strip_query
from obsharvest.net.retry import RetryPolicy

from .failure import ImageFailure
from .settings import ImageSettings, header_block

log = logging.getLogger(__package__)  # "obsharvest.images": one logger for the package
MAX_RESOLVES = 3  # fresh signed URLs per image before giving up on expiry
UNSETTLED = "unsettled"  # an unlabelled access_url before its first reply
T = TypeVar("T")


def with_result_soda(link: AccessLink, work: ImageWork) -> AccessLink:
    """A Datalink document that names no SODA service leaves the one the TAP result's
    descriptor offers for the row, if any (SODA found by the standard, wherever it is)."""
    if link.url is None or (link.soda_url and link.soda_id):
        return link
    if not (work.soda_url and work.soda_id):
        return link
    return replace(link, soda_url=work.soda_url, soda_id=work.soda_id, soda_shape=work.soda_shape)


def direct_link(work: ImageWork) -> AccessLink:
    """A direct or unlabelled access_url: no Datalink (the SODA service, if any, is the
    TAP result's)."""
    if not work.access_url:
        return AccessLink(work.key, error="no access_url, and no Datalink descriptor to use")
    return AccessLink(
        work.key,
        work.access_url,
        content_type=work.access_format or None,
        access=UNSETTLED if work.kind == Kind.UNKNOWN else Access.DIRECT,
        soda_url=work.soda_url if work.soda_id else None,
        soda_id=work.soda_id,
        soda_shape=work.soda_shape,
    )


class Links:
    """How each image of a batch is reached, decided by ObsCore's ``access_format``.

    Datalink images: signed URLs resolved a Datalink request's worth at a time as the
    image threads reach them (so header reads and downloads start while later IDs are
    still being resolved, and a URL is fresh when used), re-resolved one by one on
    expiry. Direct files: the access_url itself. Unlabelled ones: settled by the image
    thread from the first reply (:meth:`settle`).
    """

    def __init__(self, resolver: DatalinkResolver, works: Sequence[ImageWork]) -> None:
        self._resolver = resolver
        self._works = {w.key: w for w in works}
        size = max(1, resolver.batch_size)
        keys = [w.key for w in works if w.kind == Kind.DATALINK]
        self._groups = [keys[i : i + size] for i in range(0, len(keys), size)]
        self._group_of = {k: i // size for i, k in enumerate(keys)}
        self._group_locks = [threading.Lock() for _ in self._groups]
        self._links: dict[str, AccessLink] = {}
        self._lock = threading.Lock()

    def _route(self, key: str, sniffed: bool = False) -> Access:
        work = self._works[key]
        if sniffed:
            return Access.SNIFFED_DATALINK
        if work.datalink_url and work.datalink_id:
            return Access.DESCRIPTOR
        return Access.DATALINK

    def _resolve(self, keys: Sequence[str], sniffed: bool = False) -> dict[str, AccessLink]:
        wanted, out = {}, {}
        for key in keys:
            try:
                wanted[key] = self._works[key].link_request()
            except ValueError as exc:
                out[key] = AccessLink(key, error=str(exc), access=self._route(key, sniffed))
        for key, link in self._resolver.resolve(wanted).items():
            out[key] = with_result_soda(
                replace(link, access=self._route(key, sniffed)), self._works[key]
            )
        return out

    def get(self, key: str) -> AccessLink:
        with self._lock:
            link = self._links.get(key)
        if link is not None:
            return link
        if key not in self._group_of:  # a direct or unlabelled access_url: no Datalink
            link = direct_link(self._works[key])
            with self._lock:
                return self._links.setdefault(key, link)
        group = self._group_of[key]
        with self._group_locks[group]:  # one request per group, whichever thread comes first
            with self._lock:
                link = self._links.get(key)
            if link is None:
                resolved = self._resolve(self._groups[group])
                with self._lock:
                    self._links.update(resolved)
                    link = self._links[key]
        return link

    def settle(
        self, key: str, kind: Kind, size: int | None, content_type: str | None
    ) -> AccessLink:
        """An unlabelled access_url turned out to be the file, or a Datalink document."""
        if kind == Kind.FILE:
            link = replace(
                self.get(key),
                content_length=size,
                content_type=content_type,
                access=Access.SNIFFED_DIRECT,
            )
        else:
            link = self._resolve([key], sniffed=True)[key]
        with self._lock:
            self._links[key] = link
        return link

    def refresh(self, key: str) -> AccessLink:
        old = self.get(key)
        if not old.refreshable:
            return old
        link = self._resolve([key], sniffed=old.access == Access.SNIFFED_DATALINK)[key]
        with self._lock:
            self._links[key] = link
        return link


def url_of(link: AccessLink) -> str:
    """The link's URL, or why there is none as the image's failure."""
    if link.url is None:
        raise ImageFailure(link.error or "Datalink gave no URL")
    return link.url


def with_fresh_url(
    links: Links, key: str, action: Callable[[str], T], retry: RetryPolicy, describe: str
) -> T:
    """Run ``action(url)`` with retries; on an expired URL, resolve Datalink again."""
    link = links.get(key)
    for attempt in range(MAX_RESOLVES):
        url = url_of(link)
        try:
            return retry.call(partial(action, url), describe)
        except UrlExpiredError:
            if not link.refreshable:  # a direct file URL: nothing to resolve again
                raise ImageFailure(
                    f"access refused (403) for {strip_query(url)}: check the access token "
                    "and your rights to this collection"
                ) from None
            if attempt == MAX_RESOLVES - 1:
                raise ImageFailure(
                    "signed URL refused (403) even after resolving Datalink again"
                ) from None
            log.info("signed URL for %s expired; resolving Datalink again", key)
            link = links.refresh(key)
    raise AssertionError("unreachable")


def settle(
    links: Links, work: ImageWork, settings: ImageSettings, session: requests.Session
) -> tuple[AccessLink, RangedHttpFile | None]:
    """An access_url whose access_format is missing or unknown: the first ranged GET
    decides. FITS: it is the file (the reader, its first block read, is kept for the
    header). A Datalink document: resolve it as one."""
    url = work.access_url
    block = header_block(settings.block_size, None)
    reader = settings.retry.call(
        lambda: RangedHttpFile(
            url, block_size=block, **settings.reader_options(session, url, None)
        ),
        f"access_url of {work.key}",
    )
    kind = sniff(reader.content_type, reader.read_range(0, 2880))
    if kind == Kind.FILE:
        return links.settle(work.key, kind, reader.size, reader.content_type), reader
    reader.close()
    if kind == Kind.DATALINK:
        return links.settle(work.key, kind, None, None), None
    shown = work.access_format or "empty"
    raise ImageFailure(
        f"access_url answered {reader.content_type or 'no Content-Type'}, neither FITS nor "
        f"a Datalink document (access_format {shown!r} does not say which to expect)"
    )


def reach(
    links: Links, work: ImageWork, settings: ImageSettings, session: requests.Session
) -> RangedHttpFile | None:
    """The image has a URL (settled from the first reply if unlabelled); the reader that
    reply opened, if it was the file itself."""
    link = links.get(work.key)
    url_of(link)
    if link.access != UNSETTLED:
        return None
    link, opened = settle(links, work, settings, session)
    url_of(link)
    return opened
