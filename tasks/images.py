"""Per image: Datalink → header range read → WCS verdicts → store. The harvest's inner loop.

One call handles a batch of images (hundreds) with thread pools inside, so Prefect sees a
few coarse tasks, never one per image. Signed URLs are resolved just before use and
resolved again when the archive says they expired (403). Pairs decided and stored by an
earlier run over the same output are not touched again: no Datalink, no header bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from . import containment
from .datalink import AccessLink, DatalinkResolver
from .models import Containment, StoredObject, Target, Verdict
from .retry import RetryPolicy, one_line
from .storage import ObjectStore
from .storage_errors import IntegrityError, NotFoundError, UrlExpiredError
from .storage_http import download

log = logging.getLogger(__name__)
MAX_RESOLVES = 3  # fresh signed URLs per image before giving up on expiry


@dataclass(frozen=True)
class Prior:
    """What an earlier run decided for one (target, image) pair."""

    verdict: str | None
    x: float | None = None
    y: float | None = None
    hdu: int | None = None
    reason: str | None = None
    stored: bool = False
    storage_uri: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ImageWork:
    key: str  # obs_publisher_did: one image, however many targets it serves
    access_url: str  # ObsCore access_url (Datalink)
    storage_key: str
    targets: tuple[Target, ...]
    priors: Mapping[str, Prior] = field(default_factory=dict)  # by target name


@dataclass(frozen=True)
class ImageOutcome:
    key: str
    verdicts: dict[str, Containment]
    stored: StoredObject | None = None
    failure: str | None = None
    content_length: int | None = None
    reused: bool = False  # decided earlier; nothing fetched this run
    downloaded: bool = False  # bytes of the file were transferred this run

    @property
    def wanted(self) -> bool:
        return any(c.verdict == Verdict.CONTAINS for c in self.verdicts.values())


@dataclass
class ImageSettings:
    verification: str = "skip"  # "skip" | "record-only" | "off"
    margin_px: float = 0.0
    block_size: int = 32768
    plan: bool = False
    verify_workers: int = 8
    download_workers: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)


DECIDED = {Verdict.CONTAINS.value, Verdict.OUTSIDE.value, Verdict.NO_WCS.value}


def prior_verdicts(work: ImageWork) -> dict[str, Containment] | None:
    """The verdicts of an earlier run, if it decided every pair of this image."""
    if not work.priors or any(t.name not in work.priors for t in work.targets):
        return None
    priors = [work.priors[t.name] for t in work.targets]
    if any(p.verdict not in DECIDED for p in priors):
        return None
    return {
        t.name: Containment(Verdict(p.verdict), p.x, p.y, p.hdu, p.reason)
        for t, p in zip(work.targets, priors, strict=True)
    }


def _reusable(work: ImageWork, store: ObjectStore, settings: ImageSettings) -> ImageOutcome | None:
    """An outcome rebuilt from an earlier run, if every pair is decided and the file is there."""
    verdicts = prior_verdicts(work)
    if verdicts is None:
        return None
    priors = [work.priors[t.name] for t in work.targets]
    needs_file = not settings.plan and (
        settings.verification != "skip" or any(p.verdict == Verdict.CONTAINS.value for p in priors)
    )
    if not needs_file:
        return ImageOutcome(work.key, verdicts, reused=True)
    sized = [p for p in priors if p.stored and p.size is not None]
    if not sized:
        return None
    found = store.exists_same(work.storage_key, sized[0].size, sized[0].sha256)
    if found is None:
        return None
    return ImageOutcome(work.key, verdicts, stored=found, content_length=found.size, reused=True)


class _Links:
    """Signed URLs for a batch, re-resolved one by one when they expire."""

    def __init__(self, resolver: DatalinkResolver, works: Sequence[ImageWork]) -> None:
        self._resolver = resolver
        self._access = {w.key: w.access_url for w in works}
        self._links: dict[str, AccessLink] = resolver.resolve(self._access) if works else {}
        self._lock = threading.Lock()

    def get(self, key: str) -> AccessLink:
        with self._lock:
            return self._links[key]

    def refresh(self, key: str) -> AccessLink:
        link = self._resolver.resolve({key: self._access[key]})[key]
        with self._lock:
            self._links[key] = link
        return link


def _with_fresh_url(
    links: _Links, key: str, action: Callable[[str], object], retry: RetryPolicy, describe: str
):
    """Run ``action(url)`` with retries; on an expired URL, resolve Datalink again."""
    link = links.get(key)
    for attempt in range(MAX_RESOLVES):
        if link.url is None:
            raise _ImageFailure(link.error or "Datalink gave no URL")
        url = link.url
        try:
            return retry.call(lambda url=url: action(url), describe)
        except (UrlExpiredError, containment.UrlExpiredError):
            if attempt == MAX_RESOLVES - 1:
                raise _ImageFailure(
                    "signed URL refused (403) even after resolving Datalink again"
                ) from None
            log.info("signed URL for %s expired; resolving Datalink again", key)
            link = links.refresh(key)
    raise AssertionError("unreachable")


class _ImageFailure(Exception):
    """This image cannot be completed; the message becomes its failure reason."""


def process_images(
    works: Sequence[ImageWork],
    resolver: DatalinkResolver,
    store: ObjectStore,
    settings: ImageSettings,
    on_done: Callable[[ImageOutcome], None] | None = None,
) -> list[ImageOutcome]:
    """Decide and store every image of the batch; never raises for one image's trouble."""
    outcomes: dict[str, ImageOutcome] = {}
    fresh = []
    for work in works:
        reused = _reusable(work, store, settings)
        if reused is not None:
            outcomes[work.key] = reused
            if on_done:
                on_done(reused)
        else:
            fresh.append(work)
    if not fresh:
        return [outcomes[w.key] for w in works]
    links = _Links(resolver, fresh)
    downloads = threading.Semaphore(settings.download_workers)
    download_session = requests.Session()  # no token: signed URLs live on other hosts

    def one(work: ImageWork) -> ImageOutcome:
        link = links.get(work.key)
        verdicts: dict[str, Containment] = {}
        try:
            if link.url is None:
                raise _ImageFailure(link.error or "Datalink gave no URL")
            known = prior_verdicts(work)  # e.g. decided by a plan run: no header read again
            if settings.verification == "off":
                wanted = True
            elif known is not None:
                verdicts = known
                wanted = settings.verification == "record-only" or any(
                    c.verdict == Verdict.CONTAINS for c in verdicts.values()
                )
            else:
                verdicts = _with_fresh_url(
                    links,
                    work.key,
                    lambda url: containment.verify(
                        url,
                        list(work.targets),
                        margin_px=settings.margin_px,
                        block_size=settings.block_size,
                    ),
                    settings.retry,
                    f"header of {work.key}",
                )
                wanted = settings.verification == "record-only" or any(
                    c.verdict == Verdict.CONTAINS for c in verdicts.values()
                )
            length = links.get(work.key).content_length
            if settings.plan or not wanted:
                return ImageOutcome(work.key, verdicts, content_length=length)
            with downloads:
                stored = _with_fresh_url(
                    links,
                    work.key,
                    lambda url: download(
                        url,
                        store,
                        work.storage_key,
                        session=download_session,
                        expected_size=links.get(work.key).content_length,
                    ),
                    settings.retry,
                    f"download of {work.key}",
                )
            return ImageOutcome(
                work.key,
                verdicts,
                stored=stored,
                content_length=length,
                downloaded=not stored.skipped,
            )
        except _ImageFailure as exc:
            return ImageOutcome(
                work.key, verdicts, failure=str(exc), content_length=link.content_length
            )
        except (NotFoundError, containment.NotFoundError):
            return ImageOutcome(
                work.key,
                verdicts,
                failure="file not found at the archive (404)",
                content_length=link.content_length,
            )
        except IntegrityError as exc:
            return ImageOutcome(
                work.key,
                verdicts,
                failure=f"checksum or size mismatch: {one_line(exc)}",
                content_length=link.content_length,
            )
        except Exception as exc:  # retries exhausted or an unexpected reply: record, go on
            log.warning("image %s failed: %s", work.key, one_line(exc))
            return ImageOutcome(
                work.key, verdicts, failure=one_line(exc), content_length=link.content_length
            )

    started = time.monotonic()
    with ThreadPoolExecutor(max(1, settings.verify_workers), thread_name_prefix="image") as pool:
        for work, outcome in zip(fresh, pool.map(one, fresh), strict=True):
            outcomes[work.key] = outcome
            if on_done:
                on_done(outcome)
    download_session.close()
    log.info("%d images processed in %.1f s", len(fresh), time.monotonic() - started)
    return [outcomes[w.key] for w in works]
