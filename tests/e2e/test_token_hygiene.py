"""Tokens as people save them (issue 22, part 2), through every way a token enters a run.

``export ACCESS_TOKEN=$(<token-file)`` on a file saved on Windows, a Secret block pasted
with its newline: the token arrives with ``\\r``, ``\\n`` or spaces around it. Sent as is,
requests refused the header and its exception (quoting ``Bearer <the token>\\r``) reached
stderr in a 62-line traceback. Here each entry (the CLI as a user runs it, a deployment
style flow run, a Prefect Secret block) gets such tokens against the embedded archive,
which wants ``Authorization: Bearer <token>`` on TAP, Datalink and SODA:

- surrounding whitespace is stripped: the harvest succeeds, every service request carried
  the token;
- a character inside the token that no bearer token has (a control character, inner
  whitespace) is refused in one line naming the variable or block, never the value;
- the token (or a piece of a refused one) is nowhere: stdout, stderr, log records, every
  file of the output (Parquet, JSON, HTML, FITS: the bytes), the Prefect API's stored
  logs, artifacts and state messages.

And below the entries, the redaction that catches what validation cannot foresee: a
library exception quoting the header, a log record, an uncaught traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from obsharvest.errors import TokenError, UserError
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.net.http import ServiceSession, clean_token
from obsharvest.net.redact import install_redaction, register_secret
from tests.conftest import TARGET_DEC, TARGET_RA

TOKEN = "rsp-" + secrets.token_urlsafe(40)  # 58 characters, random: found only if leaked
CUT = 24  # where a refused token gets its bad character: both pieces are long and random
PIECES = (TOKEN, TOKEN[:CUT], TOKEN[CUT:])
VAR = "HYGIENE_TOKEN"  # a variable no other test sets: the message must name it

STRIPPED = {  # what a file or a paste leaves around the token: works
    "lf": TOKEN + "\n",
    "crlf": TOKEN + "\r\n",
    "cr": TOKEN + "\r",
    "spaces": " \t" + TOKEN + "  \n",
}
REFUSED = {  # inside the token: refused, kind named, value never echoed
    "bell": (TOKEN[:CUT] + "\x07" + TOKEN[CUT:], "a control character (U+0007)"),
    "inner-crlf": (TOKEN[:CUT] + "\r\n" + TOKEN[CUT:] + "\n", "a control character (U+000D)"),
    "inner-space": (TOKEN[:CUT] + " " + TOKEN[CUT:], "whitespace (U+0020)"),
    "escape": (TOKEN[:CUT] + "\x1b[0m" + TOKEN[CUT:], "a control character (U+001B)"),
}


def leaked(text: str | bytes) -> list[str]:
    """The pieces of the token found in ``text`` (empty: nothing leaked)."""
    if isinstance(text, bytes):
        return [p for p in PIECES if p.encode() in text]
    return [p for p in PIECES if p in text]


def output_leaks(output: Path) -> dict[str, list[str]]:
    """Every file of an output (Parquet, JSON, HTML, FITS, state), grepped as bytes."""
    found = {}
    for path in output.rglob("*"):
        if path.is_file() and (hits := leaked(path.read_bytes())):
            found[str(path)] = hits
    return found


@pytest.fixture(scope="module")
def secured():
    """An archive that answers TAP, Datalink and SODA only to ``Bearer <TOKEN>``."""
    from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

    with EmbeddedArchive(ArchiveSettings(n_visits=12, token=TOKEN)) as running:
        yield running


def _token_was_sent_everywhere(archive) -> None:
    """Every service request carried the token (and the archive accepted it: the
    harvest succeeded); the signed file host never saw it."""
    stats = archive.stats()
    service = [k for k in stats if k.startswith("tap") or k == "datalink"]
    assert "datalink" in service and any(k.startswith("tap_") for k in service), stats
    for endpoint in service:
        assert stats[endpoint]["authorization"] == stats[endpoint]["requests"] > 0, endpoint
    assert stats["files"]["requests"] > 0 and stats["files"]["authorization"] == 0


def _prefect_texts() -> list[str]:
    """What the Prefect API stored: every log, artifact and run state message (of the
    whole test session: a token from any run would be a leak)."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()

    async def read() -> list[str]:
        texts: list[str] = []
        async with get_client() as client:
            for reader in (client.read_logs, client.read_artifacts):
                offset = 0
                while page := await reader(limit=200, offset=offset):
                    texts += [json.dumps(item.model_dump(mode="json")) for item in page]
                    offset += len(page)
            for runs in (client.read_flow_runs, client.read_task_runs):
                offset = 0
                while found := await runs(limit=200, offset=offset):
                    texts += [f"{r.name} {r.state and r.state.message}" for r in found]
                    offset += len(found)
        return texts

    return asyncio.run(read())


# -- the rule, where a token enters ------------------------------------------------------


