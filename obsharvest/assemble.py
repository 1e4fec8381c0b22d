"""Between the steps: unique images from query rows, rows for Parquet, and the summary.

Pure functions over astropy/Arrow tables and the step records, so the flow stays a thin
sequence of task calls and every rule here is tested without Prefect or a network.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from astropy.table import Table

from obsharvest.access import kinds as access
from obsharvest.access.kinds import descriptors_of
from obsharvest.cells import text_of, texts
from obsharvest.metadata import (
    TARGET_NAME,
    check_obscore_columns,
    obscore_to_arrow,
    with_harvest_columns,
)
from obsharvest.models import (
    ImageOutcome,
    ImageWork,
    Prior,
    StoredObject,
    Summary,
    Target,
    TargetSummary,
    Verdict,
)
from obsharvest.query.adql import TARGET_COLUMN
from obsharvest.storage.keys import object_key
from obsharvest.verify.sregion import region_text

ID_COLUMN = "obs_publisher_did"
CREATOR_COLUMN = "obs_creator_did"  # ObsCore 1.1, optional: the same image across archives


def failure_of(outcome: ImageOutcome) -> str | None:
    """Why this image is not done: its failure, or an unusable header (verdict ERROR).

    An ERROR verdict (garbage bytes, a truncated header, a WCS that cannot be built) is
    neither stored nor outside: the image is not accounted for, a later run verifies it
    again, and an incremental watermark must not move past it.
    """
    if outcome.failure:
        return outcome.failure
    for verdict in outcome.verdicts.values():
        if verdict.verdict == Verdict.ERROR:
            return f"header not usable: {verdict.reason or 'unknown error'}"
    return None


def _id_value(
    colnames: Sequence[str], row, descriptor: access.ServiceDescriptor | None
) -> str | None:
    """The row's ID for a service (Datalink, SODA), from the column its descriptor names."""
    if descriptor is None or descriptor.id_column not in colnames:
        return None
    return text_of(row[descriptor.id_column]) or None


def _storage_key(colnames: Sequence[str], row, did: str, band_column: str | None) -> str:
    """Where an image is stored: collection, subtype, band and a name unique to it."""
    return object_key(
        text_of(row["obs_collection"]) if "obs_collection" in colnames else "collection",
        text_of(row["dataproduct_subtype"]) if "dataproduct_subtype" in colnames else "image",
        (text_of(row[band_column]) if band_column is not None else "") or "none",
        # obs_id is not unique (DP0.2 shares it across raw/calexp/diff; DP1 across
        # a visit's detectors): a short hash of obs_publisher_did keeps keys apart
        f"{text_of(row['obs_id']) or 'image'}_{hashlib.sha1(did.encode()).hexdigest()[:8]}",
    )


def image_works(
    rows: Table,
    targets: Mapping[str, Target],
    priors: Mapping[tuple[str, str], Prior],
    *,
    band_column: str = "lsst_band",
) -> list[ImageWork]:
    """One work item per unique image, carrying every target it serves (seed: images
    shared by several targets are resolved, verified and stored once)."""
    if len(rows) == 0:
        return []
    # before any image is fetched: a reply whose columns would clash with the harvest's
    check_obscore_columns(rows.colnames, ignore=[TARGET_COLUMN])
    by_image: dict[str, list[str]] = defaultdict(list)
    first: dict[str, int] = {}
    for i, (did, name) in enumerate(
        zip(texts(rows, ID_COLUMN), texts(rows, TARGET_COLUMN), strict=True)
    ):
        if name not in by_image[did]:
            by_image[did].append(name)
        first.setdefault(did, i)
    works = []
    has_band = band_column in rows.colnames
    descriptors = descriptors_of(rows.meta)
    datalink = access.find(descriptors, access.DATALINK_STANDARD)
    soda = access.find(descriptors, access.SODA_SYNC_STANDARD)
    has_format = "access_format" in rows.colnames
    has_region = "s_region" in rows.colnames  # text, or a DALI array written as STC-S
    s_region_xtype = rows["s_region"].meta.get("xtype") if has_region else None
    has_creator = CREATOR_COLUMN in rows.colnames
    for did, names in by_image.items():
        row = rows[first[did]]
        key = _storage_key(rows.colnames, row, did, band_column if has_band else None)
        works.append(
            ImageWork(
                key=did,
                access_url=text_of(row["access_url"]),
                access_format=text_of(row["access_format"]) if has_format else "",
                datalink_url=datalink.endpoint if datalink else None,
                datalink_id=_id_value(rows.colnames, row, datalink),
                soda_url=soda.endpoint if soda else None,
                soda_id=_id_value(rows.colnames, row, soda),
                soda_shape=soda.soda_shape if soda else "CIRCLE",
                storage_key=key,
                targets=tuple(targets[n] for n in names),
                priors={n: priors[(n, did)] for n in names if (n, did) in priors},
                s_region=(region_text(row["s_region"], s_region_xtype) or "") if has_region else "",
                creator_did=text_of(row[CREATOR_COLUMN]) if has_creator else "",
            )
        )
    return works


