"""Typed settings from YAML, environment and flags, mapped onto the stages' config dataclasses.

One mechanism for every stage: a stage's config is a dataclass (see `receiver.component`); a YAML
section `<name>: {key: value}` is mapped onto it field by field. Unknown keys and values of the
wrong type are errors that name the key and the file line. Environment variables override the file:
`LLA_<SECTION>__<KEY>[__<SUBKEY>]=value`, the value parsed as a YAML scalar
(e.g. `LLA_OTLP__MAX_RECV_MSG_SIZE_MIB=8`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml

from receiver.errors import ConfigError

T = TypeVar("T")
ENV_PREFIX = "LLA_"

Lines = dict[tuple[str, ...], int]


class EnvStr(str):
    """A raw string from the environment: parsed according to the type of the field it lands in."""


def _node_to_python(node: yaml.Node, path: tuple[str, ...], lines: Lines, source: str) -> Any:
    """Convert a composed YAML node to Python values, recording the 1-based line of every key path."""
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{source}:{line}: mapping keys must be plain names")
            if key in out:
                raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: {'.'.join(path + (key,))}: "
                                  "duplicate key")
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _node_to_python(value_node, path + (key,), lines, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(v, path + (str(i),), lines, source) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:null" else None


def load_yaml(path: str | Path) -> tuple[dict[str, Any], Lines]:
    """Read a YAML config file; returns its mapping and the line of each key path."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{source}: cannot read config file: {e.strerror}") from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{where}: invalid YAML: {getattr(e, 'problem', e)}") from e
    if node is None:
        return {}, {}
    lines: Lines = {}
    data = _node_to_python(node, (), lines, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections")
    return data, lines


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`LLA_SECTION__KEY=value` -> {"section": {"key": EnvStr(value)}}; keys lower-cased, values
    parsed later by the type of the field they land in (so `LLA_LLM__MODE=off` stays a string)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        value = EnvStr(raw)
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"environment {name}: conflicts with another override")
        cur[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class _Builder:
    def __init__(self, source: str, lines: Lines) -> None:
        self.source = source
        self.lines = lines

    def where(self, path: tuple[str, ...]) -> str:
        for n in range(len(path), 0, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return f"{self.source}:{line}: "
        return f"{self.source}: " if self.source else ""

    def fail(self, path: tuple[str, ...], message: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}{'.'.join(path)}: {message}")

    def build(self, cls: type[T], data: Any, path: tuple[str, ...]) -> T:
        if not isinstance(data, Mapping):
            raise self.fail(path, f"expected a mapping of settings, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise self.fail(path + (key,), f"unknown setting (known: {', '.join(sorted(known))})")
            kwargs[key] = self.coerce(hints[key], value, path + (key,))
        try:
            obj = cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise self.fail(path, str(e)) from e
        return obj

    def coerce(self, tp: Any, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, EnvStr) and tp is not str:
            try:
                value = yaml.safe_load(value) if value != "" else None
            except yaml.YAMLError as e:
                raise self.fail(path, f"cannot parse environment value {str(value)!r}: {e}") from e
        elif isinstance(value, EnvStr):
            return str(value)
        origin = get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if value is None:
                return None
            errors = []
            for a in args:
                try:
                    return self.coerce(a, value, path)
                except ConfigError as e:
                    errors.append(str(e))
            if errors:
                raise ConfigError(errors[0])
            raise self.fail(path, "invalid value")
        if tp is Any:
            return value
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.build(tp, value, path)
        if origin in (list, tuple) or tp in (list, tuple):
            if not isinstance(value, list):
                raise self.fail(path, f"expected a list, got {type(value).__name__}")
            (item_tp,) = get_args(tp)[:1] or (Any,)
            items = [self.coerce(item_tp, v, path + (str(i),)) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict or tp is dict:
            if not isinstance(value, Mapping):
                raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
            args = get_args(tp)
            vt = args[1] if len(args) == 2 else Any
            return {str(k): self.coerce(vt, v, path + (str(k),)) for k, v in value.items()}
        if origin is typing.Literal:
            if value not in get_args(tp):
                raise self.fail(path, f"must be one of {', '.join(map(repr, get_args(tp)))}, got {value!r}")
            return value
        if tp is bool:
            if not isinstance(value, bool):
                raise self.fail(path, f"expected true or false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(path, f"expected an integer, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(path, f"expected a number, got {value!r}")
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)) or value is None:
                raise self.fail(path, f"expected a string, got {type(value).__name__}")
            return str(value)
        return value


def build_config(cls: type[T], data: Mapping[str, Any], source: str = "", lines: Lines | None = None) -> T:
    """Map `data` onto dataclass `cls`, then run `validate()`; errors name the key and file line."""
    builder = _Builder(source, lines or {})
    obj = builder.build(cls, data, ())
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            msg = str(e)
            key = msg.split(":", 1)[0].strip()
            path = tuple(key.split(".")) if key and " " not in key else ()
            raise ConfigError(f"{builder.where(path)}{msg}") from e
    return obj


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain data (for `--print-config` and logs; secrets are the caller's job)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
