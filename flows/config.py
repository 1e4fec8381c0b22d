"""YAML profiles plus overrides → validated ``HarvestParams``, each value blamed on its source.

A bad profile or override is a user error: one ``ConfigError`` line naming where the bad
value came from -- the profile file and key (``config/local.yaml: query.maxrec: ...``), a
``--set`` argument, a command-line flag or a Prefect parameter -- never a traceback, and
for an unknown key the closest valid one (``did you mean query.maxrec?``).

YAML is read as a person means it: ``2023-01-01`` stays the text of a date (the
parameters read ISO times; PyYAML would make a ``date``, or raise for ``2023-02-30``), and
``-37:00:00`` stays sexagesimal text (YAML 1.1 would read base 60: -133200).
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from obsharvest.errors import ConfigError

from .params import HarvestParams


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's timestamps, base-60 numbers and word booleans."""

    def construct_yaml_int(self, node):
        value = self.construct_scalar(node)
        return value if ":" in str(value) else super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        value = self.construct_scalar(node)
        return value if ":" in str(value) else super().construct_yaml_float(node)

    def construct_yaml_bool(self, node):
        """YAML 1.2's booleans: ``true``/``false`` only; ``off``, ``no``, ``on``, ``yes`` stay
        words (``verification.mode=off`` is a mode, not False)."""
        value = self.construct_scalar(node)
        lowered = str(value).lower()
        return lowered == "true" if lowered in ("true", "false") else value


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
_Loader.add_constructor("tag:yaml.org,2002:bool", _Loader.construct_yaml_bool)


