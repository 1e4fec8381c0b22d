"""Several services in one run: one image, one stored object, every service on its rows.

Archives mirror each other: one observation may come back from several services of a
run, under one ``obs_creator_did`` (the creator's identity, kept by mirrors), or one
``obs_publisher_did``. Such an image is one piece of work: it is verified, fetched and
stored once, by the first service of the run (in the order the parameters list them)
that serves it, for the union of the targets each service found it for; the other
services' rows take its outcome, under their own DIDs. Known before anything is
fetched, from the ObsCore rows alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from astropy.table import Table

from obsharvest.assemble import ID_COLUMN, TARGET_COLUMN, failure_of
from obsharvest.cells import texts
from obsharvest.models import ImageOutcome, ImageWork, ServiceSummary, StoredObject

BAND = "band"  # the band column of :func:`pairs`, whatever each service calls its own
SUBTYPE = "dataproduct_subtype"


@dataclass
class Shared:
    """The run's work across its services."""

    # per service (in the run's order): the images it verifies and stores
    works: dict[str, list[ImageWork]] = field(default_factory=dict)
    # a DID whose image another service's work stands for -> that work's DID
    alias: dict[str, str] = field(default_factory=dict)
    # every DID -> the services (in the run's order) that serve its image
    served_by: dict[str, list[str]] = field(default_factory=dict)

    def outcomes_for_all(self, outcomes: Mapping[str, ImageOutcome]) -> dict[str, ImageOutcome]:
        """``outcomes`` with each alias DID given its image's outcome, under its own key."""
        out = dict(outcomes)
        for did, primary in self.alias.items():
            found = outcomes.get(primary)
            if found is not None and did not in out:
                out[did] = dataclasses.replace(found, key=did)
        return out


def share(works_by_service: Mapping[str, Sequence[ImageWork]]) -> Shared:
    """One work per image across ``works_by_service`` (a mapping in the run's order)."""
    first: dict[str, tuple[str, int]] = {}  # identity -> (service, index in its works)
    shared = Shared(works={name: [] for name in works_by_service})
    services_of: dict[str, list[str]] = {}
    dids_of: dict[str, list[str]] = {}
    for name, works in works_by_service.items():
        for work in works:
            identity = work.identity
            _add(services_of.setdefault(identity, []), name)
            _add(dids_of.setdefault(identity, []), work.key)
            if identity not in first:
                first[identity] = (name, len(shared.works[name]))
                shared.works[name].append(work)
                continue
            owner, index = first[identity]
            primary = shared.works[owner][index]
            shared.works[owner][index] = _joined(primary, work)
            if work.key != primary.key:
                shared.alias[work.key] = primary.key
    for identity, dids in dids_of.items():
        for did in dids:
            shared.served_by[did] = services_of[identity]
    return shared


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _joined(primary: ImageWork, other: ImageWork) -> ImageWork:
    """``primary`` for the targets of both (each service may have found the image for
    other targets: their s_region paddings differ), with what either knew of them."""
    names = {t.name for t in primary.targets}
    extra = tuple(t for t in other.targets if t.name not in names)
    if not extra:
        return primary
    priors = {**{k: v for k, v in other.priors.items() if k not in names}, **primary.priors}
    return dataclasses.replace(primary, targets=primary.targets + extra, priors=priors)


def pairs(
    found: Mapping[str, Table], band_columns: Mapping[str, str], alias: Mapping[str, str]
) -> Table:
    """The (target, image) pairs a run's summary counts, across its services (``found``:
    each service's rows, in the run's order): each image under the DID of the work that
    stands for it, so an image two services serve counts once; the band under ``BAND``."""
    columns: dict[str, list[str]] = {ID_COLUMN: [], TARGET_COLUMN: [], SUBTYPE: [], BAND: []}
    for name, rows in found.items():
        n = len(rows)
        if not n:
            continue
        band = band_columns.get(name, "")
        columns[ID_COLUMN] += [alias.get(did, did) for did in texts(rows, ID_COLUMN)]
        columns[TARGET_COLUMN] += texts(rows, TARGET_COLUMN)
        columns[SUBTYPE] += texts(rows, SUBTYPE)
        columns[BAND] += texts(rows, band) if band else [""] * n
    return Table(columns) if columns[ID_COLUMN] else Table()


def tally(
    line: ServiceSummary,
    rows: Table,
    works: Sequence[ImageWork],
    served_by: Mapping[str, Sequence[str]],
    outcomes: Mapping[str, ImageOutcome],
) -> None:
    """Add a shard to one service's line: its rows and images (and how many of them
    another service serves too), then what it stored (``works``: the images it worked)
    and what failed."""
    line.rows += len(rows)
    dids = set(texts(rows, ID_COLUMN))
    line.images += len(dids)
    line.also_elsewhere += sum(1 for d in dids if len(served_by.get(d, ())) > 1)
    for work in works:
        outcome = outcomes.get(work.key)
        if outcome is None or failure_of(outcome):
            line.failed += 1
            continue
        if outcome.stored_objects:
            line.stored += 1
            line.bytes += sum(o.size for o in outcome.stored_objects if not o.skipped)


@dataclass
class SameBytes:
    """The files a run stored, by content: the first object stored with each (sha256,
    size) stands for every later one with the same bytes (another DID, another service:
    an archive that serves no creator DID, a mirror that renames)."""

    first: dict[tuple[str, int], tuple[StoredObject, str]] = field(default_factory=dict)

    def fold(
        self, works: Sequence[ImageWork], outcomes: Mapping[str, ImageOutcome], shared: Shared
    ) -> tuple[dict[str, ImageOutcome], list[StoredObject]]:
        """``outcomes`` with each image whose file has the bytes of one stored before
        (in ``works``' order, then earlier shards) pointing at that object, and the
        duplicates this run wrote, to remove; ``shared.served_by`` then names the
        services of both on each. A duplicate an earlier run stored is kept (that run's
        rows point at it); so are cutouts (one per target, rarely shared)."""
        out = dict(outcomes)
        extra: list[StoredObject] = []
        for work in works:
            outcome = outcomes.get(work.key)
            if outcome is None or outcome.stored is None:
                continue
            stored = outcome.stored
            kept, kept_did = self.first.setdefault((stored.sha256, stored.size), (stored, work.key))
            if kept.uri == stored.uri:
                continue
            out[work.key] = dataclasses.replace(outcome, stored=kept)
            _serve_together(shared.served_by, kept_did, work.key)
            if outcome.downloaded and not stored.skipped:
                extra.append(stored)
        return out, extra


def _serve_together(served_by: dict[str, list[str]], one: str, other: str) -> None:
    """Every DID of ``one``'s image and of ``other``'s now names the services of both."""
    first, second = served_by.get(one, []), served_by.get(other, [])
    both = list(dict.fromkeys([*first, *second]))
    for did, services in list(served_by.items()):
        if services is first or services is second:
            served_by[did] = both
