"""`lrs-gateway auth add | list | remove`: Ralph-format credentials, written atomically."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import bcrypt

from gateway.auth.credentials import parse_credentials
from gateway.auth.passwords import check_new_password
from gateway.xapi.agents import AgentError, validate_agent
from gateway.xapi.scopes import KNOWN_SCOPES, normalize_scopes

__all__ = [
    "FileProblem",
    "add_arguments",
    "build_entry",
    "check_request",
    "list_entries",
    "read_entries",
    "remove_entry",
    "valid_scopes",
    "write_entries",
    "write_entry",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags, named as Ralph's `ralph auth` names them."""
    parser.add_argument("-u", "--username", required=True)
    parser.add_argument("-p", "--password", help="prompted for when left out")
    parser.add_argument(
        "-s",
        "--scope",
        action="append",
        default=[],
        dest="scopes",
        help="repeat for several scopes",
    )
    agent = parser.add_mutually_exclusive_group(required=True)
    agent.add_argument("-M", "--agent-mbox")
    agent.add_argument("-S", "--agent-mbox-sha1sum")
    agent.add_argument("-O", "--agent-openid")
    agent.add_argument("-N", "--agent-account-name")
    parser.add_argument("-H", "--agent-account-homepage", "--agent-account-homePage")
    parser.add_argument(
        "-w", "--write", action="store_true", help="add or replace the user in the credentials file"
    )
    parser.add_argument(
        "--file",
        help="credentials file to write (implies -w; default: the "
        "config's auth.basic.credentials_file); no config is read with it",
    )
    parser.add_argument("--cost", type=int, default=12, help="bcrypt cost factor (default 12)")


def _agent(args: argparse.Namespace) -> dict[str, Any]:
    if args.agent_account_name is not None:
        if not args.agent_account_homepage:
            raise ValueError("--agent-account-name needs --agent-account-homepage")
        agent: dict[str, Any] = {
            "account": {"name": args.agent_account_name, "homePage": args.agent_account_homepage}
        }
    elif args.agent_account_homepage:
        raise ValueError("--agent-account-homepage goes with --agent-account-name")
    elif args.agent_mbox is not None:
        agent = {"mbox": args.agent_mbox}
    elif args.agent_mbox_sha1sum is not None:
        agent = {"mbox_sha1sum": args.agent_mbox_sha1sum}
    else:
        agent = {"openid": args.agent_openid}
    try:
        validate_agent(agent)
    except AgentError as exc:
        raise ValueError(str(exc)) from None
    return agent


def valid_scopes() -> list[str]:
    """Every scope a credential may be given, aliases and composites included."""
    from gateway.xapi.scopes import _ALIASES, _EXPANSIONS

    return sorted({*KNOWN_SCOPES, *_EXPANSIONS, *_ALIASES})


def check_request(args: argparse.Namespace, scope_prefix: str = "") -> dict[str, Any]:
    """Everything of an `auth add` but the password, checked before anyone types one.

    Returns the agent.
    """
    if ":" in args.username or not args.username:
        raise ValueError("the username must be non-empty and must not contain ':'")
    if not 4 <= args.cost <= 31:
        raise ValueError("--cost must be between 4 and 31")
    _, unknown = normalize_scopes(args.scopes, scope_prefix)
    if unknown:
        raise ValueError(
            f"unknown scope{'s' if len(unknown) > 1 else ''}: "
            f"{', '.join(unknown)} (valid: {', '.join(valid_scopes())})"
        )
    return _agent(args)


def build_entry(args: argparse.Namespace, password: str, scope_prefix: str = "") -> dict[str, Any]:
    """One credentials-file entry, with a fresh bcrypt hash."""
    agent = check_request(args, scope_prefix)
    check_new_password(password)  # the rules every way of setting a password shares
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(args.cost)).decode()
    return {"username": args.username, "hash": hashed, "scopes": list(args.scopes), "agent": agent}


class FileProblem(ValueError):
    """The credentials file cannot be kept as it is (not a usage error)."""


def read_entries(path: Path) -> list[Any]:
    """The entries of a JSON credentials file ([] when there is none); ValueError otherwise."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return []
    if not text.lstrip().startswith("["):
        raise FileProblem(
            f"{path} is not a JSON credentials file; auth add and remove write Ralph's JSON format"
        )
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileProblem(f"{path}: not valid JSON ({exc.msg}); not touched") from None
    if not isinstance(entries, list):
        raise FileProblem(f"{path}: not a JSON list; not touched")
    return entries


def list_entries(path: Path, account_homepage: str) -> list[dict[str, Any]]:
    """Username, scopes and agent of every user in either format; never a hash."""
    parsed = parse_credentials(path.read_text(encoding="utf-8"), account_homepage=account_homepage)
    return [
        {"username": user.username, "scopes": sorted(user.scopes), "agent": user.agent}
        for user in parsed.users.values()
    ]


def remove_entry(path: Path, username: str) -> bool:
    """Remove `username` from a JSON credentials file; False if it was not there."""
    entries = read_entries(path)
    kept = [e for e in entries if not (isinstance(e, dict) and e.get("username") == username)]
    if len(kept) == len(entries):
        return False
    write_entries(path, kept)
    return True


def write_entry(path: Path, entry: dict[str, Any]) -> bool:
    """Add or replace `entry` by username; write a temp file then rename. True if replaced."""
    entries = read_entries(path)
    replaced = any(isinstance(e, dict) and e.get("username") == entry["username"] for e in entries)
    entries = [
        e for e in entries if not (isinstance(e, dict) and e.get("username") == entry["username"])
    ]
    entries.append(entry)
    write_entries(path, entries)
    return replaced


def write_entries(path: Path, entries: list[Any]) -> None:
    """Replace the file with `entries`: a temp file then a rename, keeping its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entries, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