@pytest.mark.parametrize("kind", STRIPPED)
def test_surrounding_whitespace_is_stripped(kind):
    assert clean_token(STRIPPED[kind], f"${VAR}") == TOKEN


def test_nothing_but_whitespace_is_no_token():
    assert clean_token(" \r\n", f"${VAR}") is None and clean_token(None, "x") is None


@pytest.mark.parametrize("kind", REFUSED)
def test_a_character_inside_is_refused_by_kind_never_by_value(kind):
    value, words = REFUSED[kind]
    with pytest.raises(TokenError) as refused:
        clean_token(value, f"${VAR} (service.token_env)")
    message = str(refused.value)
    assert message.startswith(f"${VAR} (service.token_env): the token has {words} inside")
    assert len(message.splitlines()) == 1 and not leaked(message)
    assert isinstance(refused.value, UserError)  # the CLI's exit 2


def test_a_library_session_holds_the_same_rule(secured):
    """``ServiceSession`` built by a Python caller strips and refuses as the flows do."""
    with ServiceSession(STRIPPED["crlf"], [secured.tap_url]) as session:
        assert session.get(f"{secured.tap_url}/capabilities").status_code == 200
    with pytest.raises(TokenError, match="the session's token: the token has"):
        ServiceSession(REFUSED["bell"][0], [secured.tap_url])


# -- the CLI, as a user runs it ------------------------------------------------------------


