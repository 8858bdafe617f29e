"""The gateway under test: its configuration files, what it supports, a bearer token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from workload import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    AGENT,
    NO_RATE_LIMITS,
    PASSWORD,
    REPO,
    TARGETS,
    USERNAME,
)

_HASHES: dict[str, str] = {}


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash (cost 10) of `password`, made once per password."""
    import bcrypt  # the gateway's own dependency, in its venv

    if password not in _HASHES:
        _HASHES[password] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
    return _HASHES[password]


def _merge(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Merge `more` into `base`, nested dicts key by key."""
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def write_gateway_config(
    tmp: Path,
    name: str,
    port: int,
    stub_url: str,
    src: Path = REPO,
    *,
    overrides: dict[str, Any] | None = None,
    users: list[dict[str, Any]] | None = None,
) -> Path:
    """A gateway's config.yaml and auth.json (bench user, admin, `users`; storage -> stub)."""
    directory = tmp / name
    directory.mkdir()
    (directory / "auth.json").write_text(
        json.dumps(
            [
                {
                    "username": USERNAME,
                    "hash": bcrypt_hash(PASSWORD),
                    "scopes": ["all"],
                    "agent": AGENT,
                },
                {
                    "username": ADMIN_USERNAME,
                    "hash": bcrypt_hash(ADMIN_PASSWORD),
                    "scopes": ["admin"],
                    "agent": {"objectType": "Agent", "mbox": "mailto:bench-admin@example.com"},
                },
                *(users or []),
            ]
        )
    )
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"backends": ["basic"], "basic": {"credentials_file": "auth.json"}},
        "storage": {"url": stub_url, "timeout": 10},
        "data_dir": str(directory / "data"),
    }
    # The rate limits stay on, set so high they never trip (when this gateway has them).
    if "class RateLimitConfig" in _config_source(src):
        config["rate_limit"] = dict(NO_RATE_LIMITS)
    _merge(config, overrides or {})
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def forwarding_overrides(target_ports: list[int]) -> dict[str, Any]:
    """Config overrides that forward to the three stub targets."""
    return {
        "forwardings": [
            {
                "name": name,
                "is_active": True,
                "url": f"http://127.0.0.1:{port}/xAPI/statements",
                "basic_username": None,
                "basic_password": None,
                "max_retries": 5,
                "timeout": 5,
            }
            for name, port in zip(TARGETS, target_ports, strict=True)
        ]
    }


# (j): each target filtered, as an institution would (the bench statement is course
# analytical-engine's, completed): one takes it by verb and activity prefix, one by
# registration and platform, one never (another course's).
FILTERS = (
    {
        "verb": ["http://adlnet.gov/expapi/verbs/completed"],
        "activity_prefix": ["https://courses.example.com/xapi/activities/analytical-engine/"],
    },
    {"registration": ["0f5a9a9e-1b7e-4a52-9d7e-6c3a1f2b8d41"], "platform": ["Example LMS 4.2"]},
    {"activity_prefix": ["https://courses.example.com/xapi/activities/difference-engine/"]},
)


def filtered_overrides(target_ports: list[int]) -> dict[str, Any]:
    """Forwarding to the three stub targets, each with a filter (FILTERS)."""
    overrides = forwarding_overrides(target_ports)
    for target, spec in zip(overrides["forwardings"], FILTERS, strict=True):
        target["filter"] = spec
    return overrides


def postgres_overrides(target_ports: list[int], dsn: str) -> dict[str, Any]:
    """Forwarding to the three stub targets, the outbox (and credentials) in PostgreSQL."""
    return {**forwarding_overrides(target_ports), "store": {"url": dsn}}


def _first_source(src: Path, *candidates: str) -> str:
    """The text of the first of `candidates` the gateway under test has (its layout moved)."""
    for candidate in candidates:
        if (src / candidate).is_file():
            return (src / candidate).read_text()
    raise FileNotFoundError(f"none of {candidates} in {src}")


def _config_source(src: Path) -> str:
    return _first_source(src, "gateway/config/settings.py", "gateway/config.py")


def supports(src: Path) -> dict[str, bool]:
    """What the gateway under test can be configured with."""
    config = _config_source(src)
    return {
        "token": "class TokensConfig" in config,
        "forwarding": "class ForwardingTarget" in config,
        "lockout": "class LockoutConfig" in config,
        "shared_limits": "shared_url" in config,
        "filters": "filter: Mapping[str, Any]" in config,
        "postgres_store": '"postgresql://"' in config
        and (src / "gateway/forwarding/postgres_outbox.py").is_file(),
    }


def has_workers_option(src: Path) -> bool:
    """Whether the gateway under test has `serve --workers`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return "--workers" in done.stdout


def event_loop_of(src: Path) -> str:
    """The loop the gateway's `serve` runs on: uvloop when installed (cli.main._tune_runtime)."""
    cli = _first_source(src, "gateway/cli/main.py", "gateway/cli.py")
    if "uvloop" not in cli:
        return "asyncio"
    done = subprocess.run([sys.executable, "-c", "import uvloop"], capture_output=True, check=False)
    return "uvloop" if done.returncode == 0 else "asyncio"


def issue_token(src: Path, env: dict[str, str], config: Path) -> str:
    """A bearer gateway token for the bench user, from `lrs-gateway token issue`."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "--log-level",
            "WARNING",
            "token",
            "issue",
            "--config",
            str(config),
            "--username",
            USERNAME,
            "--scope",
            "all",
            "--expires-in",
            "3600",
        ],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"bench: token issue failed:\n{done.stdout}\n{done.stderr}")
    token: str = json.loads(done.stdout)["token"]
    return token