PRIOR_COLUMNS = (
    TARGET_NAME,
    ID_COLUMN,
    "obsh_verdict",
    "obsh_pixel_x",
    "obsh_pixel_y",
    "obsh_wcs_hdu",
    "obsh_verdict_reason",
    "obsh_stored",
    "obsh_storage_uri",
    "obsh_file_size",
    "obsh_sha256",
)
"""What :func:`priors_from` needs: read only these (``MetadataStore.read(columns=...)``)."""


def priors_from(table: pa.Table | None) -> dict[tuple[str, str], Prior]:
    """Decisions of earlier runs, from the current view of the Parquet (one row per pair:
    ``MetadataStore.read``), by (target, image)."""
    if table is None or table.num_rows == 0:
        return {}
    cols: dict[str, list[Any]] = {
        c: table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
        for c in PRIOR_COLUMNS
    }
    out = {}
    for i in range(table.num_rows):
        key = (cols[TARGET_NAME][i], cols[ID_COLUMN][i])
        out[key] = Prior(
            verdict=cols["obsh_verdict"][i],
            x=cols["obsh_pixel_x"][i],
            y=cols["obsh_pixel_y"][i],
            hdu=cols["obsh_wcs_hdu"][i],
            reason=cols["obsh_verdict_reason"][i],
            stored=bool(cols["obsh_stored"][i]),
            storage_uri=cols["obsh_storage_uri"][i],
            size=cols["obsh_file_size"][i],
            sha256=cols["obsh_sha256"][i],
        )
    return out


def metadata_rows(
    rows: Table,
    targets: Mapping[str, Target],
    outcomes: Mapping[str, ImageOutcome],
    run_id: str,
    when: datetime | None = None,
    *,
    service: str | None = None,
    served_by: Mapping[str, Sequence[str]] | None = None,
) -> pa.Table:
    """Every (target, image) row: all ObsCore columns as the archive sent them (its
    ``target_name`` included) plus the harvest's decisions in ``obsh_*`` columns;
    ``service`` returned the rows, ``served_by`` names every service serving each DID."""
    when = when or datetime.now(UTC)
    served_by = served_by or {}
    obscore = obscore_to_arrow(rows, drop=[TARGET_COLUMN])
    values: dict[str, list] = defaultdict(list)
    for did, name in zip(texts(rows, ID_COLUMN), texts(rows, TARGET_COLUMN), strict=True):
        target = targets[name]
        outcome = outcomes.get(did)
        verdict = outcome.verdicts.get(name) if outcome else None
        stored = outcome.stored_for(name) if outcome else None
        values[TARGET_NAME].append(name)
        values["obsh_target_ra"].append(target.ra)
        values["obsh_target_dec"].append(target.dec)
        values["obsh_target_radius"].append(target.radius)
        values["obsh_verdict"].append(verdict.verdict.value if verdict else None)
        values["obsh_pixel_x"].append(verdict.x if verdict else None)
        values["obsh_pixel_y"].append(verdict.y if verdict else None)
        values["obsh_wcs_hdu"].append(verdict.hdu if verdict else None)
        values["obsh_verdict_reason"].append(verdict.reason if verdict else None)
        values["obsh_stored"].append(stored is not None)
        values["obsh_storage_uri"].append(stored.uri if stored else None)
        values["obsh_file_size"].append(stored.size if stored else None)
        values["obsh_sha256"].append(stored.sha256 if stored else None)
        values["obsh_failure"].append(failure_of(outcome) if outcome else "image was not processed")
        values["obsh_access_route"].append(outcome.access if outcome else None)
        values["obsh_cutout_circle"].append(
            (outcome.cutout_circles.get(name) or None) if outcome else None
        )
        values["obsh_quicklook_uri"].append(
            (outcome.quicklooks.get(name) or None) if outcome else None
        )
        values["obsh_service"].append(service)
        serving = served_by.get(did) or ([service] if service else [])
        values["obsh_services"].append(",".join(serving) or None)
        values["obsh_run_id"].append(run_id)
        values["obsh_harvested_at"].append(when)
    return with_harvest_columns(obscore, values)


