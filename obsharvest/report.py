"""What a person reads after a harvest: a per-target table and a markdown summary.

Pure rendering of ``assemble.Summary``; the flow turns these into Prefect artifacts and
the CLI prints them.
"""

from __future__ import annotations

import unicodedata

from obsharvest.models import Summary
from obsharvest.net.redact import redact
from obsharvest.runtime import stopping


def human_bytes(n: int | float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def service_rows(summary: Summary) -> list[dict]:
    """One row per service of the run (the Prefect table artifact ``harvest-services``)."""
    return [
        {
            "service": v.name,
            "rows": v.rows,
            "images": v.images,
            "also served by another": v.also_elsewhere,
            "stored": v.stored,
            "bytes": v.bytes,
            "failed": v.failed,
            "seconds": round(v.seconds, 1),
        }
        for v in summary.services
    ]


def target_rows(summary: Summary) -> list[dict]:
    return [
        {
            "target": t.name,
            "rows": t.rows,
            "true matches": t.contains,
            "false positives": t.outside,
            "undecided": t.undecided,
            "stored": t.stored,
            "bytes": t.bytes,
            "failures": t.failures,
        }
        for t in summary.targets
    ]


def markdown(summary: Summary, *, max_failures: int = 50) -> str:
    s = summary
    kind = "Plan (dry run)" if s.plan else "Harvest"
    lines = [
        f"# {kind} {s.run_id}",
        "",
        f"- targets: **{len(s.targets)}**, unique images: **{s.images}**",
        f"- `s_region` false-positive rate (in the padded region, not on the pixels): "
        f"**{s.false_positive_rate:.1%}**",
    ]
    if s.plan:
        lines.append(f"- {plan_line(s).removeprefix('plan: ')}")
    else:
        lines += [
            f"- stored images: **{s.stored_images}** ({human_bytes(s.stored_bytes)}); "
            f"downloaded this run: {s.downloaded} ({human_bytes(s.downloaded_bytes)}); "
            f"already in storage: {s.already_stored}; decided by earlier runs: {s.reused}",
        ]
    lines += [f"- failures: **{len(s.failures)}**", ""]
    if s.metadata_written:
        lines.append(f"Parquet: `{s.metadata_url}`  ")
    if s.stored_images:
        lines.append(f"FITS: `{s.storage_url}`")
    lines.append("")
    if s.by_subtype_band:
        lines += ["## Images by subtype and band", "", "| subtype band | images |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s.by_subtype_band.items()]
        lines.append("")
    if s.failures:
        lines += ["## Failures", "", "| image | reason |", "|---|---|"]
        for image, reason in s.failures[:max_failures]:
            lines.append(f"| `{image}` | {redact(reason).replace('|', '/')} |")
        if len(s.failures) > max_failures:
            lines.append(f"| … | {len(s.failures) - max_failures} more |")
    return "\n".join(lines) + "\n"


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide (East Asian W/F) characters take two,
    combining marks and zero-width characters none."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def fit(text: str, width: int) -> str:
    """``text`` cut (with "…") and padded to exactly ``width`` terminal columns."""
    text = " ".join(text.split())  # a name with a tab or newline must not break the row
    if display_width(text) > width:
        out, used = [], 0
        for char in text:
            w = display_width(char)
            if used + w > width - 1:
                break
            out.append(char)
            used += w
        while out and unicodedata.combining(out[-1]):  # keep marks with their letter
            out.pop()
        text = "".join(out) + "…"
    return text + " " * (width - display_width(text))


def plan_line(s: Summary) -> str:
    if not s.cutout_mode:
        return f"plan: {s.images} images; would download {human_bytes(s.planned_bytes)}"
    line = (
        f"plan: {s.images} images, {s.planned_cutouts} cutouts; would download about "
        f"{human_bytes(s.planned_bytes)} (each cutout: the file's size times the share of "
        "its pixels within the cutout radius)"
    )
    if s.planned_unknown:
        line += f"; {s.planned_unknown} cutouts not estimated (no size or header known)"
    return line


def split_unfinished(
    failures: list[tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[str]]:
    """The failures that are failures, and one line per reason for what a stop left
    unfinished (``136 images not finished: interrupted by SIGINT``): a stop is not 136
    problems. Each image keeps its own reason in the Parquet and ``Summary.failures``."""
    failed: list[tuple[str, str]] = []
    counts: dict[tuple[str, str], int] = {}
    for key, reason in failures:
        if reason.startswith(stopping.INTERRUPTED):
            kind = "targets not queried" if key.startswith("target ") else "images not finished"
            counts[kind, reason] = counts.get((kind, reason), 0) + 1
        else:
            failed.append((key, reason))
    lines = [f"{n} {kind}: {redact(reason)}" for (kind, reason), n in counts.items()]
    return failed, lines


def service_lines(summary: Summary) -> list[str]:
    """One line per service of a run over several: what each served and what came from
    it (an image several serve is stored once, from the first of them)."""
    out = [
        f"{'service':<24} {'rows':>6} {'images':>6} {'shared':>6} {'stored':>6} "
        f"{'bytes':>10} {'fail':>5} {'time':>7}"
    ]
    for v in summary.services:
        out.append(
            f"{fit(v.name, 24)} {v.rows:>6} {v.images:>6} {v.also_elsewhere:>6} {v.stored:>6} "
            f"{human_bytes(v.bytes):>10} {v.failed:>5} {v.seconds:>6.1f}s"
        )
    return out


def text(summary: Summary, *, max_targets: int = 20) -> str:
    """The CLI's closing report. Names are fitted by display width, so the columns stay
    aligned for any script; the Parquet and FITS lines appear only when there is
    something there."""
    s = summary
    out = []
    header = f"{'target':<24} {'rows':>6} {'match':>6} {'false+':>6} {'stored':>6} {'bytes':>10} {'fail':>5}"
    out.append(header)
    for t in s.targets[:max_targets]:
        out.append(
            f"{fit(t.name, 24)} {t.rows:>6} {t.contains:>6} {t.outside:>6} {t.stored:>6} "
            f"{human_bytes(t.bytes):>10} {t.failures:>5}"
        )
    if len(s.targets) > max_targets:
        out.append(f"… and {len(s.targets) - max_targets} more targets")
    out.append("")
    if len(s.services) > 1:
        out += service_lines(s)
        out.append("")
    if s.plan:
        out.append(plan_line(s))
    else:
        out.append(
            f"{s.images} images: {s.stored_images} stored ({human_bytes(s.stored_bytes)}), "
            f"{s.downloaded} downloaded now ({human_bytes(s.downloaded_bytes)}), "
            f"s_region false positives {s.false_positive_rate:.1%}"
        )
    failures, unfinished = split_unfinished(s.failures)
    for image, reason in failures[:10]:
        out.append(f"FAILED {image}: {redact(reason)}")
    if len(failures) > 10:
        out.append(f"… and {len(failures) - 10} more failures")
    out += unfinished
    if s.metadata_written:
        out.append(f"Parquet: {s.metadata_url}")
    else:
        out.append("Parquet: nothing written" + ("" if s.interrupted else " (no ObsCore rows)"))
    if s.stored_images:
        out.append(f"FITS:    {s.storage_url}")
    return "\n".join(out)
