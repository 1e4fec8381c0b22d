"""The one table ``make bench`` prints, and the checks against issue 8's targets."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

# issue 8's targets
SPEEDUP_MIN = 30.0  # obsharvest at least 30x faster than the baseline (issue 8)
SPEEDUP_MIN_LATENCY = 15.0  # latency-bound: at least 15x (issue 25)
LIMIT_MAX = 1.15  # bandwidth-bound: at most 1.15x the raw-transfer limit (issue 25; 8: 1.25)
VERIFY_MAX = 0.01  # verification reads at most 1% of the verified images' bytes
RSS_MAX = 1.2  # peak RSS with 10x larger images at most 1.2x
TASKS_MAX = 100  # Prefect task runs per 10k images
SCALING_MAX = 2.2  # time(2N) / time(N): no faster than linear
# issue 25's targets
CORRECT_MAX = 1.5  # latency-bound: at most 1.5x the correct-harvest limit
VERIFY_CPU_MS_MAX = 3.0  # header bytes to verdicts in at most 3 ms of CPU per header

ROW_TITLES = (
    "wall time, median",
    "obsharvest / baseline",
    "obsharvest / raw limit",
    "verify bytes / image bytes",
    "peak RSS, images 10x larger",
    "task runs per 10k images",
    "stage split (median run)",
    "scaling N -> 2N targets",
    "HTTP requests (median run)",
    "MB transferred (median run)",
)


@dataclass
class Row:
    title: str
    baseline: str = ""
    obsharvest: str = ""
    limit: str = ""
    value: str = ""
    target: str = ""
    passed: bool | None = None  # None: informative row, no target

    @property
    def result(self) -> str:
        return "" if self.passed is None else ("PASS" if self.passed else "MISS")


@dataclass
class Table:
    header: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        cols = ["", "baseline", "obsharvest", "raw limit", "measured", "target", "result"]
        cells = [
            [r.title, r.baseline, r.obsharvest, r.limit, r.value, r.target, r.result]
            for r in self.rows
        ]
        widths = [max(len(c[i]) for c in [cols, *cells]) for i in range(len(cols))]

        def line(values: Sequence[str]) -> str:
            parts = [values[0].ljust(widths[0])]
            parts += [v.rjust(w) for v, w in zip(values[1:4], widths[1:4], strict=True)]
            parts += [v.ljust(w) for v, w in zip(values[4:], widths[4:], strict=True)]
            return "  ".join(parts).rstrip()

        rule = "-" * len(line(cols))
        out = [*self.header, "", line(cols), rule, *(line(c) for c in cells), rule]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def median_index(values: Sequence[float]) -> int:
    """Index of the run whose value is the (lower) median."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(order) - 1) // 2]


def fmt_s(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f} s"


def fmt_ratios(values: Sequence[float]) -> str:
    each = " ".join(f"{v:.3f}" for v in values)
    return f"{median(values):.3f}" if len(values) == 1 else f"{median(values):.3f} ({each})"


def tasks_per_10k(counts: Sequence[tuple[int, int, int]]) -> tuple[float, str]:
    """Task runs per 10k images from (images, task runs, image-task runs) of two sizes.

    A run has a few fixed task runs (load targets, write metadata, one query per 500
    targets) plus one per batch of images; scaling the total proportionally would charge
    the fixed ones to every image. The N and 2N runs give the slope; when both fall in the
    same number of image batches, the image tasks are scaled instead.
    """
    (i1, c1, b1), (i2, c2, _) = counts
    if i2 != i1 and c2 != c1:
        slope = (c2 - c1) / (i2 - i1)
        return c1 + slope * (10_000 - i1), "affine fit of the N and 2N runs"
    fixed = c1 - b1
    return fixed + b1 * 10_000 / max(i1, 1), "fixed tasks + image tasks scaled"
