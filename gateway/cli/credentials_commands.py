"""`lrs-gateway credentials ...`: the credential database, from the command line.

Works on the database file directly, while the gateway runs: every running process sees a
change within `store.poll_interval`. A secret is printed once, when it is made (create
without --secret-stdin, rotate). Every change is audited as `cli:<the OS user>`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.auth.credentials import CredentialsError, parse_credentials
from gateway.auth.passwords import UnusablePassword, hash_new_password
from gateway.config.settings import Config
from gateway.errors import GatewayError
from gateway.secret import Secret
from gateway.store.credentials import (
    CredentialConflict,
    CredentialDatabase,
    NewCredential,
    StoredCredential,
    check_changes,
    check_secret,
    new_secret,
    new_username,
)
from gateway.store.databases import credential_database

__all__ = ["add_parsers"]

T = TypeVar("T")
Load = Callable[[argparse.Namespace], Config]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli:unknown"


def _run(
    load: Load, args: argparse.Namespace, work: Callable[[CredentialDatabase, Config], Awaitable[T]]
) -> T:
    config = load(args)

    async def run() -> T:
        database = credential_database(config, config.resolve_path(config.data_dir))
        await database.open()
        try:
            return await work(database, config)
        finally:
            await database.close()

    return asyncio.run(run())


async def _find(database: CredentialDatabase, key: str) -> StoredCredential:
    found = await database.get(key) or await database.by_username(key)
    if found is None:
        raise LookupError(f"no credential with id or username {key!r}")
    return found


def _file_users(config: Config) -> set[str]:
    """Usernames of the credentials file (they win a clash, so the database may not take them)."""
    path = config.resolve_path(config.auth.basic.credentials_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return set()
    try:
        return set(parse_credentials(text, account_homepage="https://x.invalid").users)
    except CredentialsError:
        return set()


def _show(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=2))
        return
    for key, value in record.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        print(f"{key + ':':<14}{shown}")


def _create(load: Load) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        fields: dict[str, Any] = {"name": args.name, "scopes": args.scopes}
        if args.username is not None:
            fields["username"] = args.username
        if args.agent is not None:
            fields["agent"] = json.loads(args.agent)
        if args.expires_at is not None:
            fields["expires_at"] = args.expires_at
        if args.info is not None:
            fields["info"] = args.info
        if args.disabled:
            fields["enabled"] = False
        if args.tenant is not None:
            fields["tenant"] = args.tenant
        checked = check_changes(fields, sorted(fields))
        generated = not args.secret_stdin
        secret = new_secret() if generated else check_secret(sys.stdin.readline().rstrip("\n"))

        async def work(database: CredentialDatabase, config: Config) -> dict[str, Any]:
            username = checked.get("username") or new_username()
            if username in _file_users(config):
                raise CredentialConflict(f"the username {username!r} is in the credentials file")
            tenants = {t.name for t in config.tenants}
            if checked.get("tenant") is not None and checked["tenant"] not in tenants:
                raise LookupError(
                    f"no tenant {checked['tenant']!r} is configured (tenants: "
                    f"{', '.join(sorted(tenants)) or 'none'})"
                )
            hashed = Secret(await hash_new_password(secret))
            new = NewCredential.from_checked(checked, username=username, secret_hash=hashed)
            stored = await database.create(new, actor=_actor())
            return stored.public()

        record = _run(load, args, work)
        if generated:
            record["secret"] = secret  # shown this once
        _show(record, args.json)
        if generated and not args.json:
            print("(the secret is shown this once: store it now)", file=sys.stderr)
        return 0

    return run


def _list(load: Load) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def work(database: CredentialDatabase, _: Config) -> list[dict[str, Any]]:
            found, _total = await database.page(offset=0, limit=1_000_000, search=args.search)
            return [c.public() for c in found]

        records = _run(load, args, work)
        if args.json:
            print(json.dumps(records, indent=2))
            return 0
        print(f"{'id':<36}  {'username':<24}  {'enabled':<7}  {'name':<24}  scopes")
        for r in records:
            print(
                f"{r['id']:<36}  {r['username']:<24}  {str(r['enabled']).lower():<7}  "
                f"{r['name'][:24]:<24}  {' '.join(r['scopes'])}"
            )
        return 0

    return run


def _show_one(load: Load) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def work(database: CredentialDatabase, _: Config) -> dict[str, Any]:
            return (await _find(database, args.credential)).public()

        _show(_run(load, args, work), args.json)
        return 0

    return run


def _set_enabled(load: Load, enabled: bool) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def work(database: CredentialDatabase, _: Config) -> dict[str, Any]:
            found = await _find(database, args.credential)
            updated = await database.update(found.id, {"enabled": enabled}, actor=_actor())
            if updated is None:
                raise LookupError(f"no credential with id or username {args.credential!r}")
            return updated.public()

        _show(_run(load, args, work), args.json)
        return 0

    return run


def _rotate(load: Load) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        secret = new_secret()

        async def work(database: CredentialDatabase, _: Config) -> dict[str, Any]:
            found = await _find(database, args.credential)
            hashed = Secret(await hash_new_password(secret))
            rotated = await database.rotate(found.id, hashed, actor=_actor())
            if rotated is None:
                raise LookupError(f"no credential with id or username {args.credential!r}")
            return rotated.public()

        record = _run(load, args, work)
        record["secret"] = secret
        _show(record, args.json)
        return 0

    return run


def _delete(load: Load) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def work(database: CredentialDatabase, _: Config) -> str:
            found = await _find(database, args.credential)
            await database.delete(found.id, actor=_actor())
            return found.username

        print(f"deleted {_run(load, args, work)}")
        return 0

    return run


def _import(load: Load) -> Callable[[argparse.Namespace], int]:
    """Ralph's JSON (bcrypt hashes kept) or Rustici lines (plain secrets hashed now)."""

    def run(args: argparse.Namespace) -> int:
        text = Path(args.file).read_text(encoding="utf-8")

        async def work(database: CredentialDatabase, config: Config) -> tuple[int, list[str]]:
            parsed = parse_credentials(
                text,
                account_homepage=config.auth.basic.account_homepage,
                scope_prefix=config.auth.scope_prefix,
            )
            imported, skipped = 0, []
            for username, entry in parsed.users.items():
                secret = entry.secret.reveal()
                hashed = secret if entry.hashed else await hash_new_password(secret)
                new = NewCredential(
                    username=username,
                    secret_hash=Secret(hashed),
                    name=f"imported from {Path(args.file).name}",
                    scopes=tuple(sorted(entry.scopes)),
                    agent=entry.agent,
                )
                try:
                    await database.create(new, actor=_actor(), action="import")
                    imported += 1
                except CredentialConflict:
                    skipped.append(username)
            return imported, skipped

        imported, skipped = _run(load, args, work)
        print(f"imported {imported} credential(s)")
        if skipped:
            print(f"skipped {len(skipped)} already in the database: {', '.join(skipped)}")
        return 0

    return run


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected failures as one line and exit 1 (usage errors stay argparse's, exit 2)."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (GatewayError, CredentialConflict, CredentialsError, UnusablePassword) as exc:
            print(f"error: {exc}", file=sys.stderr)
        except LookupError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
        return 1

    return guarded


def add_parsers(
    commands: Any,
    command: Callable[[Any, str, Any, str], argparse.ArgumentParser],
    load: Load,
) -> None:
    """`credentials create|list|show|enable|disable|rotate|delete|import` under `commands`."""
    group = command(commands, "credentials", None, "credentials in the gateway's database")
    parsers = group.add_subparsers(dest="credentials_command", required=True)
    create = command(parsers, "create", _guarded(_create(load)), "create a credential")
    create.add_argument("--name", required=True)
    create.add_argument(
        "-s", "--scope", action="append", dest="scopes", required=True, help="repeat for several"
    )
    create.add_argument("-u", "--username", help="default: a generated one")
    create.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the secret from standard input (default: generate one)",
    )
    create.add_argument("--agent", help="the xAPI agent as JSON (default: an account)")
    create.add_argument("--expires-at", type=float, help="Unix time in seconds")
    create.add_argument("--info", help="who holds it, a URL")
    create.add_argument("--disabled", action="store_true")
    create.add_argument("--tenant", help="its tenant (tenants:); default: the default tenant")
    listing = command(parsers, "list", _guarded(_list(load)), "list credentials")
    listing.add_argument("--search", help="part of a name or username")
    for name, run, text in (
        ("show", _show_one(load), "one credential (never its secret)"),
        ("enable", _set_enabled(load, True), "enable a credential"),
        ("disable", _set_enabled(load, False), "disable a credential (401 from then on)"),
        ("rotate", _rotate(load), "a new secret, shown once; the old one stops"),
        ("delete", _delete(load), "delete a credential"),
    ):
        sub = command(parsers, name, _guarded(run), text)
        sub.add_argument("credential", help="its id or username")
        if name != "delete":
            sub.add_argument("--json", action="store_true")
    for sub in (create, listing):
        sub.add_argument("--json", action="store_true")
    imported = command(
        parsers,
        "import",
        _guarded(_import(load)),
        "copy a credentials file (Ralph JSON or Rustici lines) into the database",
    )
    imported.add_argument("file")
