"""The outbox's SQLite schema and operations; synchronous, used by one thread or the CLI.

A statement is written `pending` before the storage LRS sees it, made `ready` (with one
delivery row per target) once storage accepted it, and dropped if storage refused it.
Deliveries leave by ack (delivered) or, for a permanent reason only, to the dead letters: a
target that is down keeps them in its backlog. Each target's up/down state is kept too, so
the CLI and a restarted gateway see it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "BACKFILL_COLUMNS",
    "BACKFILL_STALE",
    "BACKLOG_FULL",
    "LIVE_WINDOW",
    "REPLAY_CHUNK",
    "BackfillBusy",
    "BackfillState",
    "Claimed",
    "LiveStart",
    "OutboxRows",
    "OutboxStore",
    "TargetState",
    "TargetStats",
]

log = logging.getLogger(__name__)
BACKLOG_FULL = "backlog full"
REPLAY_CHUNK = 1000  # dead letters re-queued per transaction: deliveries go on in between
# Seconds after a target goes live during which the ids queued for it are kept: a backfill
# skips them (gateway.forwarding.backfill explains the boundary between history and live).
# Ten minutes: a backfill run within them ends a minute before it runs, later at their
# end less a minute, so a rollout of the target shorter than that loses nothing.
LIVE_WINDOW = 600.0
_ALMOST_DONE = 0.999  # a running backfill's progress at most: 1 is for done ones
# Seconds without a page or heartbeat after which a running backfill was interrupted
# (its command died): another run may take it over, and figures show it as stale.
BACKFILL_STALE = 60.0
_PENDING, _READY = 0, 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS statements (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    statement_id TEXT NOT NULL,
    body BLOB NOT NULL,
    state INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS statements_pending ON statements(created) WHERE state = 0;
CREATE TABLE IF NOT EXISTS deliveries (
    target TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (target, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries(seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    target TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    transient INTEGER NOT NULL,
    failed_at REAL NOT NULL,
    PRIMARY KEY (target, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_seq ON dead_letters(seq);
CREATE INDEX IF NOT EXISTS dead_letters_transient ON dead_letters(target, transient, seq);
CREATE TABLE IF NOT EXISTS counters (
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (target, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS target_states (
    target TEXT PRIMARY KEY,
    up INTEGER NOT NULL,
    since REAL NOT NULL,
    reason TEXT
) WITHOUT ROWID;
"""


def _add_columns(conn: sqlite3.Connection) -> None:
    """Outboxes made before attachments were forwarded, or versions kept."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(statements)")}
    for column, kind in (("attachments", "BLOB"), ("version", "TEXT")):
        if column not in columns:
            conn.execute(f"ALTER TABLE statements ADD COLUMN {column} {kind}")


def _requeue_transient(conn: sqlite3.Connection) -> None:
    """Older versions dead-lettered what a down target missed: it goes back in the backlog."""
    moved = dict(
        conn.execute(
            "SELECT target, COUNT(*) FROM dead_letters WHERE transient = 1 GROUP BY target"
        )
    )
    conn.execute(
        "INSERT OR IGNORE INTO deliveries(target, seq) "
        "SELECT target, seq FROM dead_letters WHERE transient = 1"
    )
    conn.execute("DELETE FROM dead_letters WHERE transient = 1")
    for target, count in moved.items():
        log.info(
            "outbox: %d transient dead letters of %s (left by an older version) are "
            "back in its backlog",
            count,
            target,
        )


def _add_identity(conn: sqlite3.Connection) -> None:
    """A stable id for the outbox: the `outbox` label of its metrics."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "INSERT OR IGNORE INTO meta (name, value) VALUES ('outbox-id', ?)", (secrets.token_hex(6),)
    )


def _add_backfill(conn: sqlite3.Connection) -> None:
    """Backfills and the moment each target went live (targets known already: unknown)."""
    # One statement at a time: executescript would commit the migration's transaction.
    for statement in _BACKFILL_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        "INSERT OR IGNORE INTO live_origins(target, since) SELECT target, NULL FROM ("
        "SELECT target FROM deliveries UNION SELECT target FROM dead_letters "
        "UNION SELECT target FROM counters UNION SELECT target FROM target_states)"
    )


