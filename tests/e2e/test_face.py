"""``from obsharvest import harvest``: a script or notebook runs a whole harvest with one
call, in plain Python, with no server to start, and gets the summary and the Parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from obsharvest import Target, UserError
from obsharvest import harvest as face_harvest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from obsharvest import Target, harvest, plan

archive = {"embedded": {"seed": 5, "n_visits": 12}}
targets = [Target("seed", 62.0, -37.0), {"name": "near", "ra": 62.2, "dec": -37.1}]
planned = plan(targets, service=archive, output=sys.argv[1] + "/plan")
done = harvest(targets, service=archive, output=sys.argv[1] + "/run",
               settings={"constraints.bands": ["i"]})
rows = done.table().to_pylist()
print(json.dumps({
    "ok": done.ok,
    "parquet": done.parquet,
    "stored": done.summary.stored_images,
    "planned_bytes": planned.summary.planned_bytes,
    "planned_stored": planned.summary.stored_images,
    "rows": len(rows),
    "stored_rows": sorted({r["obs_publisher_did"] for r in rows if r["obsh_stored"]}),
    "contains": sorted({r["obs_publisher_did"] for r in rows
                        if r["obsh_verdict"] == "contains"}),
    "bands": sorted({r["lsst_band"] for r in rows}),
    "prefect_server_env": "PREFECT_API_URL" in __import__("os").environ,
}))
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_one_call_in_plain_python_harvests_with_no_server_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # never the user's own
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=360,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["rows"] > 0
    assert out["parquet"] == f"{tmp_path}/run/metadata"
    assert Path(out["parquet"]).is_dir()
    assert out["bands"] == ["i"]  # the settings reached the query
    assert out["stored"] == len(out["stored_rows"]) > 0
    assert out["stored_rows"] == out["contains"]  # what the WCS contains, nothing else
    stored = {p.name for p in (tmp_path / "run" / "fits").rglob("*.fits")}
    assert len(stored) == out["stored"]
    assert out["planned_bytes"] > 0 and out["planned_stored"] == 0
    assert not (tmp_path / "plan" / "fits").exists()  # a plan downloads nothing


def test_a_bad_value_is_one_line_naming_the_argument(tmp_path):
    with pytest.raises(UserError) as bad:
        face_harvest(
            [Target("seed", 62.0, -37.0)],
            service={"embedded": {}},
            output=str(tmp_path / "out"),
            settings={"query.maxrex": 5},
        )
    message = str(bad.value)
    assert "\n" not in message
    assert "harvest(settings['query.maxrex'])" in message and "query.maxrec" in message
    assert not (tmp_path / "out").exists()


def test_targets_that_are_not_targets_are_refused(tmp_path):
    with pytest.raises(UserError, match="int is not a target"):
        face_harvest([42], service={"embedded": {}}, output=str(tmp_path))


def test_importing_the_library_loads_neither_prefect_nor_the_flows():
    """``obsharvest.harvest`` is loaded on first use: the library's modules stay free of
    Prefect and of the flows above them, whatever a caller imports."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "obsharvest").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import obsharvest\n"
        "print(sorted(obsharvest.__all__))\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'prefect'"
        " or m.startswith(('obsharvest.flows', 'obsharvest.tasks'))])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    public, loaded = done.stdout.strip().splitlines()
    assert public == str(["Harvest", "Summary", "Target", "UserError", "harvest", "plan"])
    assert loaded == "[]"
