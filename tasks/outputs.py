"""What a run leaves behind besides the FITS: its Parquet part and the quicklook gallery."""

from __future__ import annotations

from astropy.table import Table
from prefect import task
from prefect.cache_policies import NO_CACHE

from obsharvest import assemble
from obsharvest.metadata import MetadataStore
from obsharvest.models import ImageOutcome, Target
from obsharvest.products.quicklook import GalleryItem
from obsharvest.storage.output import Output

from . import artifacts


@task(name="write-metadata", cache_policy=NO_CACHE)
def write_metadata(
    rows: Table,
    targets: dict[str, Target],
    outcomes: dict[str, ImageOutcome],
    run_id: str,
    output: Output,
    service: str | None = None,
    served_by: dict[str, list[str]] | None = None,
) -> list[str]:
    """This run's own Parquet files, never a rewrite of another run's (runs at once):
    ``rows`` of one ``service``, ``served_by`` naming every service serving each image."""
    if len(rows) == 0:
        return []
    table = assemble.metadata_rows(
        rows, targets, outcomes, run_id, service=service, served_by=served_by
    )
    return MetadataStore(output).append(table, run_id=run_id)


@task(name="footprint-maps", cache_policy=NO_CACHE)
def footprints(
    rows: Table,
    targets: dict[str, Target],
    outcomes: dict[str, ImageOutcome],
    output: Output,
) -> list[GalleryItem]:
    """The footprint maps of a shard's targets; their gallery items, for the index."""
    from obsharvest.products.gallery import write_footprints

    return write_footprints(rows, targets, outcomes, output)


@task(name="quicklook-gallery", cache_policy=NO_CACHE)
def gallery(items: list[GalleryItem], output: Output) -> str:
    """The gallery's index.html over everything in the output (runs writing into one
    output at once all appear), and an artifact of this run's own items."""
    from obsharvest.products.gallery import run_markdown, write_index

    index, _ = write_index(output)
    artifacts.publish_gallery(run_markdown(items), index)
    return index
