"""The run's Prefect artifacts: progress, a per-target table, a markdown summary, links."""

from __future__ import annotations

import os
from typing import cast
from urllib.parse import urlsplit
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from obsharvest.models import Summary
from obsharvest.net.redact import redact
from obsharvest.report import markdown, service_rows, target_rows


def _link(url: str) -> str:
    """A clickable form of an output location (local paths become file:// URLs)."""
    if urlsplit(url).scheme:
        return url
    return "file://" + os.path.abspath(url)


class ProgressTracker:
    """A progress artifact, updated as image batches finish."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._id: UUID | None
        try:
            # created from the (sync) flow: the artifact's id, not a coroutine
            self._id = cast(
                UUID,
                create_progress_artifact(
                    0.0, key="harvest-progress", description="Images decided and stored"
                ),
            )
        except Exception:  # outside a run (or no API): progress is a nicety, not a need
            self._id = None

    def advance(self, n: int) -> None:
        self.done += n
        if self._id is not None:
            update_progress_artifact(self._id, 100.0 * self.done / self.total)


def failure_message(summary: Summary, limit: int = 3, each: int = 220, total: int = 800) -> str:
    """The run's Failed-state message: a few failures, each cut to ``each`` characters and
    the whole to ``total``, because Prefect logs it as one line (log lines of a harvest stay
    under 1,000 characters); the full list is in the Parquet and the summary artifact."""
    head = "; ".join(  # redacted before cutting: a cut secret would no longer be recognised
        _cut(redact(f"{image}: {reason}"), each) for image, reason in summary.failures[:limit]
    )
    more = f" (and {len(summary.failures) - limit} more)" if len(summary.failures) > limit else ""
    return _cut(f"{len(summary.failures)} images or targets failed: {head}{more}", total)


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def publish(summary: Summary) -> None:
    create_table_artifact(
        key="harvest-targets",
        table=target_rows(summary),
        description="Per target: rows, true matches, s_region false positives, "
        "stored, bytes, failures",
    )
    if summary.services:
        create_table_artifact(
            key="harvest-services",
            table=service_rows(summary),
            description="Per service: rows, images (and how many another service serves "
            "too), stored from it, bytes, failures, seconds",
        )
    create_markdown_artifact(
        key="harvest-summary", markdown=markdown(summary), description="Harvest summary"
    )
    if summary.metadata_written:  # no rows, no Parquet: no link to nothing
        create_link_artifact(
            key="harvest-parquet",
            link=_link(summary.metadata_url),
            link_text="Parquet metadata",
            description="ObsCore rows with verdicts",
        )
    if summary.stored_images:
        create_link_artifact(
            key="harvest-fits",
            link=_link(summary.storage_url),
            link_text="Stored FITS",
            description="Images that contain a target",
        )


def publish_gallery(markdown_text: str, index_uri: str) -> None:
    create_markdown_artifact(
        key="harvest-gallery",
        markdown=markdown_text,
        description="Quicklook PNGs and footprint maps by target",
    )
    create_link_artifact(
        key="harvest-gallery-index",
        link=_link(index_uri),
        link_text="Gallery (static HTML)",
        description="index.html beside the output",
    )
