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
from dataclasses import dataclass, field, replace

import requests

from obsharvest.access import compression
from obsharvest.access.datalink import DatalinkResolver
from obsharvest.access.kinds import Access, Kind, sniff
from obsharvest.access.ranged import RangedHttpFile
from obsharvest.access.soda import CutoutRequest, cutout_key, cutout_radius, fetch_cutout
from obsharvest.errors import (
    CutoutUnavailableError,
    IntegrityError,
    NoOverlapError,
    NotFoundError,
    ReadError,
    StorageError,
    UrlExpiredError,
)
from obsharvest.models import (
    AccessLink,
    Containment,
    ImageOutcome,
    ImageWork,
    ProductMode,
    StoredObject,
    Target,
    Verdict,
    VerificationMode,
)
from obsharvest.net import pacing
from obsharvest.net.http import Connection
from obsharvest.net.redact import strip_query
from obsharvest.net.retry import RetryPolicy, one_line
from obsharvest.products import quicklook
from obsharvest.runtime import stopping, workers
from obsharvest.storage.download import download
from obsharvest.storage.store import ObjectStore
from obsharvest.verify import containment, mask

log = logging.getLogger(__name__)
MAX_RESOLVES = 3  # fresh signed URLs per image before giving up on expiry


@dataclass
class ImageSettings:
    verification: VerificationMode = "skip"
    margin_px: float = 0.0
    block_size: int = 32768
    plan: bool = False
    verify_workers: int = 8  # images in flight per host to start with
    download_workers: int = 4
    max_per_host: int = 32  # ... and at most, as replies keep coming (net.pacing)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    mask: bool = False  # also require the target pixel not to be flagged NO_DATA
    mode: ProductMode = "image"
    cutout_radius: float | None = None  # deg, for point targets in cutout mode
    quicklook: bool = False  # a PNG next to every stored image or cutout
    auth_headers: Callable[[str], dict[str, str]] | None = None  # service-host auth only
    timeout: tuple[float, float] = (10.0, 60.0)  # connect, read (between bytes) seconds
    image_deadline: float = 1800.0  # seconds for all the steps and attempts of one image
    cutout_fallback: bool = False  # cutout mode, no SODA offered: store the whole image
    datalink_batch: int = 50  # IDs per Datalink request (fewer if the service answers fewer)
    datalink_workers: int = 8  # Datalink requests in flight

    def headers_for(self, url: str) -> dict[str, str]:
        """The token for a service host (a direct file URL may live there), else nothing:
        signed URLs on other hosts must never see it."""
        return self.auth_headers(url) if self.auth_headers else {}


DECIDED = {Verdict.CONTAINS.value, Verdict.OUTSIDE.value, Verdict.NO_WCS.value}


def prior_verdicts(work: ImageWork) -> dict[str, Containment] | None:
    """The verdicts of an earlier run, if it decided every pair of this image."""
    if not work.priors or any(t.name not in work.priors for t in work.targets):
        return None
    verdicts: dict[str, Containment] = {}
    for t in work.targets:
        p = work.priors[t.name]
        if p.verdict is None or p.verdict not in DECIDED:
            return None
        verdicts[t.name] = Containment(Verdict(p.verdict), p.x, p.y, p.hdu, p.reason)
    return verdicts


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
    sized = next((p for p in priors if p.stored and p.size is not None), None)
    if sized is None or sized.size is None:
        return None
    key = compression.stored_key(work.storage_key, sized.storage_uri)  # .fits.gz, .fits.fz
    found = store.exists_same(key, sized.size, sized.sha256)
    if found is None:
        return None
    return ImageOutcome(
        work.key,
        verdicts,
        stored=found,
        content_length=found.size,
        reused=True,
        kept_for_all=settings.verification != "skip",
    )


UNSETTLED = "unsettled"  # an unlabelled access_url before its first reply


def _with_result_soda(link: AccessLink, work: ImageWork) -> AccessLink:
    """A Datalink document that names no SODA service leaves the one the TAP result's
    descriptor offers for the row, if any (SODA found by the standard, wherever it is)."""
    if link.url is None or (link.soda_url and link.soda_id):
        return link
    if not (work.soda_url and work.soda_id):
        return link
    return replace(link, soda_url=work.soda_url, soda_id=work.soda_id, soda_shape=work.soda_shape)


