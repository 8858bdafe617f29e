"""`lrs-gateway check-config [--probe]` and `lrs-gateway config show`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.credentials import CredentialsError, parse_credentials
from gateway.config.loader import setting_paths
from gateway.config.settings import Config, ConfigReport, inspect_config, resolve_config_path
from gateway.secret import Secret

__all__ = ["check_auth", "check_config", "config_report", "mask_url", "show_config"]

MASK = "**********"


def config_report(args: argparse.Namespace) -> tuple[Path, ConfigReport]:
    """The configuration the command line names (`--config`, else the environment's)."""
    path = resolve_config_path(args.config, os.environ)
    return path, inspect_config(path, os.environ)


def check_auth(config: Config) -> tuple[list[str], list[str]]:
    """(errors, warnings) about what the enabled auth backends read from disk."""
    errors: list[str] = []
    warnings: list[str] = []
    if "basic" in config.auth.backends:
        errors_, warnings_ = _check_credentials(config)
        errors += errors_
        warnings += warnings_
    tokens = config.auth.tokens
    # Only a key file can fail here; a missing or doubled setting is an error already.
    if "token" in config.auth.backends and tokens.private_key_file and tokens.secret is None:
        from gateway.auth.tokens import TokenSigner

        try:
            TokenSigner(config.auth.tokens, Path(config.base_dir))
        except (OSError, ValueError) as exc:
            errors.append(f"auth.tokens.private_key_file: cannot be used ({exc})")
    return errors, warnings


def _json_problem(text: str) -> str | None:
    """What is wrong with a file that is meant as JSON (`[`, `{`), or None if nothing is."""
    if text.startswith("\ufeff"):
        return "starts with a byte order mark (BOM); save it as UTF-8 without one"
    if not text.lstrip().startswith("{"):
        return None  # `[`: the credentials parser says what is wrong; else Rustici lines
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    return "the JSON must be a list of credential objects ([{...}, ...]), not one object"


def _check_credentials(config: Config) -> tuple[list[str], list[str]]:
    basic = config.auth.basic
    path = config.resolve_path(basic.credentials_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: cannot read the credentials file ({type(exc).__name__})"], []
    problem = _json_problem(text)
    if problem is not None:
        return [f"{path}: {problem}"], []
    try:
        parsed = parse_credentials(
            text,
            account_homepage=basic.account_homepage,
            scope_prefix=config.auth.scope_prefix,
            tenants=frozenset(t.name for t in config.tenants),
        )
    except CredentialsError as exc:
        return [f"{path}: {exc}"], []
    return [], [f"{path}: {warning}" for warning in parsed.warnings]


def check_config(args: argparse.Namespace) -> int:
    """Print every problem of the configuration at once; 0 when there is none, else 1."""
    _, report = config_report(args)
    errors, warnings = list(report.errors), list(report.warnings)
    if report.config is not None:
        auth_errors, auth_warnings = check_auth(report.config)
        errors += auth_errors
        warnings += auth_warnings
    for line in errors:
        print(f"error: {line}")
    for line in warnings:
        print(f"warning: {line}")
    for line in report.notes:
        print(f"info: {line}")
    if args.probe and report.config is not None and not errors:
        from gateway.cli.probe import probe_all

        results = asyncio.run(probe_all(report.config, args.timeout))
        for name, ok, detail in results:
            print(f"probe: {name}: {'ok' if ok else 'FAILED'}: {detail}")
        errors += [name for name, ok, _ in results if not ok]
    elif args.probe:
        print("probe: skipped until the errors above are fixed")
    if errors:
        print(f"{len(errors)} problem{'s' if len(errors) > 1 else ''} found")
        return 1
    print("ok")
    return 0


# -- config show ------------------------------------------------------------------------------


def mask_url(value: str) -> str:
    """A URL with its password (user:PASSWORD@) masked."""
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{MASK}@{host}").geturl()


def _shown(value: Any, *, open_mapping: bool = False) -> str:
    """A value as YAML would write it, secrets masked."""
    if isinstance(value, Secret):
        return json.dumps(MASK)
    if isinstance(value, Mapping) and open_mapping:  # a filter: nothing secret in it
        return json.dumps(dict(value))
    if isinstance(value, Mapping):  # forwarding headers: their values may be API keys
        return json.dumps({key: MASK for key in value})
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, str):
        value = mask_url(value) if "://" in value else value
    return json.dumps(value)


def _origin(origins: Mapping[str, str], key: str, target: str | None) -> str:
    found = origins.get(key)
    if found is None and target is not None:
        whole = origins.get(target, "")  # a target from a JSON variable: all of it from there
        found = whole if whole.startswith("environment ") else None
    if found is None:
        return "default"
    return found.replace("environment ", "env ", 1)


def _rows(config: Config, origins: Mapping[str, str]) -> list[tuple[str, str, str]]:
    rows = []
    for path in setting_paths(Config):
        key = ".".join(path)
        value: Any = config
        for part in path:
            value = getattr(value, part)
        if key != "forwardings":
            rows.append((key, _shown(value), _origin(origins, key, None)))
            continue
        if not value:
            rows.append((key, "[]", _origin(origins, key, None)))
        for index, target in enumerate(value):
            prefix = f"forwardings[{index}]"
            rows += _target_rows(target, prefix, origins)
    return rows


def _target_rows(
    target: Any, prefix: str, origins: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """A forwarding target's rows; a section of it (pseudonymise) a row per key."""
    rows = []
    for fld in dataclasses.fields(target):
        value = getattr(target, fld.name)
        if dataclasses.is_dataclass(value):
            section = f"{prefix}.{fld.name}"
            for inner in dataclasses.fields(value):
                key = f"{section}.{inner.name}"
                shown = _shown(getattr(value, inner.name))
                rows.append((key, shown, _origin(origins, key, prefix)))
            continue
        key = f"{prefix}.{fld.name}"
        shown = _shown(value, open_mapping=fld.name == "filter")
        rows.append((key, shown, _origin(origins, key, prefix)))
    return rows


def show_config(args: argparse.Namespace) -> int:
    """Print the effective configuration, one key a line, with where each value came from."""
    path, report = config_report(args)
    if report.config is None:
        for line in report.errors:
            print(f"error: {line}")
        return 1
    rows = _rows(report.config, report.origins)
    if args.json:
        print(
            json.dumps(
                {key: {"value": json.loads(value), "from": origin} for key, value, origin in rows},
                indent=2,
            )
        )
    else:
        print(f"# the configuration in effect ({path} and the environment); secrets masked")
        width = min(60, max(len(key) + len(value) for key, value, _ in rows) + 2)
        for key, value, origin in rows:
            print(f"{key}: {value}".ljust(width) + f"  # {origin}")
    for line in report.errors:
        print(f"error: {line}")
    return 1 if report.errors else 0
