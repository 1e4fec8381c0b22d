"""The library's rooms import one another one way: no room reaches, through its imports,
back to itself (access → storage, never storage → access), and the foundation (errors,
models) imports no other room."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "obsharvest"
FOUNDATION = ("errors", "models")


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in LIBRARY.rglob("*.py"):
        module = ".".join(path.relative_to(LIBRARY.parent).with_suffix("").parts)
        here = _room(module.removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("obsharvest.") and _room(name) != here:
                    edges[here].add(_room(name))
    return edges


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(edges[start])
    while todo:
        room = todo.pop()
        if room not in seen:
            seen.add(room)
            todo += edges[room]
    return seen


def test_no_room_imports_its_way_back_to_itself():
    edges = _imports()
    edges.pop("__init__", None)  # the package's face: its names load on first use
    cycles = {room for room in list(edges) if room in _reachable(edges, room)}
    assert cycles == set(), {room: sorted(edges[room]) for room in cycles}


def test_the_foundation_imports_no_other_room():
    edges = _imports()
    assert {room: edges[room] for room in FOUNDATION if edges[room]} == {}
