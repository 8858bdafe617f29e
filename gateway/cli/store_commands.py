"""`lrs-gateway store migrate|status`: the gateway's own database, by hand."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.cli.config_commands import mask_url
from gateway.config.settings import STORE_SCHEMES, Config
from gateway.errors import GatewayError
from gateway.store.databases import credential_database, is_postgres
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
        outbox = described.get("outbox")
        if outbox:
            print(
                f"outbox         {outbox['statements']} statements, {outbox['deliveries']} "
                f"deliveries owed, {outbox['dead_letters']} dead letters"
            )
        return 0

    return run


class StoreNotEmpty(Exception):
    """A copy would mix two stores' rows (and their audits)."""


def _with_url(config: Config, url: str | None) -> Config:
    """`config` with another store.url (None: the configured one)."""
    if url is None:
        return config
    return dataclasses.replace(config, store=dataclasses.replace(config.store, url=url))


async def _copy(source_config: Config, target_config: Config) -> tuple[int, int, list[str]]:
    """Every credential and audit entry of one store into another, as they are."""
    source = credential_database(
        source_config, source_config.resolve_path(source_config.data_dir), migrate=False
    )
    target = credential_database(
        target_config, target_config.resolve_path(target_config.data_dir), migrate=True
    )
    await source.open()
    try:
        credentials = await source.all()
        entries, total = await source.audit(offset=0, limit=1)
        entries, _ = await source.audit(offset=0, limit=max(total, 1))
    finally:
        await source.close()
    await target.open()
    try:
        held = await target.describe()
        if held["credentials"] or held["audit_entries"]:
            raise StoreNotEmpty(
                f"the target store already holds {held['credentials']} credentials and "
                f"{held['audit_entries']} audit entries: copy into an empty one"
            )
        skipped = await target.restore(credentials, list(reversed(entries)))
    finally:
        await target.close()
    return len(credentials), len(entries), skipped


async def _copy_outboxes(source: Config, target: Config) -> tuple[int, int, int]:
    """Move what the SQLite outboxes in data_dir owe into PostgreSQL's; (files, owed, dead).

    Each file's rows go in one PostgreSQL transaction, then leave the file: a gateway
    started on it again (the writers must be stopped first) has nothing left to send twice.
    """
    from gateway.forwarding.outboxes import OUTBOX_FILE
    from gateway.forwarding.postgres_outbox import PostgresOutbox
    from gateway.forwarding.store import OutboxStore
    from gateway.runtime.workers import outbox_dirs

    data_dir = source.resolve_path(source.data_dir)
    # Each tenant's outboxes too: their pending rows carry the tenant, so that its own
    # resolver (asking its own storage) settles them.
    places: list[tuple[str | None, Path]] = [
        (tenant, path)
        for d in outbox_dirs(data_dir)
        for tenant, path in [
            (None, d / OUTBOX_FILE),
            *((t.name, d / "tenants" / t.name / OUTBOX_FILE) for t in source.tenants),
        ]
        if path.exists()
    ]
    if not places:
        return 0, 0, 0
    assert target.store.url is not None
    outbox = PostgresOutbox(target.store.url, password=target.store.password, auto_migrate=True)
    await outbox.open()
    owed = dead = 0
    try:
        for tenant, path in places:
            store = await asyncio.to_thread(OutboxStore, path)
            try:
                rows = await asyncio.to_thread(store.owed)
                await outbox.restore(rows, owner=f"copied from {store.ident}", tenant=tenant)
                await asyncio.to_thread(store.forget, rows)
            finally:
                store.close()
            owed += len(rows.deliveries)
            dead += len(rows.dead_letters)
    finally:
        await outbox.close()
    return len(places), owed, dead


def _copy_command(load: Load) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        config = load(args)
        for url in (args.source, args.target):
            if url is not None and not url.startswith(STORE_SCHEMES):
                print(f"error: not a store URL: {mask_url(url)}", file=sys.stderr)
                return 2
        source, target = _with_url(config, args.source), _with_url(config, args.target)
        if source.store.url == target.store.url:
            print("error: --from and --to name the same store", file=sys.stderr)
            return 2
        try:
            credentials, entries, skipped = asyncio.run(_copy(source, target))
            moved = (
                asyncio.run(_copy_outboxes(source, target))
                if is_postgres(target) and not is_postgres(source)
                else None
            )
        except (GatewayError, StoreNotEmpty) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"copied {credentials - len(skipped)} credentials and {entries} audit entries"
            + (f"; skipped (already there): {', '.join(skipped)}" if skipped else "")
        )
        if moved is not None and moved[0]:
            files, owed, dead = moved
            print(
                f"moved {owed} deliveries owed and {dead} dead letters from {files} SQLite "
                "outbox(es) into PostgreSQL's"
            )
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
    copy = command(
        parsers,
        "copy",
        _copy_command(load),
        "copy credentials and their audit from one store to another; to PostgreSQL, also "
        "move what the SQLite outboxes in data_dir owe (stop the gateways first)",
    )
    copy.add_argument("--from", dest="source", help="a store URL (default: store.url)")
    copy.add_argument("--to", dest="target", help="a store URL (default: store.url)")