class _Links:
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
            out[key] = _with_result_soda(
                replace(link, access=self._route(key, sniffed)), self._works[key]
            )
        return out

    def get(self, key: str) -> AccessLink:
        with self._lock:
            link = self._links.get(key)
        if link is not None:
            return link
        work = self._works[key]
        if key not in self._group_of:  # a direct or unlabelled access_url: no Datalink
            if not work.access_url:
                link = AccessLink(key, error="no access_url, and no Datalink descriptor to use")
            else:
                unknown = work.kind == Kind.UNKNOWN
                link = AccessLink(
                    key,
                    work.access_url,
                    content_type=work.access_format or None,
                    access=UNSETTLED if unknown else Access.DIRECT,
                    soda_url=work.soda_url if work.soda_id else None,
                    soda_id=work.soda_id,
                    soda_shape=work.soda_shape,
                )
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


def _with_fresh_url(
    links: _Links, key: str, action: Callable[[str], object], retry: RetryPolicy, describe: str
):
    """Run ``action(url)`` with retries; on an expired URL, resolve Datalink again."""
    link = links.get(key)
    for attempt in range(MAX_RESOLVES):
        if link.url is None:
            raise _ImageFailure(link.error or "Datalink gave no URL")
        url = link.url

        def act(url: str = url) -> object:
            return action(url)

        try:
            return retry.call(act, describe)
        except UrlExpiredError:
            if not link.refreshable:  # a direct file URL: nothing to resolve again
                raise _ImageFailure(
                    f"access refused (403) for {strip_query(url)}: check the access token "
                    "and your rights to this collection"
                ) from None
            if attempt == MAX_RESOLVES - 1:
                raise _ImageFailure(
                    "signed URL refused (403) even after resolving Datalink again"
                ) from None
            log.info("signed URL for %s expired; resolving Datalink again", key)
            link = links.refresh(key)
    raise AssertionError("unreachable")


def _reader_options(
    settings: ImageSettings, session: requests.Session, url: str, size: int | None
) -> dict:
    """What :class:`obsharvest.access.ranged.RangedHttpFile` needs for one URL of this batch."""
    return {
        "session": session,
        "headers": settings.headers_for(url),
        "size": size,
        "timeout": settings.timeout,
    }


