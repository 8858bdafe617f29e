"""`lrs-gateway auth add`: make a Ralph-format credential, print it or write it atomically."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import bcrypt

from gateway.agents import AgentError, validate_agent
from gateway.auth.passwords import check_new_password

__all__ = ["add_arguments", "build_entry", "write_entry"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags, named as Ralph's `ralph auth` names them."""
    parser.add_argument("-u", "--username", required=True)
    parser.add_argument("-p", "--password", help="prompted for when left out")
    parser.add_argument("-s", "--scope", action="append", default=[], dest="scopes",
                        help="repeat for several scopes")
    agent = parser.add_mutually_exclusive_group(required=True)
    agent.add_argument("-M", "--agent-mbox")
    agent.add_argument("-S", "--agent-mbox-sha1sum")
    agent.add_argument("-O", "--agent-openid")
    agent.add_argument("-N", "--agent-account-name")
    parser.add_argument("-H", "--agent-account-homepage", "--agent-account-homePage")
    parser.add_argument("-w", "--write", action="store_true",
                        help="add or replace the user in the credentials file")
    parser.add_argument("--file", help="credentials file (default: the config's)")
    parser.add_argument("--cost", type=int, default=12, help="bcrypt cost factor (default 12)")


def _agent(args: argparse.Namespace) -> dict[str, Any]:
    if args.agent_account_name is not None:
        if not args.agent_account_homepage:
            raise ValueError("--agent-account-name needs --agent-account-homepage")
        agent: dict[str, Any] = {"account": {"name": args.agent_account_name,
                                             "homePage": args.agent_account_homepage}}
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


def build_entry(args: argparse.Namespace, password: str) -> dict[str, Any]:
    """One credentials-file entry, with a fresh bcrypt hash."""
    if ":" in args.username or not args.username:
        raise ValueError("the username must be non-empty and must not contain ':'")
    check_new_password(password)  # the rules every way of setting a password shares
    if not 4 <= args.cost <= 31:
        raise ValueError("--cost must be between 4 and 31")
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(args.cost)).decode()
    return {"username": args.username, "hash": hashed, "scopes": list(args.scopes),
            "agent": _agent(args)}


def write_entry(path: Path, entry: dict[str, Any]) -> bool:
    """Add or replace `entry` by username; write a temp file then rename. True if replaced."""
    entries: list[Any] = []
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if text.strip():
            if not text.lstrip().startswith("["):
                raise ValueError(f"{path} is not a JSON credentials file; auth add writes "
                                 "Ralph's JSON format")
            try:
                entries = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc.msg}); not touched") from None
            if not isinstance(entries, list):
                raise ValueError(f"{path}: not a JSON list; not touched")
    replaced = any(isinstance(e, dict) and e.get("username") == entry["username"] for e in entries)
    entries = [e for e in entries
               if not (isinstance(e, dict) and e.get("username") == entry["username"])]
    entries.append(entry)
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
    return replaced
