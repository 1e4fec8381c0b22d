"""The ``obsharvest archive`` command, run as a user would, in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import requests


def test_archive_command_prints_tap_url_and_serves():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "obsharvest.flows.cli",
            "archive",
            "--port",
            "0",
            "--visits",
            "12",
            "--seed",
            "7",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("TAP service: http://127.0.0.1:"), line + proc.stderr.read()
        tap_url = line.split(": ", 1)[1].strip()
        assert requests.get(tap_url + "/availability", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0


def test_archive_command_reports_busy_port_in_one_line():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "obsharvest.flows.cli",
                "archive",
                "--port",
                str(port),
                "--visits",
                "12",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(port) in done.stderr


def test_set_reads_yaml_1_2_booleans_so_a_mode_named_off_stays_a_word():
    """``--set verification.mode=off`` is the mode "off" (YAML 1.1 would read False and
    refuse it); ``true``/``false`` are still booleans."""
    from obsharvest.flows.config import build_params, parse_override

    key, value = parse_override("verification.mode=off")
    assert value == "off"
    params = build_params("config/local.yaml", {key: value, "targets": "config/demo-targets.csv"})
    assert params.verification.mode == "off"
    assert parse_override("products.quicklook=false")[1] is False
    assert parse_override("x=yes")[1] == "yes"