def _settle(
    links: _Links, work: ImageWork, settings: ImageSettings, session: requests.Session
) -> tuple[AccessLink, RangedHttpFile | None]:
    """An access_url whose access_format is missing or unknown: the first ranged GET
    decides. FITS: it is the file (the reader, its first block read, is kept for the
    header). A Datalink document: resolve it as one."""
    url = work.access_url
    block = header_block(settings.block_size, None)
    reader = settings.retry.call(
        lambda: RangedHttpFile(
            url, block_size=block, **_reader_options(settings, session, url, None)
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
    raise _ImageFailure(
        f"access_url answered {reader.content_type or 'no Content-Type'}, neither FITS nor "
        f"a Datalink document (access_format {shown!r} does not say which to expect)"
    )


def _mask_checked(
    links: _Links,
    work: ImageWork,
    verdicts: dict[str, Containment],
    settings: ImageSettings,
    session: requests.Session,
) -> dict[str, Containment]:
    """The stricter verdict: a point on a NO_DATA pixel (a dead amplifier, seed §1.1) is
    not on the data. Circles are left alone: they may still reach good pixels."""
    out = dict(verdicts)
    for target in work.targets:
        verdict = verdicts.get(target.name)
        if verdict is None or verdict.verdict != Verdict.CONTAINS or target.radius:
            continue

        def flags(url: str, v: Containment = verdict) -> mask.MaskCheck:
            # a point CONTAINS from containment.verify has its HDU and pixel position
            assert v.hdu is not None and v.x is not None and v.y is not None
            return mask.mask_flags(
                url,
                v.hdu,
                v.x,
                v.y,
                block_size=header_block(settings.block_size, links.get(work.key).content_length),
                storage_options=_reader_options(
                    settings, session, url, links.get(work.key).content_length
                ),
            )

        check = _with_fresh_url(links, work.key, flags, settings.retry, f"mask of {work.key}")
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
        raise _ImageFailure(NO_SODA)
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
            link.soda_shape,
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

            def cut(
                r: CutoutRequest = request, k: str = key, h: dict[str, str] | None = headers
            ) -> StoredObject:
                return fetch_cutout(
                    r, store, k, headers=h, session=session, timeout=settings.timeout
                )

            try:
                with downloads:
                    found = settings.retry.call(cut, f"cutout of {work.key} for {target.name}")
            except NoOverlapError:  # the service says the target misses the image: no cutout
                log.debug("no overlap: %s for %s", work.key, target.name)
                continue
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
        access=link.access,
    )


SODA_LOOKED_FOR = (
    "a service descriptor with standardID ivo://ivoa.net/std/SODA#sync-1.0 (or #sync-1)"
)
NO_SODA = (
    "no SODA cutout service offered for this image: no Datalink row (#cutout, #proc or "
    f"other) names {SODA_LOOKED_FOR}, and the TAP result carries none"
)


def check_cutouts_offered(works: Sequence[ImageWork], resolver: DatalinkResolver) -> None:
    """Cutout mode needs SODA: said at plan time, before any work, not once per image.

    SODA is found by the standard: a service descriptor whose standardID is SODA sync,
    named by any Datalink row's ``service_def`` (the RSP's ``#cutout``, DaCHS' ``#proc``)
    or carried by the TAP result. Direct files need it in the TAP result; Datalink images
    are asked once, for the first of them.
    """
    fix = "set products.cutout_fallback=image to store whole images instead"
    direct = [w for w in works if w.kind != Kind.DATALINK]
    if any(not (w.soda_url and w.soda_id) for w in direct):
        raise CutoutUnavailableError(
            f"cutout mode: {len(direct)} images are reached through their access_url itself "
            f"and the TAP result carries no SODA service descriptor for them "
            f"({SODA_LOOKED_FOR}, with an ID param); {fix}"
        )
    datalink = [w for w in works if w.kind == Kind.DATALINK]
    if not datalink:
        return
    first = datalink[0]
    link = _Links(resolver, [first]).get(first.key)
    if link.error:
        return  # the image's own failure will say why; nothing to learn about SODA
    if not (link.soda_url and link.soda_id):
        raise CutoutUnavailableError(
            f"cutout mode: the archive offers no SODA cutout service for {first.key}: no row "
            f"of its Datalink document (#cutout, #proc or other) names {SODA_LOOKED_FOR}, "
            f"and the TAP result carries none; {fix}"
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


def _failed(
    work: ImageWork, links: _Links, verdicts: dict[str, Containment], reason: str
) -> ImageOutcome:
    link = links.get(work.key)
    access = None if link.access == UNSETTLED else link.access
    return ImageOutcome(
        work.key, verdicts, failure=reason, content_length=link.content_length, access=access
    )


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
        if stopping.requested():
            fresh.append(work)  # the pool records it as interrupted without touching it
            continue
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
    # one pool for header reads and downloads: keep-alive connections across images
    in_flight = max(settings.verify_workers, settings.max_per_host)
    pool_size = in_flight + settings.download_workers
    data_session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    data_session.mount("http://", adapter)
    data_session.mount("https://", adapter)

    def paced(work: ImageWork) -> ImageOutcome:
        """One image, holding a slot of its host's adaptive limit (net.pacing)."""
        try:
            stopping.check()
            link = links.get(work.key)
            limit = pacing.limit_for(
                link.url or work.access_url, settings.verify_workers, settings.max_per_host
            )
            with limit.slot():
                return one(work, link, replace(settings.retry, on_throttle=limit.throttled))
        except stopping.Interrupted as exc:
            return ImageOutcome(work.key, {}, failure=str(exc))

    def one(work: ImageWork, link: AccessLink, policy: RetryPolicy) -> ImageOutcome:
        verdicts: dict[str, Containment] = {}
        ends = time.monotonic() + settings.image_deadline

        def budget() -> RetryPolicy:
            """The retry policy cut to what is left of the image's deadline."""
            left = ends - time.monotonic()
            if left <= 0:
                raise _ImageFailure(
                    f"image deadline of {settings.image_deadline:.0f} s passed "
                    "(retry.image_deadline_seconds)"
                )
            return policy.within(left)

        try:
            if link.url is None:
                raise _ImageFailure(link.error or "Datalink gave no URL")
            opened = None
            if link.access == UNSETTLED:
                link, opened = _settle(links, work, settings, data_session)
                if link.url is None:
                    raise _ImageFailure(link.error or "Datalink gave no URL")
            known = prior_verdicts(work)  # e.g. decided by a plan run: no header read again
            if known is not None:
                verdicts = known
            elif settings.verification != "off":

                def read_header(url: str) -> dict[str, Containment]:
                    nonlocal opened
                    reader, opened = (opened if opened and opened.url == url else None), None
                    size = links.get(work.key).content_length
                    return containment.verify(
                        url,
                        list(work.targets),
                        margin_px=settings.margin_px,
                        block_size=header_block(settings.block_size, size),
                        storage_options=_reader_options(settings, data_session, url, size),
                        opened=reader,
                    )

                verdicts = _with_fresh_url(
                    links, work.key, read_header, budget(), f"header of {work.key}"
                )
            if opened is not None:
                opened.close()
            if settings.mask and known is None and verdicts:
                verdicts = _mask_checked(links, work, verdicts, settings, data_session)
            wanted = settings.verification != "skip" or any(
                c.verdict == Verdict.CONTAINS for c in verdicts.values()
            )
            link = links.get(work.key)
            length = link.content_length
            if settings.plan or not wanted:
                return ImageOutcome(work.key, verdicts, content_length=length, access=link.access)
            if settings.mode == "cutout" and (
                (link.soda_url and link.soda_id) or not settings.cutout_fallback
            ):
                return _cutouts(links, work, verdicts, store, settings, downloads, data_session)
            with downloads:
                stored = _with_fresh_url(
                    links,
                    work.key,
                    lambda url: download(
                        url,
                        store,
                        work.storage_key,
                        session=data_session,
                        headers=settings.headers_for(url),
                        expected_size=links.get(work.key).content_length,
                        timeout=settings.timeout,
                    ),
                    budget(),
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
                access=links.get(work.key).access,
                kept_for_all=settings.verification != "skip",
            )
        except (_ImageFailure, stopping.Interrupted) as exc:
            return _failed(work, links, verdicts, str(exc))
        except NotFoundError:
            return _failed(work, links, verdicts, "file not found at the archive (404)")
        except IntegrityError as exc:
            return _failed(work, links, verdicts, f"checksum or size mismatch: {one_line(exc)}")
        except Exception as exc:  # retries exhausted or an unexpected reply: record, go on
            if stopping.requested():  # a consequence of the stop (the archive went away)
                return _failed(work, links, verdicts, stopping.describe())
            expected = isinstance(exc, (StorageError, ReadError, OSError))
            # anything else is a bug in obsharvest: keep its traceback in the log
            log.warning("image %s failed: %s", work.key, one_line(exc), exc_info=not expected)
            return _failed(work, links, verdicts, one_line(exc))

    started = time.monotonic()
    pairs = workers.run_all(paced, fresh, in_flight, name="image")
    for work, future in pairs:
        if future.done() and not future.cancelled():
            outcome = future.result()
        else:  # the run stopped before this image was done
            outcome = ImageOutcome(work.key, {}, failure=stopping.describe())
        outcomes[work.key] = outcome
        if on_done:
            on_done(outcome)
    if not stopping.requested():  # else threads may still use it; they are abandoned
        data_session.close()
    log.info("%d images processed in %.1f s", len(fresh), time.monotonic() - started)
    return [outcomes[w.key] for w in works]


def _resolver(session: requests.Session, settings: ImageSettings, workers: int) -> DatalinkResolver:
    return DatalinkResolver(
        session,
        batch_size=settings.datalink_batch,
        workers=workers,
        retry=settings.retry,
        timeout=settings.timeout,
    )


def harvest_images(
    conn: Connection,
    works: Sequence[ImageWork],
    settings: ImageSettings,
    storage_url: str,
    storage_options: Mapping | None = None,
    on_done: Callable[[ImageOutcome], None] | None = None,
) -> list[ImageOutcome]:
    """:func:`process_images` over a session and a store of its own: the unit of work of
    an image task (which may run in another thread or a Dask worker)."""
    session = conn.session(pool=max(settings.datalink_workers, 4), timeout=settings.timeout)
    settings = replace(settings, auth_headers=session.auth_headers)
    store = ObjectStore(storage_url, dict(storage_options or {}), timeout=settings.timeout)
    resolver = _resolver(session, settings, settings.datalink_workers)
    return process_images(works, resolver, store, settings, on_done=on_done)


def check_cutouts(conn: Connection, works: Sequence[ImageWork], settings: ImageSettings) -> None:
    """:func:`check_cutouts_offered` over a session of its own (one Datalink request)."""
    session = conn.session(timeout=settings.timeout)
    check_cutouts_offered(works, _resolver(session, settings, workers=1))
