"""`lrs-gateway store migrate|status`: the gateway's own database, by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from gateway.config.settings import Config
from gateway.errors import GatewayError
from gateway.store.databases import credential_database
from gateway.store.postgres import SchemaBehind

__all__ = ["add_parsers"]

Load = Callable[[argparse.Namespace], Config]


async def _opened(config: Config, *, migrate: bool) -> tuple[dict[str, Any], list[int]]:
    """Open the database (migrating it, or not); its description and what was migrated."""
    database = credential_database(config, config.resolve_path(config.data_dir), migrate=migrate)
    await database.open()
    try:
        return await database.describe(), database.migrated
    finally:
        await database.close()


def _migrate(load: Load) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        described, migrated = asyncio.run(_opened(load(args), migrate=True))
        where = f"{described['kind']} {described['where']}"
        version = described["schema_version"]
        if not migrated:
            print(f"{where}: schema at version {version}, nothing to migrate")
        else:
            print(
                f"{where}: migrated to version {version} (applied {', '.join(map(str, migrated))})"
            )
        return 0

    return run


def _status(load: Load) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        config = load(args)

        try:
            described, _ = asyncio.run(_opened(config, migrate=False))
        except (GatewayError, SchemaBehind) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(described, indent=2))
            return 0
        behind = described["schema_version"] < described["schema_latest"]
        print(f"store          {described['kind']} {described['where']}")
        print(
            f"schema         version {described['schema_version']} of "
            f"{described['schema_latest']}"
            + (" (behind: run `lrs-gateway store migrate`)" if behind else "")
        )
        print(f"credentials    {described['credentials']}")
        print(f"audit entries  {described['audit_entries']}")
        print(f"generation     {described['generation']} (changes so far)")
        return 0

    return run


def add_parsers(
    commands: Any,
    command: Callable[[Any, str, Any, str], argparse.ArgumentParser],
    load: Load,
) -> None:
    """`store migrate|status` under `commands`."""
    group = command(commands, "store", None, "the gateway's database (store.url)")
    parsers = group.add_subparsers(dest="store_command", required=True)
    command(parsers, "migrate", _migrate(load), "bring the database's schema up to date")
    status = command(parsers, "status", _status(load), "where it is, its schema, its counts")
    status.add_argument("--json", action="store_true")
