"""The credential database in SQLite: one file that every worker process opens (WAL mode).

Calls run on one thread that owns the connection, never on the event loop. A change
writes its audit entry and bumps `generation` in the same transaction, so a process that
sees the new generation also sees the change. The schema carries its version
(`PRAGMA user_version`) and is migrated in order.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import Config
from gateway.secret import Secret
from gateway.store.credentials import (
    AuditEntry,
    CredentialConflict,
    NewCredential,
    OfTenant,
    StoredCredential,
)
from gateway.store.rows import (
    AUDIT_COLUMNS,
    COLUMNS,
    audit_entry,
    audit_row,
    column_value,
    create_changes,
    created,
    credential,
    insert_values,
    update_changes,
)

__all__ = ["CREDENTIALS_FILE", "SqliteCredentials", "database_path", "sqlite_path"]

CREDENTIALS_FILE = "gateway.sqlite3"  # in the configured data_dir, unless store.url says

T = TypeVar("T")
_NONCE_SWEEP_EVERY = 60.0  # seconds between deletions of expired OAuth nonces

_MIGRATIONS = (
    # 1: credentials, their audit, and the change counter every process polls.
    """
    CREATE TABLE credentials (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        secret_hash TEXT NOT NULL,
        name TEXT NOT NULL,
        scopes TEXT NOT NULL,
        agent TEXT,
        enabled INTEGER NOT NULL,
        expires_at REAL,
        info TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_used_at REAL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        credential_id TEXT,
        username TEXT,
        changes TEXT NOT NULL
    );
    CREATE TABLE generation (one INTEGER PRIMARY KEY CHECK (one = 1), value INTEGER NOT NULL);
    INSERT INTO generation VALUES (1, 0);
    """,
    # 2: keys shared by every process using the database (the web admin's sessions).
    """
    CREATE TABLE shared_keys (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    """,
    # 3: a credential's tenant (its storage and targets; NULL: the default tenant).
    """
    ALTER TABLE credentials ADD COLUMN tenant TEXT;
    """,
    # 4: the tenant of each audit entry's credential, so a tenant's admin sees its own.
    """
    ALTER TABLE audit ADD COLUMN tenant TEXT;
    UPDATE audit SET tenant = (SELECT tenant FROM credentials WHERE id = audit.credential_id);
    """,
    # 5: OAuth 1.0a consumers (their secret sealed, not hashed) and the nonces they used.
    """
    ALTER TABLE credentials ADD COLUMN auth_type TEXT NOT NULL DEFAULT 'basic';
    ALTER TABLE credentials ADD COLUMN sealed_secret TEXT;
    CREATE TABLE oauth_nonces (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
    CREATE INDEX oauth_nonces_expiry ON oauth_nonces (expires_at);
    """,
)


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///path` URL (absolute: `sqlite:////var/lib/...`)."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite:/// URL: {url[:60]}")
    return Path(url[len("sqlite:///") :])


def database_path(config: Config, data_dir: Path) -> Path:
    """The credential database's file: `store.url`, else one in the configured data_dir.

    `data_dir` is the configured one, resolved (worker processes keep their outboxes in
    their own, but share this file).
    """
    if config.store.url is not None:
        return config.resolve_path(str(sqlite_path(config.store.url)))
    return data_dir / CREDENTIALS_FILE


class SqliteCredentials:
    """The CredentialDatabase on one SQLite file."""

    def __init__(self, path: Path, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = path
        self._clock = clock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="credentials-db")
        self._db: sqlite3.Connection | None = None
        self.migrated: list[int] = []  # the schema versions the last open applied
        self._nonces_swept_at = float("-inf")

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._db is not None, "the credential database is not open"
            return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    # -- life ---------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 5000")  # another process's write: wait, not fail
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # a credential change survives a power cut
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while this one waited for the lock.
                if db.execute("PRAGMA user_version").fetchone()[0] < number:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {number}")
                    self.migrated.append(number)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._db = db

    async def open(self) -> None:
        """Open (creating or migrating) the database."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open)

    async def close(self) -> None:
        """Close the database and its thread."""

        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=False)

    # -- reads --------------------------------------------------------------------------

    async def generation(self) -> int:
        """The change counter: another number means something changed."""
        row = await self._call(lambda db: db.execute("SELECT value FROM generation").fetchone())
        return int(row[0])

    async def all(self) -> list[StoredCredential]:
        """Every credential, for the in-memory copy Basic authentication reads."""
        rows = await self._call(
            lambda db: db.execute(f"SELECT {COLUMNS} FROM credentials").fetchall()  # noqa: S608
        )
        return [credential(r) for r in rows]

    async def _one(self, column: str, value: str) -> StoredCredential | None:
        row = await self._call(
            lambda db: db.execute(
                f"SELECT {COLUMNS} FROM credentials WHERE {column} = ?",  # noqa: S608
                (value,),
            ).fetchone()
        )
        return None if row is None else credential(row)

    async def get(self, credential_id: str) -> StoredCredential | None:
        """The credential with this id."""
        return await self._one("id", credential_id)

    async def by_username(self, username: str) -> StoredCredential | None:
        """The credential with this username."""
        return await self._one("username", username)

    async def page(
        self,
        *,
        offset: int,
        limit: int,
        search: str | None = None,
        tenant: OfTenant | None = None,
    ) -> tuple[list[StoredCredential], int]:
        """One page, oldest first, with the total; `search` matches name or username."""
        conditions: list[str] = []
        args: tuple[str | None, ...] = ()
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern += "%"
            conditions.append("(name LIKE ? ESCAPE '\\' OR username LIKE ? ESCAPE '\\')")
            args = (pattern, pattern)
        if tenant is not None:
            conditions.append("tenant IS ?")  # IS: the default tenant's is NULL
            args = (*args, tenant.name)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""

        def read(db: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
            total = db.execute(f"SELECT count(*) FROM credentials{where}", args).fetchone()[0]  # noqa: S608
            rows = db.execute(
                f"SELECT {COLUMNS} FROM credentials{where} "  # noqa: S608
                "ORDER BY created_at, id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            return rows, int(total)

        rows, total = await self._call(read)
        return [credential(r) for r in rows], total

    async def audit(
        self, *, offset: int, limit: int, tenant: OfTenant | None = None
    ) -> tuple[list[AuditEntry], int]:
        """One page of the audit, newest first, with the total."""
        where, args = ("", ()) if tenant is None else (" WHERE tenant IS ?", (tenant.name,))
        # IS: the default tenant's rows have none (NULL)

        def read(db: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
            total = db.execute(f"SELECT count(*) FROM audit{where}", args).fetchone()[0]  # noqa: S608
            rows = db.execute(
                f"SELECT * FROM audit{where} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
                (*args, limit, offset),
            ).fetchall()
            return rows, int(total)

        rows, total = await self._call(read)
        return [audit_entry(r) for r in rows], total

    # -- changes ------------------------------------------------------------------------

    def _change(
        self,
        db: sqlite3.Connection,
        work: Callable[[sqlite3.Connection], StoredCredential | None],
        audit: Callable[[StoredCredential], tuple[str, dict[str, Any]]],
        actor: str,
    ) -> StoredCredential | None:
        """`work` and its audit entry in one transaction that bumps the generation."""
        db.execute("BEGIN IMMEDIATE")
        try:
            done = work(db)
            if done is not None:
                action, changes = audit(done)
                entry = AuditEntry(
                    0,
                    self._clock.now(),
                    actor,
                    action,
                    done.id,
                    done.username,
                    changes,
                    done.tenant,
                )
                db.execute(
                    f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    audit_row(entry),
                )
                db.execute("UPDATE generation SET value = value + 1")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return done

    async def create(
        self, new: NewCredential, *, actor: str, action: str = "create"
    ) -> StoredCredential:
        """Insert `new`; CredentialConflict when its username is taken."""
        stored = created(new, self._clock.now())

        def insert(db: sqlite3.Connection) -> StoredCredential:
            values = insert_values(stored)
            try:
                db.execute(
                    f"INSERT INTO credentials ({', '.join(values)}) "  # noqa: S608
                    f"VALUES ({', '.join('?' for _ in values)})",
                    list(values.values()),
                )
            except sqlite3.IntegrityError:
                raise CredentialConflict(f"the username {stored.username!r} is taken") from None
            return stored

        def audit(done: StoredCredential) -> tuple[str, dict[str, Any]]:
            return action, create_changes(done)

        done = await self._call(lambda db: self._change(db, insert, audit, actor))
        assert done is not None
        return done

    async def update(
        self, credential_id: str, changes: Mapping[str, Any], *, actor: str
    ) -> StoredCredential | None:
        """Apply checked `changes` (editable fields only); None when there is no such id."""
        before: dict[str, Any] = {}

        def apply(db: sqlite3.Connection) -> StoredCredential | None:
            row = db.execute(
                f"SELECT {COLUMNS} FROM credentials WHERE id = ?",  # noqa: S608
                (credential_id,),
            ).fetchone()
            if row is None:
                return None
            before.update(credential(row).public())
            if changes:
                assignments = ", ".join(f"{key} = ?" for key in changes)
                db.execute(
                    f"UPDATE credentials SET {assignments}, updated_at = ? WHERE id = ?",  # noqa: S608
                    [
                        *(column_value(k, v) for k, v in changes.items()),
                        self._clock.now(),
                        credential_id,
                    ],
                )
            return credential(
                db.execute(
                    f"SELECT {COLUMNS} FROM credentials WHERE id = ?",  # noqa: S608
                    (credential_id,),
                ).fetchone()
            )

        def audit(done: StoredCredential) -> tuple[str, dict[str, Any]]:
            return "update", update_changes(before, done, changes)

        return await self._call(lambda db: self._change(db, apply, audit, actor))

    async def rotate(
        self,
        credential_id: str,
        secret_hash: Secret,
        *,
        actor: str,
        sealed_secret: Secret | None = None,
    ) -> StoredCredential | None:
        """A new secret (already hashed); the old one stops at the next generation."""
        sealed = None if sealed_secret is None else sealed_secret.reveal()

        def apply(db: sqlite3.Connection) -> StoredCredential | None:
            db.execute(
                "UPDATE credentials SET secret_hash = ?, sealed_secret = ?, updated_at = ? "
                "WHERE id = ?",
                (secret_hash.reveal(), sealed, self._clock.now(), credential_id),
            )
            row = db.execute(
                f"SELECT {COLUMNS} FROM credentials WHERE id = ?",  # noqa: S608
                (credential_id,),
            ).fetchone()
            return None if row is None else credential(row)

        return await self._call(
            lambda db: self._change(db, apply, lambda done: ("rotate", {}), actor)
        )

    async def remember_nonce(self, key: str, expires_at: float) -> bool:
        """Remember an OAuth nonce; False when it is there already (a replay)."""
        now = self._clock.now()

        def remember(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                if self._nonces_swept_at + _NONCE_SWEEP_EVERY <= now:
                    db.execute("DELETE FROM oauth_nonces WHERE expires_at <= ?", (now,))
                    self._nonces_swept_at = now
                row = db.execute(
                    "INSERT INTO oauth_nonces (key, expires_at) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
                    "WHERE oauth_nonces.expires_at <= ? RETURNING key",
                    (key, expires_at, now),
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return row is not None

        return await self._call(remember)

    async def delete(self, credential_id: str, *, actor: str) -> StoredCredential | None:
        """Remove it; None when there is no such id."""

        def apply(db: sqlite3.Connection) -> StoredCredential | None:
            row = db.execute(
                f"SELECT {COLUMNS} FROM credentials WHERE id = ?",  # noqa: S608
                (credential_id,),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM credentials WHERE id = ?", (credential_id,))
            return credential(row)

        return await self._call(
            lambda db: self._change(db, apply, lambda done: ("delete", {}), actor)
        )

    async def touch(self, used: Mapping[str, float]) -> None:
        """Record when usernames were last used (not a change: the generation stays)."""
        if not used:
            return

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "UPDATE credentials SET last_used_at = max(coalesce(last_used_at, 0), ?) "
                    "WHERE username = ?",
                    [(at, username) for username, at in used.items()],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._call(write)

    async def shared_key(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The key called `name` every process of this database shares (made once)."""

        def get_or_make(db: sqlite3.Connection) -> bytes:
            db.execute(
                "INSERT OR IGNORE INTO shared_keys (name, value) VALUES (?, ?)", (name, make())
            )
            row = db.execute("SELECT value FROM shared_keys WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

        return await self._call(get_or_make)

    async def describe(self) -> dict[str, Any]:
        """Kind, file, schema version, counts."""

        def read(db: sqlite3.Connection) -> dict[str, Any]:
            return {
                "kind": "sqlite",
                "where": str(self.path),
                "schema_version": db.execute("PRAGMA user_version").fetchone()[0],
                "schema_latest": len(_MIGRATIONS),
                "credentials": db.execute("SELECT count(*) FROM credentials").fetchone()[0],
                "audit_entries": db.execute("SELECT count(*) FROM audit").fetchone()[0],
                "generation": db.execute("SELECT value FROM generation").fetchone()[0],
            }

        return await self._call(read)

    async def restore(
        self, credentials: Sequence[StoredCredential], audit: Sequence[AuditEntry]
    ) -> list[str]:
        """Copy rows as they are, in one transaction; the usernames already held here."""

        def copy(db: sqlite3.Connection) -> list[str]:
            skipped = []
            db.execute("BEGIN IMMEDIATE")
            try:
                for stored in credentials:
                    values = insert_values(stored) | {"last_used_at": stored.last_used_at}
                    inserted = db.execute(
                        f"INSERT OR IGNORE INTO credentials ({', '.join(values)}) "  # noqa: S608
                        f"VALUES ({', '.join('?' for _ in values)})",
                        list(values.values()),
                    ).rowcount
                    if not inserted:
                        skipped.append(stored.username)
                db.executemany(
                    f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    [audit_row(entry) for entry in audit],
                )
                db.execute("UPDATE generation SET value = value + 1")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return skipped

        return await self._call(copy)
