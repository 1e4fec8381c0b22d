"""The run's Prefect artifacts: a per-target table and a markdown summary."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.assemble import Summary
from tasks.report import markdown, target_rows


def publish(summary: Summary) -> None:
    create_table_artifact(
        key="harvest-targets",
        table=target_rows(summary),
        description="Per target: rows, true matches, s_region false positives, "
        "stored, bytes, failures",
    )
    create_markdown_artifact(
        key="harvest-summary", markdown=markdown(summary), description="Harvest summary"
    )
