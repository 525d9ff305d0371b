"""Dataclass configs read from YAML, with `key.sub=value` overrides from the command line.

Every run saves the config it actually used (`config.yaml` in the run directory), so a number can always be
traced back to the exact settings behind it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from btcxr.errors import BtcxrError, cut, did_you_mean

T = TypeVar("T")
log = logging.getLogger(__name__)

# A config expands to a few hundred nodes; a YAML alias bomb ("billion laughs") to billions, which the
# error messages and saved configs would then spell out.
MAX_NODES = 100_000


def _expanded_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes `node` stands for once every alias is expanded (counted once per node: the
    composed graph shares aliased nodes, so this stays linear in the text)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a node that contains itself (a recursive alias) counts once
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        memo[id(node)] = 1 + sum(_expanded_nodes(child, memo) for child in children)
    return memo[id(node)]


def parse_yaml(text: str, what: str) -> Any:
    """YAML text -> plain data, safely: no tag constructs an object (safe_load), an alias bomb is refused
    before it expands, and every error names `what` (a file, an override) with long values cut."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and (size := _expanded_nodes(node, {})) > MAX_NODES:
            raise BtcxrError(f"{what}: its YAML aliases expand to {size:,} values (at most {MAX_NODES:,}): refused")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BtcxrError(f"{what} is not valid YAML: {cut(str(exc), 300)}") from exc
    except RecursionError as exc:
        raise BtcxrError(f"{what}: YAML nested too deeply") from exc


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build `cls` from the defaults, then the YAML file, then each `a.b=value` override (YAML-parsed)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise BtcxrError(f"config file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BtcxrError(f"config file {path} cannot be read as UTF-8 text ({exc})") from exc
        data = parse_yaml(text, f"config file {path}") or {}
        if not isinstance(data, dict):
            raise BtcxrError(f"config file {path} must hold a mapping at the top level")
        source = str(path)
    for old, new in _moved_keys(cls, data):
        log.warning("%s: config key %s moved to %s; it was read as %s (update the file)", source, old, new, new)
    data = migrate_config_dict(cls, data)
    moved = getattr(cls, "MOVED", {})
    _refuse_old_and_new_overrides(moved, overrides)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BtcxrError(f"override {cut(item, 100)!r} must look like key.sub=value")
        value = _override_value(item, raw)
        if key in moved:  # an old key on the command line sets the new one, over the file's value
            new, convert = moved[key]
            log.warning("override %s: config key %s moved to %s; it was read as %s", item, key, new, new)
            key, value = new, (convert(value) if convert else value)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BtcxrError(f"override {cut(item, 100)!r}: {part} is not a section")
        node[parts[-1]] = value
    return _build(cls, migrate_config_dict(cls, data), source, prefix="")


def _override_value(item: str, raw: str) -> Any:
    """The value of a key=value override, YAML-parsed ("" is null)."""
    return parse_yaml(raw, f"override {cut(item, 100)!r}") if raw != "" else None


def _refuse_old_and_new_overrides(moved: dict, overrides: list[str] | tuple[str, ...]) -> None:
    """An old key and its new key both on the command line, with different values: which one was meant?"""
    given = {}
    for item in overrides:
        key, _, raw = item.partition("=")
        given[key] = raw
    for old, (new, convert) in moved.items():
        if old in given and new in given:
            value = _override_value(old, given[old])
            if (convert(value) if convert else value) != _override_value(new, given[new]):
                raise BtcxrError(f"config key {old} moved to {new}, and both are set (to different values): "
                                 f"keep {new} only")


def migrate_config_dict(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """A config mapping of an older version in today's vocabulary: every key in `cls.MOVED` (old dotted key
    -> (new dotted key, value converter or None)) is moved to its new place."""
    data = copy.deepcopy(data)
    for old, (new, convert) in getattr(cls, "MOVED", {}).items():
        *parents, leaf = old.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        if parents and not node:  # a section emptied by the move goes too
            _pop_path(data, parents)
        *new_parents, new_leaf = new.split(".")
        target = data
        for part in new_parents:
            target = target.setdefault(part, {})
        if new_leaf in target and target[new_leaf] != (convert(value) if convert else value):
            raise BtcxrError(f"config key {old} moved to {new}, and both are set (to different values): "
                             f"keep {new} only")
        target[new_leaf] = convert(value) if convert else value
    return data


def _moved_keys(cls: type, data: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for old, (new, _) in getattr(cls, "MOVED", {}).items():
        node: Any = data
        for part in old.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is not KeyError:
            found.append((old, new))
    return found


def _pop_path(data: dict[str, Any], parts: list[str]) -> None:
    node = data
    for part in parts[:-1]:
        node = node[part]
    node.pop(parts[-1], None)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    from btcxr.engine.io import write_yaml

    write_yaml(path, config_to_dict(cfg))


def _build(cls: type[T], data: dict[str, Any], source: str, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hint = did_you_mean(f"{prefix}{unknown[0]}", [f"{prefix}{f}" for f in fields])
        raise BtcxrError(f"{source}: unknown config key {prefix}{cut(unknown[0])}{hint} (known: "
                         f"{', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise BtcxrError(f"{source}: invalid config {prefix.rstrip('.') or cls.__name__}: {cut(str(exc))}") from exc


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise BtcxrError(f"{source}: {key} must be a section (mapping), got {cut(repr(value))}")
        return _build(hint, value, source, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, source, key) if len(args) == 1 else value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(inner, v, source, key) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise BtcxrError(f"{source}: {key} must be {hint.__name__}, got {cut(repr(value))}")
    return value
