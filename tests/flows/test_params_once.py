"""The parameters make one trip: built and validated where they enter (the command line,
a deployment's form, ``obsharvest.harvest``), checked once per run, the targets read
once, and handed down as one record; every default is defined once, in the parameters."""

from __future__ import annotations

import inspect

import pytest

from obsharvest import targets as target_reader
from obsharvest.flows import preflight as preflight_module
from obsharvest.flows.cli import main
from obsharvest.flows.config import build_params
from obsharvest.flows.harvest import harvest, harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.flows.preflight import preflight

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def counted(monkeypatch):
    """How often the target file is read and the service and outputs are checked."""
    calls = {"read": 0, "inputs": 0, "service": 0, "storage": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(target_reader, "_read_bytes", counting("read", target_reader._read_bytes))
    for name in ("inputs", "service", "storage"):
        attr = f"check_{name}"
        monkeypatch.setattr(preflight_module, attr, counting(name, getattr(preflight_module, attr)))
    return calls


def _targets_file(tmp_path):
    path = tmp_path / "targets.csv"
    path.write_text("name,ra,dec\nseed,62.0,-37.0\nnear,62.2,-37.1\n")
    return path


def test_a_command_line_run_checks_once_and_reads_the_targets_once(
    counted, archive, tmp_path, capsys, session_api
):
    targets = _targets_file(tmp_path)
    code = main(
        [
            "run",
            "--targets",
            str(targets),
            "--set",
            f"service.tap_url={archive.tap_url}",
            "--bands",
            "i",
            "--output",
            str(tmp_path / "out"),
            "--progress-interval",
            "0",
            "--plan",  # the checks and reads are the same; nothing to download
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert counted == {"read": 1, "inputs": 1, "service": 1, "storage": 1}


def test_a_run_given_unchecked_parameters_checks_them_once(counted, archive, tmp_path):
    """A deployment run (the parameters come from the API, unchecked): the flow checks."""
    params = HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(_targets_file(tmp_path)),
            "constraints": {"bands": ["i"]},
            "output_url": str(tmp_path / "out"),
            "plan": True,  # the checks and reads are the same; nothing to download
        }
    )
    assert params.checked_targets is None
    summary = harvest_params(params)
    assert summary.ok and summary.images > 0
    assert counted == {"read": 1, "inputs": 1, "service": 1, "storage": 1}


def test_checked_parameters_carry_their_targets_and_are_not_checked_again(
    counted, archive, tmp_path
):
    params = build_params(
        None,
        {
            "service.tap_url": archive.tap_url,
            "targets": str(_targets_file(tmp_path)),
            "output_url": str(tmp_path / "out"),
        },
    )
    checked = preflight(params)
    assert [t.name for t in checked.checked_targets] == ["seed", "near"]
    assert checked.model_dump() == params.model_dump()  # the targets are not a parameter
    assert "near" not in checked.model_dump_json()  # never sent to the Prefect API
    assert preflight(checked) is checked
    assert counted == {"read": 1, "inputs": 1, "service": 1, "storage": 1}


def test_the_flow_takes_the_parameters_as_its_one_parameter():
    """The Prefect form is the parameters' model: no second, flat copy of its fields (each
    with a default of its own) in the flow's signature."""
    signature = inspect.signature(harvest.fn)
    assert list(signature.parameters) == ["params"]
    assert signature.parameters["params"].annotation in (HarvestParams, "HarvestParams")
    schema = harvest.parameters.model_dump()
    assert schema["properties"]["params"]["$ref"].endswith("/HarvestParams")
    form = schema["definitions"]["HarvestParams"]
    assert form["additionalProperties"] is False
    assert form["properties"]["ra"]["maximum"] == 360  # refused when a run is created


def test_params_prints_what_a_deployment_run_takes(capsys):
    assert main(["params", "--config", "config/local.yaml", "--ra", "62", "--dec", "-37"]) == 0
    import json

    printed = json.loads(capsys.readouterr().out)
    params = HarvestParams.model_validate(printed["params"])
    built = build_params("config/local.yaml", {"ra": "62", "dec": "-37"})
    assert params.model_dump() == built.model_dump()
