"""The wheel installs one top-level import package, ``obsharvest``: the design's top-level
folders ``flows/`` and ``tasks/`` and the embedded archive (``simarchive/``) go inside it,
so no generic name (``flows``, ``tasks``) lands in a user's environment, and the archive's
parser (sqlglot) comes only with the ``archive`` extra."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {
    "obsharvest": "obsharvest",
    "flows": "obsharvest/flows",
    "tasks": "obsharvest/tasks",
    "simarchive": "obsharvest/simarchive",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        cwd=build,
    )
    (found,) = out.glob("obsharvest-*.whl")
    return found


def test_the_wheel_adds_one_top_level_package(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    added = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info"))
    assert added == ["bin", "obsharvest"] or added == ["obsharvest"], added
    (info,) = target.glob("obsharvest-*.dist-info")
    if (info / "top_level.txt").exists():
        assert (info / "top_level.txt").read_text().split() == ["obsharvest"]


def test_every_module_of_the_tree_is_in_the_wheel_under_obsharvest(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{MAPPED[folder]}/{p.relative_to(ROOT / folder).as_posix()}"
        for folder in MAPPED
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected - names == set()
    assert not [n for n in names if n.split("/")[0] in ("flows", "tasks", "simarchive")]


def test_the_archive_parser_is_an_extra_and_the_script_names_the_package(wheel):
    archive = zipfile.ZipFile(wheel)
    info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    requires = [
        line.split(":", 1)[1].strip()
        for line in archive.read(info).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    sqlglot = [r for r in requires if r.startswith("sqlglot")]
    assert sqlglot and all('extra == "archive"' in r for r in sqlglot), sqlglot
    entry = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
    assert "obsharvest = obsharvest.flows.cli:main" in archive.read(entry).decode()


def test_nothing_imports_the_folders_by_their_own_names():
    """In a checkout ``import flows`` would work (the repository root is on sys.path) and
    load a second copy of every module; installed it fails. Nothing may use it."""
    import re

    bad = re.compile(r"^\s*(from|import) (flows|tasks|simarchive)\b", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("obsharvest", "flows", "tasks", "simarchive", "tests", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
        if bad.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
