"""Turn a YAML mapping plus environment overrides into frozen dataclasses, naming bad keys."""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.errors import ConfigError
from gateway.secret import Secret

__all__ = [
    "build_dataclass",
    "build_list",
    "env_value",
    "load_dataclass",
    "parse_yaml",
    "read_yaml_file",
    "read_yaml_text",
    "setting_paths",
    "suggest_variable",
    "yaml_lines",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _EnvValue:
    """A raw string from the environment; typed only once its target type is known."""

    name: str
    raw: str


def env_value(name: str, raw: str) -> Any:
    """A value from variable `name`, typed (and named in errors) once it is placed."""
    return _EnvValue(name, raw)


def read_yaml_text(path: Path) -> str:
    """The file's text; ConfigError naming the file when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def parse_yaml(text: str, path: Path) -> dict[str, Any]:
    """A YAML mapping; an empty file is an empty mapping; a syntax error says why and where."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        context = getattr(exc, "context", None)
        # PyYAML's own words ("mapping values are not allowed here"); never the text itself,
        # which may hold a secret.
        reason = "; ".join(str(part) for part in (context, problem) if part)
        raise ConfigError(
            f"{path}: not valid YAML{where}" + (f": {reason}" if reason else "")
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def read_yaml_file(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    return parse_yaml(read_yaml_text(path), path)


def yaml_lines(text: str) -> dict[str, int]:
    """The line of each key in YAML `text`, by dotted path (`storage.url`, `forwardings[0].url`).

    For `config show`; a document that does not compose gives no lines.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    seen: set[int] = set()  # aliases: a node is walked once (no cycles, no blow-up)

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    child = f"{path}.{key.value}" if path else str(key.value)
                    lines[child] = key.start_mark.line + 1
                    walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = f"{path}[{index}]"
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    if root is not None:
        walk(root, "")
    return lines


def setting_paths(cls: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every setting of dataclass `cls` as a path of field names (sections walked into)."""
    paths: list[tuple[str, ...]] = []
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if fld.metadata.get("internal"):
            continue
        hint = hints[fld.name]
        if dataclasses.is_dataclass(hint):
            paths += setting_paths(hint, (*prefix, fld.name))
        else:
            paths.append((*prefix, fld.name))
    return paths


def _squashed(name: str) -> str:
    return re.sub(r"_+", "_", name.upper())


def suggest_variable(name: str, cls: Any, prefix: str) -> str | None:
    """The setting's variable `name` was probably meant as (underscores miscounted), if any."""
    for path in setting_paths(cls):
        candidate = prefix + "__".join(part.upper() for part in path)
        if candidate != name and _squashed(candidate) == _squashed(name):
            return candidate
    return None


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


def build_dataclass(
    cls: type[T],
    raw: Mapping[str, Any],
    *,
    source: str,
    environ: Mapping[str, str],
    env_prefix: str,
    problems: list[str],
    origins: dict[str, str],
) -> T | None:
    """Build `cls` from `raw` after environment overrides, collecting every problem.

    A value with a problem is left at its default, so what else is wrong can still be
    checked; `origins` gets the variable each overridden key came from (dotted paths).
    """
    data = dict(raw)
    for name in _apply_environment(cls, data, environ, env_prefix):
        meant = suggest_variable(name, cls, env_prefix)
        hint = f" (did you mean {meant}?)" if meant else ""
        problems.append(f"environment {name}: unknown setting{hint}")
    return typing.cast("T | None", _build(cls, data, "", "", source, problems, origins))


def load_dataclass(
    cls: type[T],
    raw: Mapping[str, Any],
    *,
    source: str,
    environ: Mapping[str, str],
    env_prefix: str,
) -> T:
    """Build `cls` from `raw` after environment overrides; collect every problem, then raise."""
    problems: list[str] = []
    result = build_dataclass(
        cls,
        raw,
        source=source,
        environ=environ,
        env_prefix=env_prefix,
        problems=problems,
        origins={},
    )
    if problems or result is None:
        raise ConfigError("\n".join(problems))
    return result


def _where(value: Any, key: str, source: str) -> str:
    return f"environment {value.name}" if isinstance(value, _EnvValue) else f"{source}: {key}"


def _build(
    cls: Any,
    raw: Any,
    prefix: str,
    path: str,
    source: str,
    problems: list[str],
    origins: dict[str, str],
) -> Any:
    """`cls` from `raw`, or None when a required key is missing; bad values left at default.

    `prefix` names keys in messages (`forwardings[0] (t1): `), `path` in `origins`.
    """
    if not isinstance(raw, Mapping):
        problems.append(f"{source}: {prefix.rstrip('.: ') or 'top level'}: expected a mapping")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"{source}: {prefix}{key}: unknown key")
    kwargs: dict[str, Any] = {}
    complete = True
    for name, fld in fields.items():
        if name not in raw:
            if _required(fld):
                problems.append(f"{source}: {prefix}{name}: missing (required)")
                complete = False
            continue
        value = raw[name]
        key = f"{prefix}{name}"
        dotted = f"{path}{name}"
        if isinstance(value, _EnvValue):
            origins[dotted] = f"environment {value.name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if value is None:
                continue  # an empty section in YAML means "all defaults"
            section = _build(hint, value, f"{key}.", f"{dotted}.", source, problems, origins)
            if section is not None:
                kwargs[name] = section
            continue
        item = _dataclass_items(hint)
        if item is not None:
            kwargs[name] = build_list(item, value, key, source, problems, origins, dotted)
            continue
        try:
            kwargs[name] = _convert(hint, value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{_where(value, key, source)}: {exc}")
            complete = complete and not _required(fld)
    return cls(**kwargs) if complete else None


def _required(fld: dataclasses.Field[Any]) -> bool:
    return fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING


def _dataclass_items(hint: Any) -> Any:
    """The element class of `tuple[SomeDataclass, ...]`, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def build_list(
    cls: Any,
    items: Any,
    key: str,
    source: str,
    problems: list[str],
    origins: dict[str, str] | None = None,
    path: str | None = None,
) -> Any:
    """A tuple of `cls` from a list of mappings, each named in errors by index and name.

    Items that cannot be built are left out (their problems are in `problems`).
    """
    origins = {} if origins is None else origins
    path = key if path is None else path
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
        value = _build(cls, item, f"{label}: ", f"{path}[{index}].", source, problems, origins)
        if value is not None:
            built.append(value)
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
        if len(args) == 2 and args[1] is Any:  # free-form (a filter): checked by its owner
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError(f"expected a mapping, got {_describe(value)}")
            return types.MappingProxyType(dict(value))
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
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