def _cli(archive, output: Path, token: str, *extra: str) -> subprocess.CompletedProcess:
    """``obsharvest run`` in its own process, its flow run recorded by the session's
    Prefect API (so its stored logs can be read back here)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), VAR: token}
    cmd = [
        sys.executable,
        "-m",
        "obsharvest.flows.cli",
        "run",
        "--set",
        f"service.tap_url={archive.tap_url}",
        "--set",
        f"service.token_env={VAR}",
        "--ra",
        str(TARGET_RA),
        "--dec",
        str(TARGET_DEC),
        "--bands",
        "i",
        "--output",
        str(output),
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["crlf", "cr", "spaces"])
def test_cli_harvests_with_a_token_saved_with_whitespace(kind, secured, prefect_harness, tmp_path):
    secured.reset_stats()
    done = _cli(secured, tmp_path / "out", STRIPPED[kind])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stored" in done.stdout and "Traceback" not in done.stderr
    _token_was_sent_everywhere(secured)
    assert not leaked(done.stdout + done.stderr)
    assert not output_leaks(tmp_path / "out")
    assert any(p.suffix == ".parquet" for p in (tmp_path / "out").rglob("*"))


@pytest.mark.parametrize("kind", ["bell", "inner-crlf", "inner-space"])
def test_cli_refuses_a_token_with_a_character_inside_in_one_line(
    kind, secured, prefect_harness, tmp_path
):
    value, words = REFUSED[kind]
    secured.reset_stats()
    done = _cli(secured, tmp_path / "out", value)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"obsharvest run: ${VAR} (service.token_env): the token has {words} inside it; "
        "an OAuth 2 token is one word of visible ASCII: save it again without it"
    ]
    assert not leaked(done.stdout + done.stderr)
    assert not secured.stats()  # refused before any request
    assert not (tmp_path / "out").exists() or not output_leaks(tmp_path / "out")


# -- a deployment-style run: the flow with parameters, in this process -----------------------


def _params(archive, output: Path, **service) -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url, **service},
            "ra": TARGET_RA,
            "dec": TARGET_DEC,
            "target_name": "seed",
            "constraints": {"bands": ["i"], "calib_levels": [2]},
            "output_url": str(output),
        }
    )


def _quiet_records(caplog) -> list[str]:
    """Every record of the run as the console and Prefect's API would get it: message
    and traceback text (the archive's own server-side access log left out)."""
    return [
        f"{r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if not r.name.startswith("simarchive")
    ]


def test_flow_run_strips_a_token_from_the_environment(
    secured, prefect_harness, tmp_path, monkeypatch, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(VAR, STRIPPED["lf"])
    secured.reset_stats()
    summary = harvest_params(_params(secured, tmp_path, token_env=VAR))
    assert summary.ok and summary.stored_images > 0, summary.failures
    _token_was_sent_everywhere(secured)
    assert not leaked("\n".join(_quiet_records(caplog)) + caplog.text)
    assert not leaked("".join(capfd.readouterr()))
    assert not output_leaks(tmp_path)


@pytest.mark.parametrize("entry", ["env", "block"], ids=["environment", "secret-block"])
def test_flow_run_refuses_a_token_with_a_character_inside(
    entry, secured, prefect_harness, tmp_path, monkeypatch, caplog, capfd
):
    from prefect.blocks.system import Secret

    caplog.set_level(logging.DEBUG)
    value, words = REFUSED["escape" if entry == "env" else "bell"]
    if entry == "env":
        monkeypatch.setenv(VAR, value)
        service = {"token_env": VAR}
        source = f"${VAR} (service.token_env)"
    else:
        Secret(value=value).save("hygiene-refused", overwrite=True)
        service = {"token_secret_block": "hygiene-refused", "token_env": "HYGIENE_UNSET"}
        source = "the Prefect Secret block 'hygiene-refused' (service.token_secret_block)"
    secured.reset_stats()
    with pytest.raises(TokenError) as refused:
        harvest_params(_params(secured, tmp_path, **service))
    assert str(refused.value).startswith(f"{source}: the token has {words} inside it")
    assert len(str(refused.value).splitlines()) == 1
    assert not secured.stats()
    assert not leaked(str(refused.value) + "\n".join(_quiet_records(caplog)) + caplog.text)
    assert not leaked("".join(capfd.readouterr()))
    assert not output_leaks(tmp_path)


@pytest.mark.parametrize("kind", ["crlf", "spaces"])
def test_a_secret_block_saved_with_whitespace_works(
    kind, secured, prefect_harness, tmp_path, caplog, capfd
):
    from prefect.blocks.system import Secret

    caplog.set_level(logging.DEBUG)
    name = f"hygiene-{kind}"
    Secret(value=STRIPPED[kind]).save(name, overwrite=True)
    secured.reset_stats()
    summary = harvest_params(
        _params(secured, tmp_path, token_secret_block=name, token_env="HYGIENE_UNSET")
    )
    assert summary.ok and summary.stored_images > 0, summary.failures
    _token_was_sent_everywhere(secured)
    assert not leaked("\n".join(_quiet_records(caplog)) + caplog.text)
    assert not leaked("".join(capfd.readouterr()))
    assert not output_leaks(tmp_path)


def test_cli_reads_a_secret_block_saved_with_a_newline(secured, prefect_harness, tmp_path):
    """The CLI and the test share the Prefect API: the block saved here is the CLI's."""
    from prefect.blocks.system import Secret

    Secret(value=STRIPPED["lf"]).save("hygiene-cli", overwrite=True)
    secured.reset_stats()
    done = _cli(secured, tmp_path / "out", "", "--set", "service.token_secret_block=hygiene-cli")
    assert done.returncode == 0, done.stderr[-3000:]
    _token_was_sent_everywhere(secured)
    assert not leaked(done.stdout + done.stderr) and not output_leaks(tmp_path / "out")


def test_the_prefect_api_stored_no_token(prefect_harness):
    """Last of the module's Prefect tests (pytest keeps file order): everything the runs
    above (CLI processes and in-process flow runs) left in the Prefect database."""
    texts = _prefect_texts()
    assert any("harvest" in t for t in texts)  # the runs were recorded
    assert not [t[:200] for t in texts if leaked(t)]


# -- the net below: what no validation foresees is still masked ------------------------------


def test_a_library_exception_quoting_the_header_is_masked(secured):
    """requests refuses a header value with a line break and quotes it whole (the issue's
    traceback): the session masks a known secret in any exception it raises, in place,
    so the type (what retries classify) stays."""
    session = ServiceSession(TOKEN, [secured.tap_url])
    with session, pytest.raises(requests.exceptions.InvalidHeader) as raised:
        session.get(secured.tap_url, headers={"X-Echo": f"Bearer {TOKEN}\r"})
    assert not leaked(str(raised.value)) and "***" in str(raised.value)


def test_log_records_are_masked_before_any_handler(caplog):
    """A record quoting the token (or a traceback that does) is masked when it is made,
    whatever logger it comes from and whatever handler formats it."""
    install_redaction(excepthooks=False)
    register_secret(TOKEN)
    caplog.set_level(logging.INFO)
    log = logging.getLogger("some.library.nobody.filters")
    try:
        raise ValueError(f"bad header 'Bearer {TOKEN}\\r'")
    except ValueError:
        log.exception("request failed: %s", {"Authorization": f"Bearer {TOKEN}"})
    record = caplog.records[-1]
    assert not leaked(record.getMessage()) and not leaked(record.exc_text or "")
    assert "ValueError" in (record.exc_text or "") and not leaked(caplog.text)


def test_an_uncaught_traceback_is_printed_masked(tmp_path):
    """The CLI's excepthook: a bug's traceback quoting the token shows it as ***."""
    code = (
        "import os\n"
        "from obsharvest.net.redact import install_redaction, register_secret\n"
        "install_redaction()\n"
        f"secret = os.environ[{VAR!r}]\n"
        "register_secret(secret)\n"
        "raise RuntimeError('bad header: ' + repr(secret))\n"
    )
    env = {**os.environ, VAR: f"Bearer {TOKEN}"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "RuntimeError: bad header: '***'" in done.stderr
    assert not leaked(done.stderr)
