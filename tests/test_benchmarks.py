"""The benchmark's code path with tiny settings: every row is there and the ratios are
computed. Not a timing test (``make bench`` is where the numbers mean something)."""

from __future__ import annotations

import math

import pytest

from benchmarks import report
from benchmarks.bench import Options, parse_args, run

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_tiny_benchmark_prints_every_row_with_ratios(tmp_path):
    options = Options(
        targets=2,
        runs=1,
        latency=0.005,
        bandwidth=0.0,
        visits=24,
        rss=False,
        cache_dir=tmp_path / "cache",
        start_prefect=False,  # the session's prefect_harness is the API
    )
    table, measured = run(options)
    text = table.render()
    titles = [row.title for row in table.rows]
    for title in (
        "wall time, median of 1",
        "obsharvest / baseline",
        "obsharvest / raw limit",
        "obsharvest / correct-harvest limit",
        "baseline / raw limit",
        "verify bytes / image bytes",
        "peak RSS, images ~10x larger",
        "task runs per 10k images",
        "stage split (median run)",
        "CPU: client (images stage)",
        "image workers / one process",
        "verification CPU per header",
        "scaling N -> 2N targets",
        "HTTP requests (median run)",
        "MB from /files (median run)",
    ):
        assert title in titles and title in text
    judged = {row.title: row for row in table.rows if row.passed is not None}
    assert set(judged) == {
        "obsharvest / baseline",
        "obsharvest / raw limit",
        "obsharvest / correct-harvest limit",  # judged: this workload has no bandwidth cap
        "verify bytes / image bytes",
        "verification CPU per header",
        "task runs per 10k images",
        "scaling N -> 2N targets",
    }
    assert all(row.result in ("PASS", "MISS") and row.result in text for row in judged.values())
    h, b, lim = measured.harvest[0], measured.baseline[0], measured.limit[0]
    for value in (h.seconds / b.seconds, h.seconds / lim.seconds):
        assert math.isfinite(value) and value > 0
    assert f"{h.seconds / b.seconds:.3f}" in text and f"{h.seconds / lim.seconds:.3f}" in text
    # the three contenders did the same work: the limit moved exactly what obsharvest stored
    assert h.stored and set(h.stored) == set(b.downloaded)
    assert lim.files == len(h.stored)
    # the correct-harvest limit moved the same bytes, and its ratio is printed
    ok = measured.correct[0]
    assert (ok.files, ok.bytes) == (lim.files, lim.bytes)
    assert f"{h.seconds / ok.seconds:.3f}" in text
    vc = measured.verify_cpu
    assert vc.files > 0 and math.isfinite(vc.ms_per_header) and vc.ms_per_header > 0
    assert f"{vc.ms_per_header:.2f} ms" in text
    assert h.cpu > 0 and " cores busy" in text
    one = measured.one_process[0]  # the same run with image_processes off
    assert set(one.stored) == set(h.stored) and f"{h.seconds / one.seconds:.3f}" in text
    assert h.task_runs > 0 and set(h.stages) >= {"query", "images", "metadata"}
    assert "correctness: obsharvest stored exactly" in text


def test_options_parse_with_defaults_that_fit_ten_minutes():
    options = parse_args([])
    assert (options.targets, options.runs, options.latency) == (10, 3, 0.02)
    assert options.big_binning == 3  # files ~11x bigger than binning 10
    custom = parse_args(["--targets", "4", "--runs", "1", "--bandwidth", "0", "--no-rss"])
    assert (custom.targets, custom.runs, custom.bandwidth, custom.rss) == (4, 1, 0.0, False)


def test_task_runs_per_10k_does_not_charge_fixed_tasks_to_every_image():
    # 3 fixed task runs + one per 250 images
    projected, how = report.tasks_per_10k([(300, 5, 2), (600, 6, 3)])
    assert "affine" in how and 35 < projected < 45
    same_bucket, how = report.tasks_per_10k([(50, 4, 1), (100, 4, 1)])
    assert "scaled" in how and same_bucket == pytest.approx(3 + 10_000 / 50)


def test_tiny_multi_service_benchmark_prints_the_ratios_and_checks_the_union(tmp_path):
    from benchmarks.many import Options as ManyOptions
    from benchmarks.many import run as run_many

    options = ManyOptions(
        services=2,
        targets=1,
        latency=0.005,
        visits=24,
        cache_dir=tmp_path / "cache",
        start_prefect=False,  # the session's prefect_harness is the API
    )
    lines, rounds, truth = run_many(options)
    text = "\n".join(lines)
    (one,) = rounds
    assert set(one.single) == {"svc1", "svc2"}
    assert f"{one.multi.seconds / one.slowest:.3f}" in text
    assert f"{one.multi.seconds / one.sequential:.3f}" in text
    assert "multi / slowest single" in text and "multi / sequential baseline" in text
    # each archive its own seed: its own images, all stored once in the run over both
    assert truth and one.multi.all_stored == truth
    assert one.multi.stored["svc1"] and one.multi.stored["svc2"]
    assert not one.multi.stored["svc1"] & one.multi.stored["svc2"]
    assert "stored exactly the union of the single runs" in text
    assert lines[-1].startswith(("PASS ", "FAIL ")) and "slowest single-service run" in lines[-1]
