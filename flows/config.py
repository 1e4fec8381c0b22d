"""YAML profiles plus command-line overrides → validated ``HarvestParams``.

A bad profile or override is a user error: it becomes one ``ConfigError`` line naming the
file and the key (``config/local.yaml: query.maxrec: ...``), never a traceback.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .params import HarvestParams


class ConfigError(ValueError):
    pass


def describe(errors: ValidationError, source: str) -> str:
    parts = []
    for err in errors.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return f"{source}: " + "; ".join(parts)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """``set_dotted(d, "query.maxrec", 10)``: create nested mappings as needed."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def build_params(
    config: str | Path | None, overrides: Mapping[str, Any] | None = None
) -> HarvestParams:
    data = load_yaml(config) if config else {}
    data = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    if data.get("targets") is not None and (
        data.get("ra") is not None or data.get("dec") is not None
    ):
        # a command-line position replaces the profile's target file, and vice versa
        if overrides and ("ra" in overrides or "dec" in overrides):
            data.pop("targets")
        else:
            data.pop("ra", None)
            data.pop("dec", None)
    try:
        return HarvestParams.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, str(config or "parameters"))) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value read as YAML (numbers, lists, true/false)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key.path=value, e.g. query.maxrec=5000")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value
