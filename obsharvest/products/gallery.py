"""The quicklook gallery beside the output: per target, its PNGs and a footprint map.

``<output>/gallery/index.html`` (static, escaped) links every quicklook and FITS, and
``<output>/gallery/<target>-footprint.png`` shows the ``s_region`` outlines found around
each target coloured by verdict, like the seed tutorial's Figure 1 — the padding problem
visible at a glance. A run's own items go to Prefect as a markdown artifact.

Several runs may write into one output at once, so the index is not made from the items
of the run that writes it (the run ending last would then hide the others): it is built
from what the output holds -- the current Parquet view's quicklook rows and the footprint
maps present -- and rewritten until the output did not change while it was written
(:func:`write_index`). Each file is one single-shot put (``pipe_file``): on Azure two
block-list uploads of one key at once make the later commit fail.
"""

from __future__ import annotations

import io
import posixpath
from collections import defaultdict
from collections.abc import Mapping

from astropy.table import Table

from obsharvest.metadata import TARGET_NAME, MetadataStore
from obsharvest.models import ImageOutcome, Target
from obsharvest.products.quicklook import (
    GalleryItem,
    footprint_map_png,
    gallery_html,
    gallery_markdown,
)
from obsharvest.query.adql import TARGET_COLUMN
from obsharvest.storage.keys import sanitize_part
from obsharvest.storage.output import Output
from obsharvest.verify.sregion import region_text

GALLERY_DIR = "gallery"
INDEX_NAME = "index.html"
FOOTPRINT_SUFFIX = "-footprint.png"
FOOTPRINT_TITLE = "footprints around the target"
INDEX_ATTEMPTS = 10  # rewrites while other runs keep adding to the output (each one ends)
INDEX_COLUMNS = (
    "obs_id",
    "dataproduct_subtype",
    "obsh_verdict",
    "obsh_quicklook_uri",
    "obsh_storage_uri",
)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _relative(uri: str, output_uri: str) -> str:
    """Links inside the output are relative to gallery/, so the folder can be moved."""
    root = output_uri.rstrip("/") + "/"
    if uri.startswith(root):
        return "../" + uri[len(root) :]
    return uri


def gallery_items(
    rows: Table, outcomes: Mapping[str, ImageOutcome], output_uri: str
) -> list[GalleryItem]:
    items = []
    for row in rows:
        did, name = _text(row["obs_publisher_did"]), _text(row[TARGET_COLUMN])
        outcome = outcomes.get(did)
        if outcome is None or not outcome.quicklooks.get(name):
            continue
        stored = outcome.stored_for(name)
        verdict = outcome.verdicts.get(name)
        items.append(
            GalleryItem(
                target=name,
                png=_relative(outcome.quicklooks[name], output_uri),
                fits=_relative(stored.uri, output_uri) if stored else None,
                title=f"{_text(row['obs_id'])} {_text(row['dataproduct_subtype'])}",
                verdict=verdict.verdict.value if verdict else None,
            )
        )
    return items


def footprint_regions(rows: Table, outcomes: Mapping[str, ImageOutcome]) -> dict[str, list]:
    """Per target: (s_region, label, verdict, kind) of every image found for it."""
    regions: dict[str, list] = defaultdict(list)
    xtype = rows["s_region"].meta.get("xtype") if "s_region" in rows.colnames else None
    for row in rows:
        did, name = _text(row["obs_publisher_did"]), _text(row[TARGET_COLUMN])
        outcome = outcomes.get(did)
        verdict = outcome.verdicts.get(name) if outcome else None
        subtype = _text(row["dataproduct_subtype"])
        coadd = "coadd" in subtype.lower()
        label = (
            f"{_text(row['lsst_tract'])}_{_text(row['lsst_patch'])}"
            if coadd and "lsst_tract" in rows.colnames
            else _text(row["obs_id"])
        )
        regions[name].append(
            (
                region_text(row["s_region"], xtype),  # STC-S, a DALI array's too
                label,
                verdict.verdict.value if verdict else None,
                "coadd" if coadd else "visit",
            )
        )
    return regions


