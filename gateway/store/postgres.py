"""The credential database in PostgreSQL: one database every replica shares (asyncpg).

The same interface and rows as the SQLite file. A change writes its audit entry and bumps
the generation in one transaction, so a replica that reads the new generation also reads
the change; every replica polls that one number (`store.poll_interval`), so a change
reaches all of them within about one interval. The schema's version lives in
`lrs_gateway_migrations`; migrations run in order under an advisory lock, so replicas
starting together migrate once.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeAlias, TypeVar
from urllib.parse import urlsplit

try:
    import asyncpg
except ImportError:  # the `postgresql` extra is not installed: SQLite only
    asyncpg = None  # type: ignore[assignment]

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import ConfigError, StoreUnavailable
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

__all__ = [
    "MIGRATIONS",
    "PostgresCredentials",
    "SchemaBehind",
    "open_pool",
    "schema_version",
    "unreachable",
    "where",
]

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection of its own (the CLI) or one lent by the pool.
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

# Any 64-bit number the gateway alone uses: replicas starting at once take turns.
_MIGRATION_LOCK = 0x6C72735F67770001

MIGRATIONS: tuple[str, ...] = (
    # 1: credentials, their audit, and the change counter every replica polls.
    """
    CREATE TABLE credentials (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        secret_hash TEXT NOT NULL,
        name TEXT NOT NULL,
        scopes TEXT NOT NULL,
        agent TEXT,
        enabled BOOLEAN NOT NULL,
        expires_at DOUBLE PRECISION,
        info TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION
    );
    CREATE TABLE credential_audit (
        id BIGSERIAL PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        credential_id TEXT,
        username TEXT,
        changes TEXT NOT NULL
    );
    CREATE TABLE credential_generation (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        value BIGINT NOT NULL
    );
    INSERT INTO credential_generation VALUES (1, 0);
    """,
    # 2: keys shared by every replica (the web admin's sessions).
    """
    CREATE TABLE shared_keys (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    """,
    # 3: the forwarding outbox every replica shares (gateway.forwarding.postgres_store).
    # Counters are kept per owner (one process's run): replicas never wait on each
    # other's counter rows, and status adds them up.
    """
    CREATE TABLE outbox_statements (
        seq BIGSERIAL PRIMARY KEY,
        statement_id TEXT NOT NULL,
        body BYTEA NOT NULL,
        attachments BYTEA,
        version TEXT,
        state SMALLINT NOT NULL,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX outbox_statements_pending ON outbox_statements (created) WHERE state = 0;
    CREATE TABLE outbox_deliveries (
        target TEXT NOT NULL,
        seq BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        PRIMARY KEY (target, seq)
    );
    CREATE INDEX outbox_deliveries_seq ON outbox_deliveries (seq);
    CREATE TABLE outbox_dead_letters (
        target TEXT NOT NULL,
        seq BIGINT NOT NULL,
        reason TEXT NOT NULL,
        transient BOOLEAN NOT NULL,
        failed_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (target, seq)
    );
    CREATE INDEX outbox_dead_letters_seq ON outbox_dead_letters (seq);
    CREATE TABLE outbox_counters (
        target TEXT NOT NULL,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        value BIGINT NOT NULL,
        PRIMARY KEY (target, name, owner)
    );
    CREATE TABLE outbox_target_states (
        target TEXT PRIMARY KEY,
        up BOOLEAN NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        reason TEXT
    );
    INSERT INTO shared_keys (name, value)
        VALUES ('outbox-id',
                convert_to(substr(md5(random()::text || clock_timestamp()), 1, 12), 'UTF8'))
        ON CONFLICT DO NOTHING;
    """,
    # 4: tenants: a pending statement is settled against its own tenant's storage.
    """
    ALTER TABLE outbox_statements ADD COLUMN tenant TEXT;
    """,
    # 5: a credential's tenant (its storage and targets; NULL: the default tenant).
    """
    ALTER TABLE credentials ADD COLUMN tenant TEXT;
    """,
    # 6: the tenant of each audit entry's credential, so a tenant's admin sees its own.
    """
    ALTER TABLE credential_audit ADD COLUMN tenant TEXT;
    UPDATE credential_audit AS a SET tenant = c.tenant
        FROM credentials AS c WHERE c.id = a.credential_id;
    """,
    # 7: OAuth 1.0a consumers (their secret sealed, not hashed) and the nonces they used.
    """
    ALTER TABLE credentials ADD COLUMN auth_type TEXT NOT NULL DEFAULT 'basic';
    ALTER TABLE credentials ADD COLUMN sealed_secret TEXT;
    CREATE TABLE oauth_nonces (key TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX oauth_nonces_expiry ON oauth_nonces (expires_at);
    """,
    # 8: backfills of a target from storage's history, and when live forwarding to each
    # target began (with the ids queued in its first moments). Targets the outbox knew
    # already went live before this was kept: their moment is unknown (NULL).
    """
    CREATE TABLE outbox_backfills (
        target TEXT PRIMARY KEY,
        since TEXT,
        until TEXT NOT NULL,
        cursor TEXT,
        tie_ids TEXT NOT NULL DEFAULT '[]',
        first TEXT,
        queued BIGINT NOT NULL DEFAULT 0,
        skipped BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('running', 'done')),
        holder TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION
    );
    CREATE TABLE outbox_live_origins (
        target TEXT PRIMARY KEY,
        since DOUBLE PRECISION
    );
    CREATE TABLE outbox_live_window (
        target TEXT NOT NULL,
        statement_id TEXT NOT NULL,
        PRIMARY KEY (target, statement_id)
    );
    INSERT INTO outbox_live_origins (target, since)
        SELECT target, NULL FROM (
            -- The targets with deliveries, one index probe each (a backlog may be long).
            WITH RECURSIVE t AS (
                (SELECT target FROM outbox_deliveries ORDER BY target LIMIT 1)
                UNION ALL
                SELECT (SELECT d.target FROM outbox_deliveries d WHERE d.target > t.target
                        ORDER BY d.target LIMIT 1)
                FROM t WHERE t.target IS NOT NULL
            )
            SELECT target FROM t WHERE target IS NOT NULL
            UNION SELECT target FROM outbox_dead_letters
            UNION SELECT target FROM outbox_counters
            UNION SELECT target FROM outbox_target_states
        ) AS known
        ON CONFLICT DO NOTHING;
    """,
)

_INSERT_AUDIT = (
    f"INSERT INTO credential_audit ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"  # noqa: S608
)
_ROTATE = (
    "UPDATE credentials SET secret_hash = $1, sealed_secret = $2, updated_at = $3 "  # noqa: S608
    f"WHERE id = $4 RETURNING {COLUMNS}"
)
_NONCE_SWEEP_EVERY = 60.0  # seconds between deletions of expired OAuth nonces
_OUTBOX_VERSION = 3  # the migration that made the outbox's tables

_VERSIONS_TABLE = """
    CREATE TABLE IF NOT EXISTS lrs_gateway_migrations (
        version INTEGER PRIMARY KEY,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
"""


P = ParamSpec("P")
R = TypeVar("R")


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached now (try again later)."""
    return isinstance(exc, OSError | TimeoutError) or (
        asyncpg is not None
        and isinstance(
            exc,
            asyncpg.PostgresConnectionError
            | asyncpg.InterfaceError
            # Shutting down, starting up, or ending this connection (57P01-57P03).
            | asyncpg.exceptions.OperatorInterventionError
            # A connection cut in the middle of a query leaves the client in a state
            # it cannot go on from.
            | asyncpg.InternalClientError,
        )
    )


def _reachable(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """A database that cannot be reached is a 503 (try again), never a 500."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            if not unreachable(exc):
                raise
            raise StoreUnavailable(
                f"the credential database cannot be reached ({type(exc).__name__}); try again"
            ) from exc

    return call


class SchemaBehind(ConfigError):
    """The database's schema is older than this gateway's and migrating is left to hand."""


async def schema_version(conn: Connection) -> int:
    """The newest migration applied (0 for an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('lrs_gateway_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM lrs_gateway_migrations"))


async def migrate(conn: Connection) -> list[int]:
    """Apply the migrations this database lacks, in order; the versions applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(_VERSIONS_TABLE)
        done = await schema_version(conn)
        for number, script in enumerate(MIGRATIONS[done:], start=done + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO lrs_gateway_migrations (version) VALUES ($1)", number)
            applied.append(number)
    return applied


def where(dsn: str) -> str:
    """host:port/database of a DSN, for messages (no user, no password)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


async def open_pool(
    dsn: str,
    *,
    password: Secret | None,
    query_timeout: float,
    size: int,
    auto_migrate: bool,
    reset: Callable[[Any], Awaitable[None]] | None = None,
) -> tuple[asyncpg.Pool[asyncpg.Record], list[int]]:
    """A connection pool on a current schema, and the migrations it applied.

    Migrates (store.migrate: auto) or insists the schema is current; ConfigError, one
    line, when the database cannot be reached or refuses. `reset` replaces what a
    connection goes through when it is given back (a round trip, by default).
    """
    if asyncpg is None:
        raise ConfigError(
            "store.url is a PostgreSQL URL, but asyncpg is not installed: "
            "pip install 'lrs-gateway[postgresql]'"
        )
    pool = await asyncpg.create_pool(
        dsn,
        password=password.reveal() if password is not None else None,
        # No floor to keep: a pool keeping one logs a traceback a second while the
        # database is down; connections are made when a call needs them.
        min_size=0,
        max_size=size,
        timeout=query_timeout,
        command_timeout=query_timeout,
        reset=reset,
    )
    applied: list[int] = []
    try:
        async with pool.acquire() as conn:
            if auto_migrate:
                applied = await migrate(conn)
            elif (version := await schema_version(conn)) < len(MIGRATIONS):
                raise SchemaBehind(
                    f"the database's schema is at version {version}, this gateway needs "
                    f"{len(MIGRATIONS)}: run `lrs-gateway store migrate`"
                )
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        await pool.close()
        raise ConfigError(
            f"store.url: cannot reach PostgreSQL at {where(dsn)} ({type(exc).__name__}: {exc})"
        ) from None
    except asyncpg.PostgresError as exc:  # a wrong password, no such database, ...
        await pool.close()
        raise ConfigError(f"store.url: PostgreSQL at {where(dsn)} refused: {exc}") from None
    except BaseException:
        await pool.close()
        raise
    return pool, applied


class PostgresCredentials:
    """The CredentialDatabase on a PostgreSQL database (a small connection pool)."""

    def __init__(
        self,
        dsn: str,
        *,
        password: Secret | None = None,
        clock: Clock = SYSTEM_CLOCK,
        timeout: float = 5.0,
        auto_migrate: bool = True,
        pool_size: int = 4,
    ) -> None:
        self._dsn = dsn
        self._password = password
        self._clock = clock
        self._timeout = timeout
        self._auto_migrate = auto_migrate
        self._pool_size = pool_size
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self.migrated: list[int] = []  # the schema versions the last open applied
        self._nonces_swept_at = float("-inf")

    def __repr__(self) -> str:
        return f"PostgresCredentials({self._where()})"  # never the DSN: it may hold a password

    def _where(self) -> str:
        return where(self._dsn)

    # -- life ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect; migrate (store.migrate: auto) or insist the schema is current."""
        self._pool, self.migrated = await open_pool(
            self._dsn,
            password=self._password,
            query_timeout=self._timeout,
            size=self._pool_size,
            auto_migrate=self._auto_migrate,
        )

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _connected(self) -> asyncpg.Pool[asyncpg.Record]:
        assert self._pool is not None, "the credential database is not open"
        return self._pool

    # -- reads --------------------------------------------------------------------------

    @_reachable
    async def generation(self) -> int:
        """The change counter: another number means something changed."""
        return int(await self._connected().fetchval("SELECT value FROM credential_generation"))

    @_reachable
    async def all(self) -> list[StoredCredential]:
        """Every credential, for the in-memory copy Basic authentication reads."""
        rows = await self._connected().fetch(f"SELECT {COLUMNS} FROM credentials")  # noqa: S608
        return [credential(r) for r in rows]

    async def _one(self, column: str, value: str) -> StoredCredential | None:
        row = await self._connected().fetchrow(
            f"SELECT {COLUMNS} FROM credentials WHERE {column} = $1",  # noqa: S608
            value,
        )
        return None if row is None else credential(row)

    @_reachable
    async def get(self, credential_id: str) -> StoredCredential | None:
        """The credential with this id."""
        return await self._one("id", credential_id)

    @_reachable
    async def by_username(self, username: str) -> StoredCredential | None:
        """The credential with this username."""
        return await self._one("username", username)

    @_reachable
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
        args: list[str | None] = []
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append("(name ILIKE $1 ESCAPE '\\' OR username ILIKE $1 ESCAPE '\\')")
            args.append(pattern + "%")
        if tenant is not None:
            args.append(tenant.name)
            conditions.append(f"tenant IS NOT DISTINCT FROM ${len(args)}")  # NULL: default's
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        pool = self._connected()
        total = await pool.fetchval(f"SELECT count(*) FROM credentials{where}", *args)  # noqa: S608
        rows = await pool.fetch(
            f"SELECT {COLUMNS} FROM credentials{where} "  # noqa: S608
            f"ORDER BY created_at, id LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
            *args,
            limit,
            offset,
        )
        return [credential(r) for r in rows], int(total)

    @_reachable
    async def audit(
        self, *, offset: int, limit: int, tenant: OfTenant | None = None
    ) -> tuple[list[AuditEntry], int]:
        """One page of the audit, newest first, with the total."""
        where, args = (
            ("", []) if tenant is None else (" WHERE tenant IS NOT DISTINCT FROM $1", [tenant.name])
        )
        pool = self._connected()
        total = await pool.fetchval(f"SELECT count(*) FROM credential_audit{where}", *args)  # noqa: S608
        rows = await pool.fetch(
            f"SELECT * FROM credential_audit{where} ORDER BY id DESC "  # noqa: S608
            f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
            *args,
            limit,
            offset,
        )
        return [audit_entry(r) for r in rows], int(total)

    # -- changes ------------------------------------------------------------------------

    async def _change(
        self,
        work: Callable[[Connection], Awaitable[StoredCredential | None]],
        audit: Callable[[StoredCredential], tuple[str, dict[str, Any]]],
        actor: str,
    ) -> StoredCredential | None:
        """`work` and its audit entry in one transaction that bumps the generation."""
        async with self._connected().acquire() as conn, conn.transaction():
            done = await work(conn)
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
                await conn.execute(_INSERT_AUDIT, *audit_row(entry))
                await conn.execute("UPDATE credential_generation SET value = value + 1")
        return done

    @_reachable
    async def create(
        self, new: NewCredential, *, actor: str, action: str = "create"
    ) -> StoredCredential:
        """Insert `new`; CredentialConflict when its username is taken."""
        stored = created(new, self._clock.now())

        async def insert(conn: Connection) -> StoredCredential:
            values = insert_values(stored)
            marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
            try:
                await conn.execute(
                    f"INSERT INTO credentials ({', '.join(values)}) VALUES ({marks})",  # noqa: S608
                    *values.values(),
                )
            except asyncpg.UniqueViolationError:
                raise CredentialConflict(f"the username {stored.username!r} is taken") from None
            return stored

        done = await self._change(insert, lambda done: (action, create_changes(done)), actor)
        assert done is not None
        return done

    async def _locked_row(self, conn: Connection, credential_id: str) -> Any:
        return await conn.fetchrow(
            f"SELECT {COLUMNS} FROM credentials WHERE id = $1 FOR UPDATE",  # noqa: S608
            credential_id,
        )

    @_reachable
    async def update(
        self, credential_id: str, changes: Mapping[str, Any], *, actor: str
    ) -> StoredCredential | None:
        """Apply checked `changes` (editable fields only); None when there is no such id."""
        before: dict[str, Any] = {}

        async def apply(conn: Connection) -> StoredCredential | None:
            row = await self._locked_row(conn, credential_id)
            if row is None:
                return None
            before.update(credential(row).public())
            if changes:
                assignments = ", ".join(f"{key} = ${n}" for n, key in enumerate(changes, start=1))
                count = len(changes)
                await conn.execute(
                    f"UPDATE credentials SET {assignments}, updated_at = ${count + 1} "  # noqa: S608
                    f"WHERE id = ${count + 2}",
                    *(column_value(k, v) for k, v in changes.items()),
                    self._clock.now(),
                    credential_id,
                )
            return credential(await self._locked_row(conn, credential_id))

        return await self._change(
            apply, lambda done: ("update", update_changes(before, done, changes)), actor
        )

    @_reachable
    async def rotate(
        self,
        credential_id: str,
        secret_hash: Secret,
        *,
        actor: str,
        sealed_secret: Secret | None = None,
    ) -> StoredCredential | None:
        """A new secret (already hashed); the old one stops at the next generation."""

        async def apply(conn: Connection) -> StoredCredential | None:
            row = await conn.fetchrow(
                _ROTATE,
                secret_hash.reveal(),
                None if sealed_secret is None else sealed_secret.reveal(),
                self._clock.now(),
                credential_id,
            )
            return None if row is None else credential(row)

        return await self._change(apply, lambda done: ("rotate", {}), actor)

    @_reachable
    async def remember_nonce(self, key: str, expires_at: float) -> bool:
        """Remember an OAuth nonce; False when it is there already (a replay)."""
        now = self._clock.now()
        pool = self._connected()
        if self._nonces_swept_at + _NONCE_SWEEP_EVERY <= now:
            self._nonces_swept_at = now
            await pool.execute("DELETE FROM oauth_nonces WHERE expires_at <= $1", now)
        row = await pool.fetchrow(
            "INSERT INTO oauth_nonces (key, expires_at) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
            "WHERE oauth_nonces.expires_at <= $3 RETURNING key",
            key,
            expires_at,
            now,
        )
        return row is not None

    @_reachable
    async def delete(self, credential_id: str, *, actor: str) -> StoredCredential | None:
        """Remove it; None when there is no such id."""

        async def apply(conn: Connection) -> StoredCredential | None:
            row = await conn.fetchrow(
                f"DELETE FROM credentials WHERE id = $1 RETURNING {COLUMNS}",  # noqa: S608
                credential_id,
            )
            return None if row is None else credential(row)

        return await self._change(apply, lambda done: ("delete", {}), actor)

    @_reachable
    async def touch(self, used: Mapping[str, float]) -> None:
        """Record when usernames were last used (not a change: the generation stays)."""
        if not used:
            return
        await self._connected().executemany(
            "UPDATE credentials SET last_used_at = greatest(coalesce(last_used_at, 0), $1) "
            "WHERE username = $2",
            [(at, username) for username, at in used.items()],
        )

    @_reachable
    async def shared_key(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The key called `name` every replica shares (made once, by whoever comes first)."""
        pool = self._connected()
        await pool.execute(
            "INSERT INTO shared_keys (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            name,
            make(),
        )
        return bytes(await pool.fetchval("SELECT value FROM shared_keys WHERE name = $1", name))

    @_reachable
    async def describe(self) -> dict[str, Any]:
        """Kind, host:port/database, schema version, counts."""
        async with self._connected().acquire() as conn:
            return {
                "kind": "postgresql",
                "where": self._where(),
                "schema_version": await schema_version(conn),
                "schema_latest": len(MIGRATIONS),
                "credentials": await conn.fetchval("SELECT count(*) FROM credentials"),
                "audit_entries": await conn.fetchval("SELECT count(*) FROM credential_audit"),
                "generation": await conn.fetchval("SELECT value FROM credential_generation"),
                # The forwarding outbox shares the database (and its schema version).
                "outbox": {
                    "statements": await conn.fetchval("SELECT count(*) FROM outbox_statements"),
                    "deliveries": await conn.fetchval("SELECT count(*) FROM outbox_deliveries"),
                    "dead_letters": await conn.fetchval("SELECT count(*) FROM outbox_dead_letters"),
                }
                if await schema_version(conn) >= _OUTBOX_VERSION
                else None,
            }

    @_reachable
    async def restore(
        self, credentials: Sequence[StoredCredential], audit: Sequence[AuditEntry]
    ) -> list[str]:
        """Copy rows as they are, in one transaction; the usernames already held here."""
        skipped = []
        async with self._connected().acquire() as conn, conn.transaction():
            for stored in credentials:
                values = insert_values(stored) | {"last_used_at": stored.last_used_at}
                marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
                row = await conn.fetchrow(
                    f"INSERT INTO credentials ({', '.join(values)}) VALUES ({marks}) "  # noqa: S608
                    "ON CONFLICT DO NOTHING RETURNING id",
                    *values.values(),
                )
                if row is None:
                    skipped.append(stored.username)
            await conn.executemany(_INSERT_AUDIT, [audit_row(entry) for entry in audit])
            await conn.execute("UPDATE credential_generation SET value = value + 1")
        return skipped