_BACKFILL_SCHEMA = """
CREATE TABLE IF NOT EXISTS backfills (
    target TEXT PRIMARY KEY,
    since TEXT,
    until TEXT NOT NULL,
    cursor TEXT,
    tie_ids TEXT NOT NULL DEFAULT '[]',
    first TEXT,
    queued INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    holder TEXT,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_origins (
    target TEXT PRIMARY KEY,
    since REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_window (
    target TEXT NOT NULL,
    statement_id TEXT NOT NULL,
    PRIMARY KEY (target, statement_id)
) WITHOUT ROWID;
"""

# Ordered: PRAGMA user_version says how many of them a file has had.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _add_columns,
    _requeue_transient,
    _add_identity,
    _add_backfill,
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery due now: its sequence number, the statement's bytes, attempts so far."""

    seq: int
    body: bytes
    attempts: int
    attachments: bytes | None = None  # its attachment parts, packed (gateway.xapi.attachments)
    version: str | None = None  # the xAPI version it was written in ("1.0.3", "2.0.0")


@dataclass(frozen=True, slots=True)
class TargetState:
    """Whether a target answers; when that last changed (None: never went down); why."""

    up: bool = True
    since: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TargetStats:
    """What `forwarding status` shows for one target."""

    state: str  # "up" or "down" (retries exhausted: probed every backoff_cap)
    up: bool
    backlog: int  # statements it has not received (a down target's included)
    oldest_age: float | None  # seconds: the lag
    delivered: int
    retries: int
    dead_letters: int  # permanent dead letters waiting now (a human must look)
    dead_lettered_total: int  # ever dead-lettered (each time once, permanent reasons only)
    down_since: float | None  # Unix time it went down; None while up
    last_error: str | None  # why it is down; None while up
    filtered: int = 0  # statements its filter kept from it
    skipped_signed: int = 0  # signed statements not sent (pseudonymise.signed: skip)
    signature_stripped: int = 0  # signed statements sent without their signature
    backfilled: int = 0  # statements a backfill queued for it (from storage's history)
    backfill: BackfillState | None = None  # its backfill, running or done


class BackfillBusy(Exception):
    """Another backfill of the same target holds it (its heartbeat is recent)."""


@dataclass(frozen=True, slots=True)
class BackfillState:
    """A target's backfill from storage's history: its range, cursor and figures.

    Timestamps (`since`, `until`, `cursor`, `first`) are storage's `stored` values, as
    ISO 8601 strings; `tie_ids` are the ids queued whose `stored` equals `cursor` (a resume
    asks from a little before the cursor and skips them).
    """

    target: str
    since: str | None
    until: str
    cursor: str | None
    tie_ids: tuple[str, ...]
    first: str | None  # the first statement's `stored` (where the span starts without since)
    queued: int
    skipped: int  # statements live forwarding had queued already (the boundary's overlap)
    state: str  # "running" or "done"
    started_at: float
    updated_at: float  # the last page or heartbeat (a stale running one was interrupted)
    finished_at: float | None = None
    holder: str | None = None  # which run holds it (a token, not a secret)

    @classmethod
    def from_document(cls, document: Any) -> BackfillState | None:
        """One from a status document (JSON), None unless it has this version's fields."""
        if not isinstance(document, dict):
            return None
        try:
            return cls(**{**document, "tie_ids": tuple(document.get("tie_ids") or ())})
        except TypeError:  # another version's fields (a worker of another version)
            return None

    def status(self, now: float) -> str:
        """Done, running, or interrupted (running, but silent for BACKFILL_STALE)."""
        if self.state == "done":
            return "done"
        return "interrupted" if now - self.updated_at >= BACKFILL_STALE else "running"

    def shown(self) -> BackfillState:
        """As status documents carry it: without the ids at the cursor (a resume's only)."""
        return replace(self, tie_ids=())

    @property
    def fraction(self) -> float:
        """How far it is, 0 to 1: the share of its `stored` span behind the cursor."""
        if self.state == "done":
            return 1.0
        start = self.since or self.first
        if start is None or self.cursor is None:
            return 0.0
        try:
            begin, end, at = (
                datetime.fromisoformat(t).timestamp() for t in (start, self.until, self.cursor)
            )
        except ValueError:
            return 0.0
        # 1 means done (the alert for an interrupted backfill reads it so): never before.
        return 0.0 if end <= begin else min(_ALMOST_DONE, max(0.0, (at - begin) / (end - begin)))


