"""Turn a YAML mapping plus environment overrides into frozen dataclasses, naming bad keys."""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.errors import ConfigError
from gateway.secret import Secret

__all__ = ["load_dataclass", "read_yaml_file"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _EnvValue:
    """A raw string from the environment; typed only once its target type is known."""

    name: str
    raw: str


def read_yaml_file(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _apply_environment(
    cls: type[Any], raw: dict[str, Any], environ: Mapping[str, str], prefix: str
) -> list[str]:
    """Place every `PREFIX_SECTION__KEY` value into `raw`; return unknown variable names."""
    unknown: list[str] = []
    for name in sorted(environ):
        if not name.startswith(prefix):
            continue
        path = [part.lower() for part in name[len(prefix) :].split("__")]
        target_cls: Any = cls
        node = raw
        ok = True
        for depth, part in enumerate(path):
            fields = {
                f.name: f for f in dataclasses.fields(target_cls) if not f.metadata.get("internal")
            }
            if part not in fields:
                ok = False
                break
            hint = typing.get_type_hints(target_cls)[part]
            last = depth == len(path) - 1
            if last:
                node[part] = _EnvValue(name, environ[name])
            elif dataclasses.is_dataclass(hint):
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node, target_cls = child, hint
            else:
                ok = False
                break
        if not ok:
            unknown.append(name)
    return unknown


def load_dataclass(
    cls: type[T],
    raw: Mapping[str, Any],
    *,
    source: str,
    environ: Mapping[str, str],
    env_prefix: str,
) -> T:
    """Build `cls` from `raw` after environment overrides; collect every problem, then raise."""
    data = dict(raw)
    problems = [f"environment {name}: unknown setting" for name in
                _apply_environment(cls, data, environ, env_prefix)]
    result = _build(cls, data, "", source, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return typing.cast(T, result)


def _where(value: Any, key: str, source: str) -> str:
    return f"environment {value.name}" if isinstance(value, _EnvValue) else f"{source}: {key}"


def _build(cls: Any, raw: Any, prefix: str, source: str, problems: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"{source}: {prefix.rstrip('.: ') or 'top level'}: expected a mapping")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"{source}: {prefix}{key}: unknown key")
    kwargs: dict[str, Any] = {}
    for name, fld in fields.items():
        if name not in raw:
            required = (fld.default is dataclasses.MISSING
                        and fld.default_factory is dataclasses.MISSING)
            if required:
                problems.append(f"{source}: {prefix}{name}: missing (required)")
            continue
        value = raw[name]
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if value is None:
                continue  # an empty section in YAML means "all defaults"
            kwargs[name] = _build(hint, value, f"{key}.", source, problems)
            continue
        item = _dataclass_items(hint)
        if item is not None:
            kwargs[name] = build_list(item, value, key, source, problems)
            continue
        try:
            kwargs[name] = _convert(hint, value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{_where(value, key, source)}: {exc}")
    if problems:
        return None
    return cls(**kwargs)


def _dataclass_items(hint: Any) -> Any:
    """The element class of `tuple[SomeDataclass, ...]`, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def build_list(cls: Any, items: Any, key: str, source: str, problems: list[str]) -> Any:
    """A tuple of `cls` from a list of mappings, each named in errors by index and name."""
    if isinstance(items, _EnvValue):
        problems.append(f"environment {items.name}: a list of objects cannot be set this way")
        return ()
    if not isinstance(items, list):
        problems.append(f"{source}: {key}: expected a list")
        return ()
    built = []
    for index, item in enumerate(items):
        label = f"{key}[{index}]"
        # Named by `name` only: a URL may carry credentials.
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            label += f" ({item['name']})"
        built.append(_build(cls, item, f"{label}: ", source, problems))
    return tuple(built)


def _describe(value: Any) -> str:
    if isinstance(value, _EnvValue):
        value = value.raw
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(hint: Any, value: Any) -> Any:
    """Check and convert one value to `hint`; raise ValueError with a readable message."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        raw = value.raw if isinstance(value, _EnvValue) else value
        env_null = isinstance(value, _EnvValue) and value.raw.strip().lower() in ("", "null", "~")
        if raw is None or env_null:
            return None
        return _convert(inner[0], value)
    if hint is str or hint is Secret:
        text = value.raw if isinstance(value, _EnvValue) else value
        if not isinstance(text, str):
            if hint is Secret:  # never echo what may be a password YAML read as a number
                raise ValueError("expected a string (quote it in YAML); the value is not shown")
            raise ValueError(f"expected a string, got {_describe(value)}")
        return Secret(text) if hint is Secret else text
    if isinstance(value, _EnvValue):
        # Secrets never reach this point: a failed parse must not echo them.
        try:
            value = yaml.safe_load(value.raw)
        except yaml.YAMLError:
            raise ValueError(f"cannot parse {_describe(value)}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise ValueError("expected a number, got an integer too large for one") from None
        if not math.isfinite(number):  # nan passes every `> 0` check, as inf passes `< max`
            raise ValueError(f"expected a finite number, got {_describe(value)}")
        return number
    if origin in (dict, Mapping, collections.abc.Mapping):
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ValueError("expected a mapping of strings to strings")
        return types.MappingProxyType(dict(value))
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_describe(value)}")
        if args == ():
            if value:
                raise ValueError("expected an empty list")
            return ()
        return tuple(_convert(args[0], item) for item in value)
    raise TypeError(f"unsupported setting type {hint!r}")  # a programming error, not user input