@dataclass
class ImageTally:
    """What a run has counted of one image so far, across its shards."""

    stored: set[str] = field(default_factory=set)  # URIs of its file or cutouts counted
    downloaded: bool = False
    failed: bool = False
    planned: bool = False  # plan mode: its bytes are in the estimate


def _count_pair(entry: TargetSummary, outcome: ImageOutcome | None, name: str) -> None:
    """Add one (target, image) pair to its target's line: verdict, stored file, failure."""
    entry.rows += 1
    verdict = outcome.verdicts.get(name) if outcome else None
    if verdict is not None and verdict.verdict == Verdict.CONTAINS:
        entry.contains += 1
    elif verdict is not None and verdict.verdict == Verdict.OUTSIDE:
        entry.outside += 1
    else:
        entry.undecided += 1
    stored = outcome.stored_for(name) if outcome else None
    if stored:
        entry.stored += 1
        entry.bytes += stored.size
    if outcome is None or failure_of(outcome):
        entry.failures += 1


def _per_target(
    rows: Table, works: Sequence[ImageWork], outcomes: Mapping[str, ImageOutcome]
) -> dict[str, TargetSummary]:
    """One line per target: every target of ``works`` (even with no rows), each distinct
    (target, image) pair of ``rows`` counted once."""
    per_target: dict[str, TargetSummary] = {}
    for work in works:
        for target in work.targets:
            per_target.setdefault(target.name, TargetSummary(target.name))
    pairs_seen: set[tuple[str, str]] = set()
    for did, name in zip(texts(rows, ID_COLUMN), texts(rows, TARGET_COLUMN), strict=True):
        if (name, did) in pairs_seen:
            continue
        pairs_seen.add((name, did))
        entry = per_target.setdefault(name, TargetSummary(name))
        _count_pair(entry, outcomes.get(did), name)
    return per_target


def _by_image(rows: Table, column: str) -> dict[str, str]:
    """``column``'s text per image id; empty when the reply has no such column."""
    if not (len(rows) and column in rows.colnames):
        return {}
    return dict(zip(texts(rows, ID_COLUMN), texts(rows, column), strict=True))


def _count_stored(
    summary: Summary, tally: ImageTally, outcome: ImageOutcome, objects: list[StoredObject]
) -> None:
    """Add objects not counted yet (the image, or new cutouts) to the stored totals; the
    image itself and its download are counted once whatever the shards add."""
    if not tally.stored:
        summary.stored_images += 1
        if not outcome.downloaded and not outcome.reused:
            summary.already_stored += 1
    summary.stored_bytes += sum(o.size for o in objects)
    if outcome.downloaded:
        if not tally.downloaded:
            summary.downloaded += 1
            tally.downloaded = True
        summary.downloaded_bytes += sum(o.size for o in objects if not o.skipped)
    tally.stored.update(o.uri for o in objects)


def _plan_cutouts(
    summary: Summary, work: ImageWork, outcome: ImageOutcome, cutout_radius: float | None
) -> None:
    """A plan's estimate of the cutouts this image would give: one per contained target."""
    for target in work.targets:  # a shard's targets are its own: none counted twice
        verdict = outcome.verdicts.get(target.name)
        if verdict is None or verdict.verdict != Verdict.CONTAINS:
            continue
        estimate = cutout_bytes(verdict, target.radius or cutout_radius, outcome.content_length)
        summary.planned_cutouts += 1
        if estimate is None:
            summary.planned_unknown += 1
        else:
            summary.planned_bytes += estimate


def _count_outcome(
    summary: Summary,
    work: ImageWork,
    outcome: ImageOutcome,
    tally: ImageTally,
    first: bool,
    *,
    plan: bool,
    cutout_radius: float | None,
    cutout_mode: bool,
) -> None:
    """Add what this image's outcome adds that earlier shards have not counted: reuse,
    stored objects, or (plan mode) the bytes it would take."""
    if outcome.reused and first:
        summary.reused += 1
    objects = [o for o in outcome.stored_objects if o.uri not in tally.stored]
    if objects:  # the image, or cutouts not counted yet
        _count_stored(summary, tally, outcome, objects)
    elif plan and cutout_mode:
        _plan_cutouts(summary, work, outcome, cutout_radius)
    elif plan and outcome.wanted and outcome.content_length and not tally.planned:
        tally.planned = True
        summary.planned_bytes += outcome.content_length