def yaml_value(text: str) -> Any:
    """One YAML value as a profile would read it (dates and ``-37:00:00`` stay text)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# -- where a value came from ------------------------------------------------------------


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``Service``, ``Query | None``, ...), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _sub_model(arg)
        if found is not None:
            return found
    return None


def _fields_at(parents: list[str]) -> dict[str, Any]:
    """The fields of the model at ``parents`` (``[]``: the top level), or {}."""
    model: type[BaseModel] | None = HarvestParams
    for name in parents:
        field = model.model_fields.get(name) if model else None
        model = _sub_model(field.annotation) if field else None
    return dict(model.model_fields) if model else {}


def all_keys(model: type[BaseModel] = HarvestParams, prefix: str = "") -> list[str]:
    """Every dotted key the parameters take (``query.maxrec``, ``service.tap_url``, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = _sub_model(field.annotation)
        if sub is not None:
            keys += all_keys(sub, f"{prefix}{name}.")
    return keys


def suggest(dotted: str) -> str | None:
    """The valid key closest to an unknown ``dotted`` one: a sibling first, then any key
    (``maxrec`` → ``query.maxrec``), or None."""
    parents, _, leaf = dotted.rpartition(".")
    siblings = list(_fields_at(parents.split(".") if parents else []))
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if match:
        return f"{parents}.{match[0]}" if parents else match[0]
    everything = all_keys()
    match = difflib.get_close_matches(dotted, everything, n=1, cutoff=0.6)
    if match:
        return match[0]
    by_leaf: dict[str, list[str]] = {}
    for key in everything:
        by_leaf.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    if match and len(by_leaf[match[0]]) == 1:
        return by_leaf[match[0]][0]
    return None


def _mentions(message: str, key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return bool(re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message)) or bool(
        re.search(rf"(?<![\w.]){re.escape(leaf)}(?![\w])", message)
    )


def blame(
    dotted: str,
    message: str,
    config: str | Path | None,
    sources: Mapping[str, str],
) -> str:
    """Where the value behind an error at ``dotted`` ("" for the whole) came from: the
    override (``--set ...``, a flag, a Prefect parameter) that set it, else the profile.
    A check of a whole section (loc ``constraints``) blames the overrides under it that
    its message names."""
    exact = [k for k in sources if dotted and (dotted == k or dotted.startswith(k + "."))]
    if exact:
        return sources[max(exact, key=len)]
    under = [k for k in sources if not dotted or k.startswith(dotted + ".")]
    named = [k for k in under if _mentions(message, k)]
    chosen = named or ([] if not dotted else under)
    if chosen:
        return ", ".join(dict.fromkeys(sources[k] for k in chosen))
    return str(config) if config else "parameters"


def _label_has_key(label: str, dotted: str) -> bool:
    return bool(dotted) and dotted in label


def describe(
    errors: ValidationError,
    source: str | Path | None,
    sources: Mapping[str, str] | None = None,
) -> str:
    """One line: each error with where its value came from and the key."""
    sources = sources or {}
    parts = []
    for err in errors.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            close = suggest(dotted)
            message = f"unknown key; did you mean {close}?" if close else "unknown key"
            if not close:
                parents = dotted.rpartition(".")[0]
                valid = list(_fields_at(parents.split(".") if parents else []))
                if valid:
                    message += f" (valid here: {', '.join(valid)})"
        origin = blame(dotted, message, source, sources)
        from_file = origin == (str(source) if source else "parameters")
        if from_file or not _label_has_key(origin, dotted):
            parts.append(f"{origin}: {dotted}: {message}" if dotted else f"{origin}: {message}")
        else:
            parts.append(f"{origin}: {message}")
    return "; ".join(parts)


# -- profiles and overrides --------------------------------------------------------------


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML profile") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml_value(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    except ValueError as exc:  # an explicitly tagged value PyYAML cannot build
        raise ConfigError(f"{path}: {exc}") from None
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
    config: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
) -> HarvestParams:
    """The profile with ``overrides`` (dotted keys) applied, validated.

    ``sources`` names where each override came from (``{"dec": "--dec -97"}``), so an
    error blames the right place; keys without one are called ``parameter <key>``.
    The result remembers the sources (:func:`sources_of`) for checks made later.
    """
    data = load_yaml(config) if config else {}
    data = copy.deepcopy(data)
    overrides = dict(overrides or {})
    labels = {k: (sources or {}).get(k) or f"parameter {k}" for k in overrides}
    for key, value in overrides.items():
        set_dotted(data, key, value)
    # an override's services replace the profile's service, and the other way round
    if "services" in overrides:
        data.pop("service", None)
    elif any(k == "service" or k.startswith("service.") for k in overrides):
        data.pop("services", None)
    if data.get("targets") is not None and (
        data.get("ra") is not None or data.get("dec") is not None
    ):
        # a command-line position replaces the profile's target file, and vice versa
        if "ra" in overrides or "dec" in overrides:
            data.pop("targets")
        else:
            data.pop("ra", None)
            data.pop("dec", None)
    try:
        params = HarvestParams.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, config, labels)) from None
    return with_sources(params, config, labels)


def as_params(value: HarvestParams | Mapping[str, Any]) -> HarvestParams:
    """The flow's parameter as ``HarvestParams``: as given, or validated from the mapping a
    deployment run (or a Python caller) gives, each error blamed on its key in one line."""
    if isinstance(value, HarvestParams):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"parameter params: expected the harvest's parameters, got {value!r}")
    try:
        return HarvestParams.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(describe(exc, "parameter params")) from None


def with_sources(
    params: HarvestParams, config: str | Path | None, labels: Mapping[str, str]
) -> HarvestParams:
    """``params`` remembering the profile and each override's source (private attributes:
    never part of the parameters, kept by ``model_copy`` and pickling)."""
    params._profile = str(config) if config else None
    params._sources = dict(labels)
    return params


def source_of(params: HarvestParams, dotted: str) -> str:
    """Where the value at ``dotted`` came from, as an error message names it:
    ``--dec -97``, ``--set output_url=x``, ``parameter dec``, ``config/local.yaml: dec``,
    or just ``dotted`` when nothing is known."""
    labels = params._sources
    exact = [k for k in labels if dotted == k or dotted.startswith(k + ".")]
    if exact:
        return labels[max(exact, key=len)]
    return f"{params._profile}: {dotted}" if params._profile else dotted


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value read as YAML (numbers, lists, true/false); dates
    and sexagesimal values stay text, as in a profile."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. query.maxrec=5000")
    try:
        value = yaml_value(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):
        value = raw
    return key.strip(), value