@dataclass(frozen=True, slots=True)
class LiveStart:
    """When live forwarding to a target began in an outbox, and the ids queued at first.

    `known` False: never live here. `since` None: before this outbox kept the moment.
    """

    known: bool
    since: float | None
    window_ids: frozenset[str]


BACKFILL_COLUMNS = (
    "target, since, until, cursor, tie_ids, first, queued, skipped, state, started_at, "
    "updated_at, finished_at, holder"
)


def backfill_of(row: Sequence[Any]) -> BackfillState:
    """A `backfills` row (in `BACKFILL_COLUMNS` order) as a BackfillState."""
    target, since, until, cursor, tie_ids, first, queued, skipped, state, *times, holder = row
    started, updated, finished = times
    return BackfillState(
        target=target,
        since=since,
        until=until,
        cursor=cursor,
        tie_ids=tuple(json.loads(tie_ids)),
        first=first,
        queued=int(queued),
        skipped=int(skipped),
        state=state,
        started_at=float(started),
        updated_at=float(updated),
        finished_at=None if finished is None else float(finished),
        holder=holder,
    )


@dataclass(frozen=True, slots=True)
class OutboxRows:
    """What an outbox still owes, as rows: for moving it into another outbox."""

    # (seq, statement_id, body, attachments, version, state, created)
    statements: list[tuple[int, str, bytes, bytes | None, str | None, int, float]]
    deliveries: list[tuple[str, int, int, float, str | None]]  # target, seq, attempts, next, error
    dead_letters: list[tuple[str, int, str, bool, float]]  # target, seq, reason, transient, at
    states: list[tuple[str, bool, float, str | None]]  # target, up, since, reason
    counters: list[tuple[str, str, int]]  # target, name, value
    origins: list[tuple[str, float | None]] = dataclasses.field(default_factory=list)
    window: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # target, id


def _marks(count: int) -> str:
    return ",".join("?" * count)