def summarize(
    rows: Table,
    works: Sequence[ImageWork],
    outcomes: Mapping[str, ImageOutcome],
    run_id: str,
    *,
    band_column: str = "lsst_band",
    plan: bool = False,
    cutout_radius: float | None = None,
    cutout_mode: bool = False,
    counted: dict[str, ImageTally] | None = None,
) -> Summary:
    """The summary of ``rows`` and their images' outcomes.

    ``counted``: what earlier shards of the run counted of each image (their targets were
    others). An image shared by shards is one image: counted once, its file once, its
    failure once; only what a later shard adds (a file, a cutout) adds to the totals.
    This call's images are tallied into it.
    """
    counted = {} if counted is None else counted
    summary = Summary(run_id=run_id, plan=plan, cutout_mode=cutout_mode)
    per_target = _per_target(rows, works, outcomes)
    counts: Counter[str] = Counter()
    subtype = _by_image(rows, "dataproduct_subtype")
    band = _by_image(rows, band_column)
    for work in works:
        tally = counted.get(work.key)
        first = tally is None
        if tally is None:
            tally = counted[work.key] = ImageTally()
            summary.images += 1
            counts[f"{subtype.get(work.key, '?')} {band.get(work.key, '') or '-'}"] += 1
        outcome = outcomes.get(work.key)
        failure = failure_of(outcome) if outcome else "image was not processed"
        if failure and not tally.failed:
            tally.failed = True
            summary.failures.append((work.key, failure))
        if outcome is None:
            continue
        _count_outcome(
            summary,
            work,
            outcome,
            tally,
            first,
            plan=plan,
            cutout_radius=cutout_radius,
            cutout_mode=cutout_mode,
        )
    summary.by_subtype_band = dict(sorted(counts.items()))
    summary.targets = sorted(per_target.values(), key=lambda t: t.name)
    return summary


def merge(run_id: str, parts: Sequence[Summary], *, plan: bool = False) -> Summary:
    """One summary from the summaries of a run's shards (made with one ``counted`` set,
    so an image shared by two shards is counted once): counts add up, lists join."""
    out = Summary(run_id=run_id, plan=plan, cutout_mode=any(p.cutout_mode for p in parts))
    totals = [
        f.name
        for f in fields(Summary)
        if f.type in ("int", int) and f.name not in ("plan", "cutout_mode")
    ]
    kinds: Counter[str] = Counter()
    for part in parts:
        for name in totals:
            setattr(out, name, getattr(out, name) + getattr(part, name))
        out.targets += part.targets
        out.failures += part.failures
        kinds.update(part.by_subtype_band)
    out.targets.sort(key=lambda t: t.name)
    out.by_subtype_band = dict(sorted(kinds.items()))
    return out


CUTOUT_HEADER_BYTES = 4 * 2880  # headers a cutout carries whatever its size (a few HDUs)


def cutout_bytes(verdict, radius: float | None, content_length: int | None) -> int | None:
    """About how many bytes a SODA cutout of ``radius`` deg around the target will be.

    A circle cutout is the pixel box around it, clipped to the image: (2r / pixel scale)
    pixels a side, from the header's WCS (scale near the centre) and grid (NAXIS1/2). Each
    image plane (image, mask, variance, ...) is cut to the same box, so the cutout is the
    file's size times the box's share of the grid, plus its headers. None without a size,
    a radius or the header's scale and grid (verdicts reused from an earlier run).
    """
    if not (radius and content_length and verdict.pixel_scale and verdict.grid):
        return None
    if verdict.x is None or verdict.y is None:
        return None
    nx, ny = verdict.grid
    half = radius / verdict.pixel_scale
    width = max(0.0, min(verdict.x + half, nx - 0.5) - max(verdict.x - half, -0.5))
    height = max(0.0, min(verdict.y + half, ny - 0.5) - max(verdict.y - half, -0.5))
    share = min(1.0, (width * height) / (nx * ny))
    return min(content_length, round(content_length * share) + CUTOUT_HEADER_BYTES)