def write_footprints(
    rows: Table,
    targets: Mapping[str, Target],
    outcomes: Mapping[str, ImageOutcome],
    output: Output | str,
) -> list[GalleryItem]:
    """Write the footprint map of each target of ``rows``; return the gallery's items for
    them (their quicklooks and maps). A run in shards calls this per shard and writes the
    index once, from the items, which are small."""
    output = Output.of(output)
    fs, directory = output.fs, output.path(GALLERY_DIR)
    fs.makedirs(directory, exist_ok=True)
    items = gallery_items(rows, outcomes, output.uri())
    for name, regions in footprint_regions(rows, outcomes).items():
        buffer = io.BytesIO()
        footprint_map_png(targets[name], regions, buffer, title=f"{name}: s_region by verdict")
        png = f"{sanitize_part(name)}{FOOTPRINT_SUFFIX}"
        fs.pipe_file(posixpath.join(directory, png), buffer.getvalue())
        items.append(GalleryItem(target=name, png=png, title=FOOTPRINT_TITLE))
    return items


def output_items(output: Output | str) -> list[GalleryItem]:
    """The gallery of everything in the output, whichever run made it: a quicklook per
    current Parquet row that has one, and per target its footprint map if one is stored;
    targets by name, a target's images by obs_id, its map last."""
    output = Output.of(output)
    output_uri = output.uri()
    view = MetadataStore(output).read(columns=INDEX_COLUMNS)
    every = view.to_pylist() if view is not None else []
    rows = [r for r in every if r.get("obsh_quicklook_uri")]
    rows.sort(key=lambda r: (r[TARGET_NAME], str(r.get("obs_id")), r["obs_publisher_did"]))
    maps = set(_footprints(output))
    by_target: dict[str, list[GalleryItem]] = defaultdict(list)
    for row in rows:
        by_target[row[TARGET_NAME]].append(
            GalleryItem(
                target=row[TARGET_NAME],
                png=_relative(row["obsh_quicklook_uri"], output_uri),
                fits=_relative(row["obsh_storage_uri"], output_uri)
                if row.get("obsh_storage_uri")
                else None,
                title=f"{row.get('obs_id')} {row.get('dataproduct_subtype')}",
                verdict=row.get("obsh_verdict"),
            )
        )
    for target in {str(r[TARGET_NAME]) for r in every}:
        png = f"{sanitize_part(target)}{FOOTPRINT_SUFFIX}"
        if png in maps:
            by_target[target].append(GalleryItem(target=target, png=png, title=FOOTPRINT_TITLE))
    return [item for target in sorted(by_target) for item in by_target[target]]


def _footprints(output: Output) -> list[str]:
    fs, directory = output.fs, output.path(GALLERY_DIR)
    fs.invalidate_cache(directory)  # other runs write here
    try:
        names = [posixpath.basename(p) for p in fs.ls(directory, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(FOOTPRINT_SUFFIX))


def _snapshot(output: Output) -> tuple:
    """What the index depends on, cheaply: the Parquet file names and the maps present."""
    return tuple(MetadataStore(output).files()), tuple(_footprints(output))


def write_index(output: Output | str) -> tuple[str, int]:
    """Write ``gallery/index.html`` from what the output holds; return (its URI, items).

    Runs ending at once each rewrite the index: it is (re)built until the output is the
    same after the write as it was before the read. Then whichever write lands last saw
    every run that had published before it, and a run publishing later writes after it
    (its own index is built after its Parquet is published). A run ending alone reads once,
    writes once and checks once.
    """
    output = Output.of(output)
    fs, directory = output.fs, output.path(GALLERY_DIR)
    index = posixpath.join(directory, INDEX_NAME)
    before = _snapshot(output)
    items: list[GalleryItem] = []
    for _ in range(INDEX_ATTEMPTS):
        items = output_items(output)
        fs.makedirs(directory, exist_ok=True)
        fs.pipe_file(index, gallery_html(items).encode())
        after = _snapshot(output)
        if after == before:
            break
        before = after
    return output.uri(index), len(items)


def run_markdown(items: list[GalleryItem]) -> str:
    """The run's own quicklooks and maps, for its Prefect artifact."""
    return gallery_markdown(items, title="Quicklooks by target")
