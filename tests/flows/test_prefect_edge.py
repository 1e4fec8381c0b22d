"""Prefect stays at the edge (issue 23, part 2): the library imports none of it and its
ground floor imports nothing above it; blocks are read in ``flows/blocks.py`` and handed
down as values; the flows use Prefect's public API only, including to tell a UI
cancellation from a plain SIGTERM."""

from __future__ import annotations

import ast
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "obsharvest"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative ones left out)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_records_import_nothing_of_obsharvest():
    imported = _imports(LIBRARY / "models.py")
    assert not {n for n in imported if n.split(".")[0] == "obsharvest"}


def test_the_library_imports_no_prefect():
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in LIBRARY.rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in ("prefect", "prefect_aws", "prefect_dask")
    }
    assert not found


def test_no_private_prefect_names():
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for folder in ("obsharvest", "flows", "tasks")
        for path in (ROOT / folder).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0].startswith("prefect")
        and any(part.startswith("_") for part in name.split(".")[1:])
    }
    assert not found


def test_the_access_vocabulary_is_still_importable_from_access_kinds():
    from obsharvest import models
    from obsharvest.access import kinds

    for name in ("Kind", "LinkRequest", "kind_of", "link_request", "split_access_url"):
        assert getattr(kinds, name) is getattr(models, name)


# -- blocks, read in flows/ ------------------------------------------------------------


def test_a_token_from_the_environment_is_cleaned_and_named(monkeypatch):
    from obsharvest.flows.blocks import service_token

    monkeypatch.setenv("EDGE_TOKEN", "  tok-abcdef\r\n")
    assert service_token("EDGE_TOKEN") == ("tok-abcdef", "$EDGE_TOKEN (service.token_env)")
    monkeypatch.delenv("EDGE_TOKEN")
    assert service_token("EDGE_TOKEN") == (None, "$EDGE_TOKEN (service.token_env)")


def test_a_secret_block_token_is_cleaned_and_named(monkeypatch):
    from obsharvest.errors import TokenError
    from obsharvest.flows import blocks

    monkeypatch.setenv("EDGE_TOKEN", "from-the-environment")
    monkeypatch.setattr(blocks, "read_secret", lambda name: "tok-abcdef\n")
    source = "the Prefect Secret block 'edge' (service.token_secret_block)"
    assert blocks.service_token("EDGE_TOKEN", "edge") == ("tok-abcdef", source)
    # a named block that holds nothing is no token: the environment is not read instead
    monkeypatch.setattr(blocks, "read_secret", lambda name: None)
    assert blocks.service_token("EDGE_TOKEN", "edge") == (None, source)
    monkeypatch.setattr(blocks, "read_secret", lambda name: "tok\x1babcdef")
    with pytest.raises(TokenError, match="Secret block 'edge'.*control character") as err:
        blocks.service_token("EDGE_TOKEN", "edge")
    assert "abcdef" not in str(err.value)


# -- a SIGTERM's meaning, from the flow run's state -----------------------------------------


def test_no_flow_run_means_no_intent(monkeypatch):
    from obsharvest.flows.stops import termination_intent

    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    assert termination_intent() is None


def test_an_api_that_never_answers_means_no_intent_within_the_bound(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from obsharvest.flows.stops import INTENT_TIMEOUT, termination_intent

    hole = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(hole.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", str(uuid.uuid4()))
    url = f"http://127.0.0.1:{hole.getsockname()[1]}/api"
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            start = time.monotonic()
            assert termination_intent() is None
            took = time.monotonic() - start
    finally:
        hole.close()
        for conn in held:
            conn.close()
    assert took < INTENT_TIMEOUT + 0.5


@pytest.mark.usefixtures("prefect_harness")
def test_a_cancelling_run_means_cancel(monkeypatch):
    from prefect import flow, get_client
    from prefect.states import Cancelling, Running

    from obsharvest.flows.stops import termination_intent

    @flow(name="edge-intent")
    def edge_intent() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(edge_intent)
        client.set_flow_run_state(run.id, Running(), force=True)
        monkeypatch.setenv("PREFECT__FLOW_RUN_ID", str(run.id))
        assert termination_intent() is None  # running: a plain SIGTERM
        client.set_flow_run_state(run.id, Cancelling(), force=True)
        assert termination_intent() == "cancel"
