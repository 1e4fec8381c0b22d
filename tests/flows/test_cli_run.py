"""``obsharvest run``: the user's view — exit codes, one-line errors, where results are."""

from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from obsharvest.flows.cli import main

LOCAL = "config/local.yaml"


def one_line_error(capfd) -> str:
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--targets", "{bad_csv}"], "row 2, column 'dec'"),
        (
            ["--ra", "62", "--dec", "-37", "--set", "query.maxrex=4"],
            "--set query.maxrex=4: unknown key; did you mean query.maxrec?",
        ),
        (["--ra", "62", "--dec", "-37", "--bands", "i' OR 1=1"], "constraints.bands"),
        (["--ra", "62"], "give both ra and dec"),
        (
            ["--ra", "62", "--dec", "-37", "--set", "concurrency.verify_workers=-2"],
            "concurrency.verify_workers",
        ),
        (["--ra", "62", "--dec", "-37", "--set", "query.strategy=fastest"], "query.strategy"),
        (["--ra", "62", "--dec", "-97"], "dec"),
        (
            ["--config", "config/nope.yaml", "--ra", "1", "--dec", "2"],
            "config/nope.yaml: no such file",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, words, capfd, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,ra,dec\na,62,-37\nb,62,95\n")
    argv = [a.replace("{bad_csv}", str(bad)) for a in argv]
    if "--config" not in argv:
        argv = ["--config", LOCAL, *argv]
    assert main(["run", *argv, "--output", str(tmp_path / "out")]) == 2
    assert words in one_line_error(capfd)


@pytest.mark.usefixtures("prefect_harness")
def test_run_prints_results_and_where_they_are(capfd, tmp_path):
    out = tmp_path / "out"
    code = main(["run", "--config", LOCAL, "--ra", "62", "--dec", "-37", "--output", str(out)])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert f"Parquet: {out}/metadata" in captured.out and f"FITS:    {out}/fits" in captured.out
    rows = ds.dataset(str(out / "metadata"), format="parquet").to_table()
    assert rows.num_rows > 0
    assert "stored" in captured.out


@pytest.mark.usefixtures("prefect_harness")
def test_error_found_during_the_run_is_one_line(capfd, tmp_path):
    code = main(
        [
            "run",
            "--config",
            LOCAL,
            "--ra",
            "62",
            "--dec",
            "-37",
            "--output",
            str(tmp_path),
            "--set",
            "constraints.extra_where=nosuchcol = 1",
        ]
    )
    assert code == 2
    assert "nosuchcol" in one_line_error(capfd)