class OutboxStore:
    """One SQLite connection in WAL mode; `backlog` counts deliveries per target in memory."""

    def __init__(
        self, path: Path, *, synchronous: str = "full", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock  # its wall time stamps rows (created, failed_at, since)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(_SCHEMA)
        self._migrate()
        (self.ident,) = self.conn.execute(
            "SELECT value FROM meta WHERE name = 'outbox-id'"
        ).fetchone()
        self.backlog: dict[str, int] = {}
        self._full: set[str] = set()  # targets past backlog_limit (logged once per episode)
        # When each target went live here (None: before this was kept); see went_live.
        self.origins: dict[str, float | None] = dict(
            self.conn.execute("SELECT target, since FROM live_origins")
        )
        self._seen_version = -1  # PRAGMA data_version when the backlog was last counted
        self.recount()

    def _migrate(self) -> None:
        """Run the migrations this file has not had, in one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")  # the CLI may open the file of a running gateway
        try:
            (done,) = self.conn.execute("PRAGMA user_version").fetchone()
            for step in _MIGRATIONS[done:]:
                step(self.conn)
            if done < len(_MIGRATIONS):
                self.conn.execute(f"PRAGMA user_version = {len(_MIGRATIONS)}")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def recount(self) -> None:
        """Backlog counts from the database (at start, and after a failed commit)."""
        rows = self.conn.execute("SELECT target, COUNT(*) FROM deliveries GROUP BY target")
        self.backlog = {target: count for target, count in rows}
        (self._seen_version,) = self.conn.execute("PRAGMA data_version").fetchone()

    def recount_if_changed(self) -> None:
        """Count again if another connection committed (the CLI's replay or backfill)."""
        (version,) = self.conn.execute("PRAGMA data_version").fetchone()
        if version != self._seen_version:
            self.recount()

    def _bump(self, target: str, name: str, by: int) -> None:
        self.conn.execute(
            "INSERT INTO counters(target, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT(target, name) DO UPDATE SET value = value + excluded.value",
            (target, name, by),
        )

    # -- the write path -----------------------------------------------------------------

    def write_pending(
        self, items: Sequence[tuple[str, bytes, bytes | None]], version: str | None = None
    ) -> list[int]:
        """Record (id, statement bytes, packed attachment parts) before storage sees them."""
        return self._insert([(*item, version) for item in items], _PENDING)

    def _insert(
        self, items: Sequence[tuple[str, bytes, bytes | None, str | None]], state: int
    ) -> list[int]:
        """Statement rows (id, bytes, parts, version) in `state`, created now; their seqs."""
        now = self._clock.now()
        seqs = []
        for statement_id, body, attachments, version in items:
            cursor = self.conn.execute(
                "INSERT INTO statements(statement_id, body, attachments, version, state, "
                "created) VALUES (?, ?, ?, ?, ?, ?)",
                (statement_id, body, attachments, version, state, now),
            )
            assert cursor.lastrowid is not None
            seqs.append(cursor.lastrowid)
        return seqs

    def mark_ready(self, seqs: Sequence[int], targets: Sequence[tuple[str, int]]) -> None:
        """Storage accepted them: queue one delivery per (target, backlog_limit).

        Only rows still pending move: one the resolver settled meanwhile is not queued twice.
        Past a target's backlog_limit they are dead letters with the reason `backlog full`
        (permanent: the operator set the limit to decide by hand beyond it), never dropped.
        """
        if not seqs:
            return
        seqs = sorted(
            seq
            for (seq,) in self.conn.execute(
                f"UPDATE statements SET state = ? WHERE state = ? AND seq IN ({_marks(len(seqs))}) "
                "RETURNING seq",
                (_READY, _PENDING, *seqs),
            )
        )
        now = self._clock.now()
        for target, limit in targets:
            room = max(0, limit - self.backlog.get(target, 0))
            queued, overflow = seqs[:room], seqs[room:]
            inserted = self.conn.executemany(
                "INSERT OR IGNORE INTO deliveries(target, seq) VALUES (?, ?)",
                [(target, seq) for seq in queued],
            ).rowcount
            self.backlog[target] = self.backlog.get(target, 0) + max(inserted, 0)
            if overflow:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO dead_letters(target, seq, reason, transient, "
                    "failed_at) VALUES (?, ?, ?, 0, ?)",
                    [(target, seq, BACKLOG_FULL, now) for seq in overflow],
                )
                self._bump(target, "dead_letters", len(overflow))
                if target not in self._full:
                    self._full.add(target)
                    log.warning(
                        "forwarding to %s: backlog full (%d statements, its "
                        "backlog_limit): new statements go to its dead letters "
                        "(`lrs-gateway forwarding replay` once it has caught up)",
                        target,
                        limit,
                    )
            elif queued:
                self._full.discard(target)
        self._keep_live_ids(seqs, [target for target, _ in targets])

    def _keep_live_ids(self, seqs: Sequence[int], targets: Sequence[str]) -> None:
        """In a target's first LIVE_WINDOW seconds: keep the ids queued for it."""
        now = self._clock.now()
        opening = [
            t
            for t in targets
            if (since := self.origins.get(t)) is not None and now < since + LIVE_WINDOW
        ]
        if not opening or not seqs:
            return
        ids = [
            statement_id
            for (statement_id,) in self.conn.execute(
                f"SELECT statement_id FROM statements WHERE seq IN ({_marks(len(seqs))})", seqs
            )
        ]
        self.conn.executemany(
            "INSERT OR IGNORE INTO live_window(target, statement_id) VALUES (?, ?)",
            [(target, statement_id.lower()) for target in opening for statement_id in ids],
        )

    def went_live(self, targets: Sequence[str]) -> None:
        """These targets are forwarded to from now on: the first time is kept, per target."""
        now = self._clock.now()
        for target in targets:
            if target not in self.origins:
                self.conn.execute(
                    "INSERT OR IGNORE INTO live_origins(target, since) VALUES (?, ?)",
                    (target, now),
                )
                self.origins[target] = now

    def live_start(self, target: str) -> LiveStart:
        """When live forwarding to `target` began here, and the ids of its first moments."""
        row = self.conn.execute(
            "SELECT since FROM live_origins WHERE target = ?", (target,)
        ).fetchone()
        if row is None:
            return LiveStart(known=False, since=None, window_ids=frozenset())
        ids = frozenset(
            statement_id
            for (statement_id,) in self.conn.execute(
                "SELECT statement_id FROM live_window WHERE target = ?", (target,)
            )
        )
        return LiveStart(known=True, since=row[0], window_ids=ids)

    def drop(self, seqs: Sequence[int]) -> None:
        """Storage refused them: forget them (only while still pending)."""
        if seqs:
            self.conn.execute(
                f"DELETE FROM statements WHERE state = ? AND seq IN ({_marks(len(seqs))})",
                (_PENDING, *seqs),
            )

    def pending(self, created_before: float, limit: int = 500) -> list[tuple[int, str]]:
        """Pending statements older than a moment: (seq, statement id), to resolve."""
        return list(
            self.conn.execute(
                "SELECT seq, statement_id FROM statements WHERE state = ? AND created < ? "
                "ORDER BY created LIMIT ?",
                (_PENDING, created_before, limit),
            )
        )

    # -- the delivery path --------------------------------------------------------------

    def claim(self, target: str, limit: int) -> list[Claimed]:
        """The oldest deliveries for `target`.

        The worker paces itself (backoff, probes of a down target) and sends in order, so
        `next_attempt` is only a record here: after a restart, everything is due at once.
        """
        rows = self.conn.execute(
            "SELECT d.seq, s.body, d.attempts, s.attachments, s.version FROM deliveries d "
            "JOIN statements s ON s.seq = d.seq WHERE d.target = ? "
            "ORDER BY d.seq LIMIT ?",
            (target, limit),
        )
        return [
            Claimed(seq, bytes(body), attempts, None if parts is None else bytes(parts), version)
            for seq, body, attempts, parts, version in rows
        ]

    def ack(self, target: str, seqs: Sequence[int], *, counter: str = "delivered") -> None:
        """Done with them: delivered, or not sent (`counter` says why)."""
        deleted = self.conn.execute(
            f"DELETE FROM deliveries WHERE target = ? AND seq IN ({_marks(len(seqs))})",
            (target, *seqs),
        ).rowcount
        self.backlog[target] = self.backlog.get(target, 0) - deleted
        self._bump(target, counter, deleted)

    def count(self, counter: str, counts: Sequence[tuple[str, int]]) -> None:
        """Add to each target's `counter`."""
        for target, count in counts:
            if count:
                self._bump(target, counter, count)

    def retry(self, target: str, seqs: Sequence[int], next_attempt: float, error: str) -> None:
        """A transient failure: try again at `next_attempt`."""
        self.conn.execute(
            "UPDATE deliveries SET attempts = attempts + 1, next_attempt = ?, last_error = ? "
            f"WHERE target = ? AND seq IN ({_marks(len(seqs))})",
            (next_attempt, error, target, *seqs),
        )
        self._bump(target, "retries", len(seqs))

    def dead_letter(self, target: str, seqs: Sequence[int], reason: str) -> None:
        """Give up on these deliveries for a permanent reason (they stay replayable)."""
        deleted = self.conn.execute(
            f"DELETE FROM deliveries WHERE target = ? AND seq IN ({_marks(len(seqs))})",
            (target, *seqs),
        ).rowcount
        self.backlog[target] = self.backlog.get(target, 0) - deleted
        now = self._clock.now()
        self.conn.executemany(
            "INSERT OR REPLACE INTO dead_letters(target, seq, reason, transient, failed_at) "
            "VALUES (?, ?, ?, 0, ?)",
            [(target, seq, reason, now) for seq in seqs],
        )
        self._bump(target, "dead_letters", len(seqs))

    def set_state(self, target: str, state: TargetState) -> None:
        """Record that `target` went down or came back."""
        self.conn.execute(
            "INSERT OR REPLACE INTO target_states(target, up, since, reason) VALUES (?, ?, ?, ?)",
            (target, int(state.up), state.since or self._clock.now(), state.reason),
        )

    def target_state(self, target: str) -> TargetState:
        """Whether `target` was last seen up (a target never seen down is up)."""
        row = self.conn.execute(
            "SELECT up, since, reason FROM target_states WHERE target = ?", (target,)
        ).fetchone()
        return TargetState() if row is None else TargetState(bool(row[0]), row[1], row[2])

    def requeue(
        self, target: str, *, transient_only: bool, limit: int | None = None, attempts: int = 0
    ) -> int:
        """Move dead letters of `target` back into its queue; how many moved."""
        query = "SELECT seq FROM dead_letters WHERE target = ?"
        if transient_only:
            query += " AND transient = 1"
        query += " ORDER BY seq" + (f" LIMIT {int(limit)}" if limit is not None else "")
        seqs = [seq for (seq,) in self.conn.execute(query, (target,))]
        if not seqs:
            return 0
        self.conn.executemany(
            "INSERT OR IGNORE INTO deliveries(target, seq, attempts, next_attempt) "
            "VALUES (?, ?, ?, 0)",
            [(target, seq, attempts) for seq in seqs],
        )
        self.conn.execute(
            f"DELETE FROM dead_letters WHERE target = ? AND seq IN ({_marks(len(seqs))})",
            (target, *seqs),
        )
        self.backlog[target] = self.backlog.get(target, 0) + len(seqs)
        return len(seqs)

    def replay_dead_letters(
        self, target: str, on_progress: Callable[[int], None] | None = None
    ) -> int:
        """Re-queue every dead letter of `target`, a chunk per transaction; how many moved.

        For a connection of its own (the CLI beside a running gateway): the gateway's
        deliveries go on between chunks. The gateway itself goes through its group commit.
        """
        moved = 0
        while True:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                count = self.requeue(target, transient_only=False, limit=REPLAY_CHUNK)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            if not count:
                return moved
            moved += count
            if on_progress is not None:
                on_progress(moved)

    def owed(self) -> OutboxRows:
        """Every statement still pending, owed to a target or dead-lettered, with its rows."""
        statements = [
            (
                seq,
                statement_id,
                bytes(body),
                None if parts is None else bytes(parts),
                version,
                state,
                created,
            )
            for seq, statement_id, body, parts, version, state, created in self.conn.execute(
                "SELECT seq, statement_id, body, attachments, version, state, created "
                "FROM statements s WHERE state = ? OR EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.seq = s.seq) OR EXISTS "
                "(SELECT 1 FROM dead_letters x WHERE x.seq = s.seq) ORDER BY seq",
                (_PENDING,),
            )
        ]
        return OutboxRows(
            statements=statements,
            deliveries=list(
                self.conn.execute(
                    "SELECT target, seq, attempts, next_attempt, last_error FROM deliveries "
                    "ORDER BY target, seq"
                )
            ),
            dead_letters=[
                (target, seq, reason, bool(transient), failed_at)
                for target, seq, reason, transient, failed_at in self.conn.execute(
                    "SELECT target, seq, reason, transient, failed_at FROM dead_letters"
                )
            ],
            states=[
                (target, bool(up), since, reason)
                for target, up, since, reason in self.conn.execute(
                    "SELECT target, up, since, reason FROM target_states"
                )
            ],
            counters=list(self.conn.execute("SELECT target, name, value FROM counters")),
            # When each target went live: a backfill's boundary, wherever the rows go.
            origins=list(self.conn.execute("SELECT target, since FROM live_origins")),
            window=list(self.conn.execute("SELECT target, statement_id FROM live_window")),
        )

    def forget(self, rows: OutboxRows) -> None:
        """Delete what `owed` returned (moved elsewhere): nothing here sends it any more."""
        seqs = [row[0] for row in rows.statements]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for chunk in range(0, len(seqs), 500):
                part = seqs[chunk : chunk + 500]
                for table in ("deliveries", "dead_letters", "statements"):
                    self.conn.execute(
                        f"DELETE FROM {table} WHERE seq IN ({_marks(len(part))})",
                        part,
                    )
            self.conn.execute("DELETE FROM target_states")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.recount()

    def collect_garbage(self) -> int:
        """Delete statements no delivery or dead letter needs any more."""
        return self.conn.execute(
            "DELETE FROM statements WHERE state = ? AND NOT EXISTS "
            "(SELECT 1 FROM deliveries d WHERE d.seq = statements.seq) AND NOT EXISTS "
            "(SELECT 1 FROM dead_letters x WHERE x.seq = statements.seq)",
            (_READY,),
        ).rowcount

    # -- backfills ----------------------------------------------------------------------

    def backfill(self, target: str) -> BackfillState | None:
        """`target`'s backfill, running or done (None: never backfilled here)."""
        row = self.conn.execute(
            f"SELECT {BACKFILL_COLUMNS} FROM backfills WHERE target = ?", (target,)
        ).fetchone()
        return None if row is None else backfill_of(row)

    def backfills(self) -> dict[str, BackfillState]:
        """Every target's backfill."""
        rows = self.conn.execute(f"SELECT {BACKFILL_COLUMNS} FROM backfills ORDER BY target")
        return {row[0]: backfill_of(row) for row in rows}

    def claim_backfill(
        self,
        target: str,
        holder: str,
        since: str | None,
        until: str,
        *,
        stale_after: float,
        restart: bool = False,
    ) -> BackfillState:
        """Hold `target`'s backfill for `holder`: an interrupted one resumes, else a new one.

        Raises BackfillBusy while another holder's heartbeat is younger than `stale_after`.
        A running backfill keeps its own range unless `restart`; a done one is replaced.
        """
        now = self._clock.now()
        found = self.backfill(target)
        if (
            found is not None
            and found.state == "running"
            and found.holder != holder
            and now - found.updated_at < stale_after
        ):
            raise BackfillBusy(target)
        if found is not None and found.state == "running" and not restart:
            self.conn.execute(
                "UPDATE backfills SET holder = ?, updated_at = ? WHERE target = ?",
                (holder, now, target),
            )
            return replace(found, holder=holder, updated_at=now)
        self.conn.execute(
            f"INSERT OR REPLACE INTO backfills ({BACKFILL_COLUMNS}) "
            "VALUES (?, ?, ?, NULL, '[]', NULL, 0, 0, 'running', ?, ?, NULL, ?)",
            (target, since, until, now, now, holder),
        )
        found = self.backfill(target)
        assert found is not None
        return found

    def backfill_page(
        self,
        target: str,
        holder: str,
        items: Sequence[tuple[str, bytes, bytes | None, str | None]],
        progress: BackfillState,
    ) -> bool:
        """Queue a page of history for `target` and move the cursor, both or neither.

        `items`: (id, statement bytes, packed attachment parts, version), in stored order;
        `progress`: the backfill as it stands after them. False: `holder` lost the backfill
        (another run took over an interrupted one): nothing was queued.
        """
        if not self._holds(target, holder):
            return False
        now = self._clock.now()
        seqs = self._insert(items, _READY)
        self.conn.executemany(
            "INSERT INTO deliveries(target, seq) VALUES (?, ?)", [(target, seq) for seq in seqs]
        )
        self.backlog[target] = self.backlog.get(target, 0) + len(seqs)
        if seqs:
            self._bump(target, "backfilled", len(seqs))
        self.conn.execute(
            "UPDATE backfills SET cursor = ?, tie_ids = ?, first = ?, queued = ?, skipped = ?, "
            "updated_at = ? WHERE target = ?",
            (
                progress.cursor,
                json.dumps(list(progress.tie_ids)),
                progress.first,
                progress.queued,
                progress.skipped,
                now,
                target,
            ),
        )
        return True

    def beat_backfill(self, target: str, holder: str) -> bool:
        """Still at it (waiting for room): False once another run holds the backfill."""
        if not self._holds(target, holder):
            return False
        self.conn.execute(
            "UPDATE backfills SET updated_at = ? WHERE target = ?", (self._clock.now(), target)
        )
        return True

    def finish_backfill(self, target: str, holder: str) -> bool:
        """Every statement of the range is queued: the backfill is done."""
        if not self._holds(target, holder):
            return False
        now = self._clock.now()
        self.conn.execute(
            "UPDATE backfills SET state = 'done', updated_at = ?, finished_at = ?, holder = NULL "
            "WHERE target = ?",
            (now, now, target),
        )
        return True

    def _holds(self, target: str, holder: str) -> bool:
        row = self.conn.execute(
            "SELECT holder FROM backfills WHERE target = ? AND state = 'running'", (target,)
        ).fetchone()
        return row is not None and row[0] == holder

    def backlog_of(self, target: str) -> int:
        """Deliveries queued for `target`, counted in the database (any process's)."""
        (count,) = self.conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE target = ?", (target,)
        ).fetchone()
        return int(count)

    # -- operating it -------------------------------------------------------------------

    def targets(self) -> list[str]:
        """Every target the database knows of."""
        rows = self.conn.execute(
            "SELECT target FROM deliveries UNION SELECT target FROM dead_letters "
            "UNION SELECT target FROM counters UNION SELECT target FROM target_states "
            "UNION SELECT target FROM backfills"
        )
        return sorted(target for (target,) in rows)

    def stats(self, targets: Iterable[str]) -> dict[str, TargetStats]:
        """Per target: backlog, age of the oldest undelivered statement, totals."""
        now = self._clock.now()
        self.recount_if_changed()
        backfills = self.backfills()
        result = {}
        for target in targets:
            counters = dict(
                self.conn.execute("SELECT name, value FROM counters WHERE target = ?", (target,))
            )
            row = self.conn.execute(
                "SELECT s.created FROM deliveries d JOIN statements s ON s.seq = d.seq "
                "WHERE d.target = ? ORDER BY d.seq LIMIT 1",
                (target,),
            ).fetchone()
            (dead,) = self.conn.execute(
                "SELECT COUNT(*) FROM dead_letters WHERE target = ?", (target,)
            ).fetchone()
            state = self.target_state(target)
            result[target] = TargetStats(
                state="up" if state.up else "down",
                up=state.up,
                backlog=self.backlog.get(target, 0),
                oldest_age=None if row is None else max(0.0, now - row[0]),
                delivered=counters.get("delivered", 0),
                retries=counters.get("retries", 0),
                dead_letters=dead,
                dead_lettered_total=counters.get("dead_letters", 0),
                down_since=None if state.up else state.since,
                last_error=None if state.up else state.reason,
                filtered=counters.get("filtered", 0),
                skipped_signed=counters.get("skipped_signed", 0),
                signature_stripped=counters.get("signature_stripped", 0),
                backfilled=counters.get("backfilled", 0),
                backfill=None if target not in backfills else backfills[target].shown(),
            )
        return result
