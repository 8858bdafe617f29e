"""Which credential database `store.url` names: the SQLite file (default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import Config
from gateway.store.credentials import CredentialDatabase
from gateway.store.postgres import PostgresCredentials
from gateway.store.sqlite import SqliteCredentials, database_path

__all__ = ["credential_database", "is_postgres"]


def is_postgres(config: Config) -> bool:
    """Whether `store.url` names a PostgreSQL database."""
    url = config.store.url
    return url is not None and url.startswith(("postgresql://", "postgres://"))


def credential_database(
    config: Config,
    data_dir: Path,
    *,
    clock: Clock = SYSTEM_CLOCK,
    migrate: bool | None = None,
) -> CredentialDatabase:
    """The database of `store.url`, not yet open.

    `data_dir` is the configured one, resolved: the SQLite default lives there (worker
    processes keep their outboxes in their own directories, but share this file).
    `migrate` overrides `store.migrate` (SQLite, embedded, always migrates at open).
    """
    store = config.store
    if is_postgres(config):
        assert store.url is not None
        return PostgresCredentials(
            store.url,
            password=store.password,
            clock=clock,
            timeout=store.timeout,
            auto_migrate=store.migrate == "auto" if migrate is None else migrate,
        )
    return SqliteCredentials(database_path(config, data_dir), clock=clock)
