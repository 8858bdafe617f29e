"""Which outbox `store.url` names: a SQLite file in data_dir (default) or PostgreSQL."""

from __future__ import annotations

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import Config
from gateway.forwarding.outbox import SqliteOutbox
from gateway.forwarding.postgres_outbox import PostgresOutbox
from gateway.forwarding.transaction import Outbox
from gateway.store.databases import is_postgres

__all__ = ["OUTBOX_FILE", "outbox_for"]

OUTBOX_FILE = "outbox.sqlite3"


def outbox_for(
    config: Config,
    *,
    clock: Clock = SYSTEM_CLOCK,
    migrate: bool | None = None,
    tenant: str | None = None,
) -> Outbox:
    """The outbox of `store.url`, not yet open.

    PostgreSQL: the one every replica shares (a tenant's rows carry its name). Otherwise
    this process's file in data_dir (a worker's own with `serve --workers`; a tenant's
    config has its own data_dir).
    """
    store = config.store
    if is_postgres(config):
        assert store.url is not None
        return PostgresOutbox(
            store.url,
            password=store.password,
            timeout=store.timeout,
            lease=store.lease,
            auto_migrate=store.migrate == "auto" if migrate is None else migrate,
            clock=clock,
            tenant=tenant,
        )
    return SqliteOutbox(
        config.resolve_path(config.data_dir) / OUTBOX_FILE,
        synchronous=config.outbox.synchronous,
        clock=clock,
    )
