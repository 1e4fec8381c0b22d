"""Per image: Datalink → header range read → WCS verdicts → store. The harvest's inner loop.

One call handles a batch of images (hundreds) with thread pools inside, so Prefect sees a
few coarse tasks, never one per image. Signed URLs are resolved just before use and
resolved again when the archive says they expired (403). Pairs decided and stored by an
earlier run over the same output are not touched again: no Datalink, no header bytes.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from . import containment, mask, quicklook
from .cutouts import CutoutRequest, cutout_key, cutout_radius, fetch_cutout
from .datalink import AccessLink, DatalinkResolver
from .models import Containment, StoredObject, Target, Verdict
from .retry import RetryPolicy, one_line
from .storage import ObjectStore
from .storage_errors import IntegrityError, NotFoundError, StorageError, UrlExpiredError
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
    s_region: str = ""  # for the quicklook's outline


@dataclass(frozen=True)
class ImageOutcome:
    key: str
    verdicts: dict[str, Containment]
    stored: StoredObject | None = None  # the whole image (image mode)
    failure: str | None = None
    content_length: int | None = None
    reused: bool = False  # decided earlier; nothing fetched this run
    downloaded: bool = False  # bytes of the file were transferred this run
    cutouts: dict[str, StoredObject] = field(default_factory=dict)  # cutout mode, by target
    cutout_circles: dict[str, str] = field(default_factory=dict)  # "ra dec r" asked, by target
    quicklooks: dict[str, str] = field(default_factory=dict)  # PNG URI, by target

    def stored_for(self, target: str) -> StoredObject | None:
        """What is stored for this (target, image) pair: its cutout, or the image."""
        return self.cutouts.get(target) if self.cutouts or self.cutout_circles else self.stored

    @property
    def stored_objects(self) -> list[StoredObject]:
        return [self.stored] if self.stored else list(self.cutouts.values())

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
    mask: bool = False  # also require the target pixel not to be flagged NO_DATA
    mode: str = "image"  # "image" | "cutout"
    cutout_radius: float | None = None  # deg, for point targets in cutout mode
    quicklook: bool = False  # a PNG next to every stored image or cutout
    auth_headers: Callable[[str], dict[str, str]] | None = None  # service-host auth (SODA)


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
    if settings.mode == "cutout":
        cutouts = {}
        for target, prior in zip(work.targets, priors, strict=True):
            if prior.verdict != Verdict.CONTAINS.value and settings.verification == "skip":
                continue
            if not prior.stored or prior.size is None:
                return None
            found = store.exists_same(
                cutout_key(work.storage_key, target.name), prior.size, prior.sha256
            )
            if found is None:
                return None
            cutouts[target.name] = found
        return ImageOutcome(
            work.key,
            verdicts,
            cutouts=cutouts,
            reused=True,
            cutout_circles={n: "" for n in cutouts},
        )
    sized = [p for p in priors if p.stored and p.size is not None]
    if not sized:
        return None
    found = store.exists_same(work.storage_key, sized[0].size, sized[0].sha256)
    if found is None:
        return None
    return ImageOutcome(work.key, verdicts, stored=found, content_length=found.size, reused=True)


class _Links:
    """Signed URLs for a batch, resolved a Datalink request's worth at a time as the image
    threads reach them (so header reads and downloads start while later IDs are still
    being resolved, and a URL is fresh when used), re-resolved one by one on expiry."""

    def __init__(self, resolver: DatalinkResolver, works: Sequence[ImageWork]) -> None:
        self._resolver = resolver
        self._access = {w.key: w.access_url for w in works}
        size = max(1, resolver.batch_size)
        keys = [w.key for w in works]
        self._groups = [keys[i : i + size] for i in range(0, len(keys), size)]
        self._group_of = {k: i // size for i, k in enumerate(keys)}
        self._group_locks = [threading.Lock() for _ in self._groups]
        self._links: dict[str, AccessLink] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> AccessLink:
        with self._lock:
            link = self._links.get(key)
        if link is not None:
            return link
        group = self._group_of[key]
        with self._group_locks[group]:  # one request per group, whichever thread comes first
            with self._lock:
                link = self._links.get(key)
            if link is None:
                resolved = self._resolver.resolve({k: self._access[k] for k in self._groups[group]})
                with self._lock:
                    self._links.update(resolved)
                    link = self._links[key]
        return link

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


def _mask_checked(
    links: _Links, work: ImageWork, verdicts: dict[str, Containment], settings: ImageSettings
) -> dict[str, Containment]:
    """The stricter verdict: a point on a NO_DATA pixel (a dead amplifier, seed §1.1) is
    not on the data. Circles are left alone: they may still reach good pixels."""
    out = dict(verdicts)
    for target in work.targets:
        verdict = verdicts.get(target.name)
        if verdict is None or verdict.verdict != Verdict.CONTAINS or target.radius:
            continue
        check = _with_fresh_url(
            links,
            work.key,
            lambda url, v=verdict: mask.mask_flags(
                url,
                v.hdu,
                v.x,
                v.y,
                block_size=header_block(settings.block_size, links.get(work.key).content_length),
            ),
            settings.retry,
            f"mask of {work.key}",
        )
        out[target.name] = mask.apply_mask(verdict, check)
    return out


def _first_wanted(work: ImageWork, verdicts: dict[str, Containment]) -> Target:
    for target in work.targets:
        v = verdicts.get(target.name)
        if v is not None and v.verdict == Verdict.CONTAINS:
            return target
    return work.targets[0]


def _s_region(work: ImageWork) -> str | None:
    return work.s_region or None


def _quicklook(
    store: ObjectStore,
    stored: StoredObject,
    key: str,
    target: Target,
    work: ImageWork,
    verdicts: dict[str, Containment],
) -> str:
    """Render the PNG beside the stored FITS; a failure here never fails the image."""
    png_key = key[: -len(".fits")] + ".png" if key.endswith(".fits") else key + ".png"
    try:
        buffer = io.BytesIO()
        with store.fs.open(store.path(stored.key), "rb") as fh:
            data = fh.read()
        quicklook.quicklook_png(
            data,
            target,
            _s_region(work),
            buffer,
            containment=verdicts.get(target.name),
            title=work.key,
        )
        return store.put_stream(png_key, [buffer.getvalue()]).uri
    except Exception as exc:  # the image is stored; only its picture is missing
        log.warning("quicklook for %s failed: %s", work.key, one_line(exc))
        return ""


def _cutouts(
    links: _Links,
    work: ImageWork,
    verdicts: dict[str, Containment],
    store: ObjectStore,
    settings: ImageSettings,
    downloads: threading.Semaphore,
    session: requests.Session,
) -> ImageOutcome:
    """One SODA cutout per wanted target of the image, verified and stored like images."""
    link = links.get(work.key)
    if not link.soda_url or not link.soda_id:
        raise _ImageFailure("no #cutout (SODA) service offered for this image")
    cutouts: dict[str, StoredObject] = {}
    circles: dict[str, str] = {}
    looks: dict[str, str] = {}
    for target in work.targets:
        v = verdicts.get(target.name)
        if settings.verification == "skip" and (v is None or v.verdict != Verdict.CONTAINS):
            continue
        request = CutoutRequest(
            link.soda_url,
            link.soda_id,
            target.ra,
            target.dec,
            cutout_radius(target, settings.cutout_radius),
        )
        key = cutout_key(work.storage_key, target.name)
        prior = work.priors.get(target.name)
        found = (
            store.exists_same(key, prior.size, prior.sha256)
            if prior and prior.stored and prior.size is not None
            else None
        )
        if found is None:
            headers = settings.auth_headers(request.soda_url) if settings.auth_headers else None
            with downloads:
                found = settings.retry.call(
                    lambda r=request, k=key, h=headers: fetch_cutout(
                        r, store, k, headers=h, session=session
                    ),
                    f"cutout of {work.key} for {target.name}",
                )
        cutouts[target.name] = found
        circles[target.name] = request.circle
        if settings.quicklook:
            looks[target.name] = _quicklook(store, found, key, target, work, verdicts)
    return ImageOutcome(
        work.key,
        verdicts,
        cutouts=cutouts,
        cutout_circles=circles,
        content_length=link.content_length,
        downloaded=any(not c.skipped for c in cutouts.values()),
        quicklooks=looks,
    )


def header_block(limit: int, content_length: int | None) -> int:
    """Bytes per range read of a header: at most ``limit``, and at most ~0.5% of the file
    when its size is known, so small files are not read in large part (FITS headers come
    in 2880-byte blocks; 8 kB holds a primary header and the start of the next)."""
    if not content_length:
        return limit
    return max(8192, min(limit, content_length // 200))


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
            if known is not None:
                verdicts = known
            elif settings.verification != "off":
                verdicts = _with_fresh_url(
                    links,
                    work.key,
                    lambda url: containment.verify(
                        url,
                        list(work.targets),
                        margin_px=settings.margin_px,
                        block_size=header_block(settings.block_size, link.content_length),
                    ),
                    settings.retry,
                    f"header of {work.key}",
                )
            if settings.mask and known is None and verdicts:
                verdicts = _mask_checked(links, work, verdicts, settings)
            wanted = settings.verification != "skip" or any(
                c.verdict == Verdict.CONTAINS for c in verdicts.values()
            )
            length = links.get(work.key).content_length
            if settings.plan or not wanted:
                return ImageOutcome(work.key, verdicts, content_length=length)
            if settings.mode == "cutout":
                return _cutouts(links, work, verdicts, store, settings, downloads, download_session)
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
            looks = {}
            if settings.quicklook:
                first = _first_wanted(work, verdicts)
                looks = {
                    first.name: _quicklook(store, stored, work.storage_key, first, work, verdicts)
                }
            return ImageOutcome(
                work.key,
                verdicts,
                stored=stored,
                content_length=length,
                downloaded=not stored.skipped,
                quicklooks=looks,
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
            expected = isinstance(exc, (StorageError, containment.HeaderReadError, OSError))
            # anything else is a bug in obsharvest: keep its traceback in the log
            log.warning("image %s failed: %s", work.key, one_line(exc), exc_info=not expected)
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
