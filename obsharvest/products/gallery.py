"""The quicklook gallery beside the output: per target, its PNGs and a footprint map.

``<output>/gallery/index.html`` (static, escaped) links every quicklook and FITS, and
``<output>/gallery/<target>-footprint.png`` shows the ``s_region`` outlines found around
each target coloured by verdict, like the seed tutorial's Figure 1 — the padding problem
visible at a glance. The same index goes to Prefect as a markdown artifact.
"""

from __future__ import annotations

import io
import posixpath
from collections import defaultdict
from collections.abc import Mapping, Sequence

import fsspec
from astropy.table import Table

from obsharvest.models import ImageOutcome, Target
from obsharvest.products.quicklook import (
    GalleryItem,
    footprint_map_png,
    gallery_html,
    gallery_markdown,
)
from obsharvest.query.adql import TARGET_COLUMN
from obsharvest.storage.keys import sanitize_part
from obsharvest.verify.sregion import region_text

GALLERY_DIR = "gallery"


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


def _root(output_url: str, storage_options: Mapping | None):
    fs, root = fsspec.core.url_to_fs(output_url, **dict(storage_options or {}))
    return fs, fs.unstrip_protocol(root.rstrip("/")), posixpath.join(root.rstrip("/"), GALLERY_DIR)


def write_footprints(
    rows: Table,
    targets: Mapping[str, Target],
    outcomes: Mapping[str, ImageOutcome],
    output_url: str,
    storage_options: Mapping | None = None,
) -> list[GalleryItem]:
    """Write the footprint map of each target of ``rows``; return the gallery's items for
    them (their quicklooks and maps). A run in shards calls this per shard and writes the
    index once, from the items, which are small."""
    fs, output_uri, directory = _root(output_url, storage_options)
    fs.makedirs(directory, exist_ok=True)
    items = gallery_items(rows, outcomes, output_uri)
    for name, regions in footprint_regions(rows, outcomes).items():
        buffer = io.BytesIO()
        footprint_map_png(targets[name], regions, buffer, title=f"{name}: s_region by verdict")
        png = f"{sanitize_part(name)}-footprint.png"
        with fs.open(posixpath.join(directory, png), "wb") as fh:
            fh.write(buffer.getvalue())
        items.append(GalleryItem(target=name, png=png, title="footprints around the target"))
    return items


def write_index(
    items: Sequence[GalleryItem], output_url: str, storage_options: Mapping | None = None
) -> tuple[str, str]:
    """Write index.html; return (its URI, markdown for an artifact)."""
    fs, _, directory = _root(output_url, storage_options)
    fs.makedirs(directory, exist_ok=True)
    index = posixpath.join(directory, "index.html")
    with fs.open(index, "w") as fh:
        fh.write(gallery_html(list(items)))
    return fs.unstrip_protocol(index), gallery_markdown(list(items), title="Quicklooks by target")
