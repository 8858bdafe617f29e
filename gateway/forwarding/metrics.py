"""Forwarding figures for Prometheus: from the forwarder's snapshot, or from every outbox.

One process reads its forwarder's snapshot. Several workers each forward from an outbox of
their own; their scrapes read every outbox file instead, whose per-target counters are
durable, so the totals are the whole gateway's and never go down when a worker restarts.

The outbox's figures carry its id (label `outbox`): replicas sharing one outbox (PostgreSQL)
each report the same figures under the same id, replicas with their own (SQLite) under
theirs, so `sum by (target) (max by (target, outbox) (...))` adds up either way.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.failurelog import FailureLog
from gateway.forwarding.forwarder import Forwarder
from gateway.forwarding.store import BACKFILL_COLUMNS, BackfillState, TargetStats, backfill_of

__all__ = ["ForwardingCollector", "OutboxesCollector"]

log = logging.getLogger(__name__)

_Families = dict[str, GaugeMetricFamily | CounterMetricFamily]


_OUTBOX_LABELS = ["target", "outbox"]


def _families() -> _Families:
    return {
        "up": GaugeMetricFamily(
            "lrs_gateway_forwarding_target_up",
            "1 while a target answers, 0 once retries are exhausted (it is probed slowly)",
            labels=["target"],
        ),
        "backlog": GaugeMetricFamily(
            "lrs_gateway_forwarding_backlog",
            "Statements waiting for a target",
            labels=_OUTBOX_LABELS,
        ),
        "lag": GaugeMetricFamily(
            "lrs_gateway_forwarding_lag_seconds",
            "Age of the oldest statement a target has not received",
            labels=_OUTBOX_LABELS,
        ),
        "dead": GaugeMetricFamily(
            "lrs_gateway_forwarding_dead_letters",
            "Statements in a target's dead letters (refused for a permanent reason)",
            labels=_OUTBOX_LABELS,
        ),
        "delivered": CounterMetricFamily(
            "lrs_gateway_forwarding_delivered", "Statements delivered", labels=_OUTBOX_LABELS
        ),
        "retried": CounterMetricFamily(
            "lrs_gateway_forwarding_retried", "Statement deliveries retried", labels=_OUTBOX_LABELS
        ),
        "dead_total": CounterMetricFamily(
            "lrs_gateway_forwarding_dead_lettered",
            "Statements ever dead-lettered (permanent reasons only)",
            labels=_OUTBOX_LABELS,
        ),
        "filtered": CounterMetricFamily(
            "lrs_gateway_forwarding_filtered",
            "Statements a target's filter kept from it",
            labels=_OUTBOX_LABELS,
        ),
        "skipped_signed": CounterMetricFamily(
            "lrs_gateway_forwarding_signed_skipped",
            "Signed statements a pseudonymising target did not get (signed: skip)",
            labels=_OUTBOX_LABELS,
        ),
        "signature_stripped": CounterMetricFamily(
            "lrs_gateway_forwarding_signature_stripped",
            "Signed statements a pseudonymising target got without their signature",
            labels=_OUTBOX_LABELS,
        ),
        "backfilled": CounterMetricFamily(
            "lrs_gateway_forwarding_backfilled",
            "Statements a backfill queued for a target (from storage's history)",
            labels=_OUTBOX_LABELS,
        ),
        "backfill_progress": GaugeMetricFamily(
            "lrs_gateway_forwarding_backfill_progress",
            "How far a target's backfill is, 0 to 1 (1 once done; targets with one only)",
            labels=_OUTBOX_LABELS,
        ),
        "backfill_running": GaugeMetricFamily(
            "lrs_gateway_forwarding_backfill_running",
            "1 while a target's backfill runs, 0 once done or interrupted (targets with one only)",
            labels=_OUTBOX_LABELS,
        ),
    }


def _add_backfill(
    families: _Families, labels: list[str], backfill: BackfillState | None, now: float
) -> None:
    """A target's backfill, if it has one: progress, and running unless done or stale."""
    if backfill is None:
        return
    running = backfill.status(now) == "running"
    families["backfill_progress"].add_metric(labels, backfill.fraction)
    families["backfill_running"].add_metric(labels, 1.0 if running else 0.0)


class ForwardingCollector(Collector):
    """One process: up/down, backlog, lag and totals per target; no database work.

    With tenants, one forwarder each: a target is reported once, by the forwarder whose
    tenant has it (a shared outbox tells every forwarder about every target).
    """

    def __init__(self, forwarders: Sequence[Forwarder], *, failed: bool = True) -> None:
        self._forwarders = list(forwarders)
        self._failed = failed  # False: the process-wide sum of every worker's reports it

    def collect(self) -> Iterator[Metric]:
        """Yield the families (labels: target name only)."""
        families = _families()
        failed_family = CounterMetricFamily(
            "lrs_gateway_forwarding_failed",
            "Sends to a target that failed (since start)",
            labels=["target"],
        )
        reported: set[str] = set()
        for owned in (True, False):
            for forwarder in self._forwarders:
                mine = set(forwarder.target_names)
                snapshot = {
                    name: stats
                    for name, stats in forwarder.snapshot.items()
                    if (name in mine) == owned and name not in reported
                }
                reported.update(snapshot)
                self._add(families, forwarder, snapshot, owned)
        for forwarder in self._forwarders:
            for name, count in forwarder.failed().items():
                failed_family.add_metric([name], count)
        if self._failed:
            families["failed"] = failed_family
        yield from families.values()

    @staticmethod
    def _add(
        families: _Families, forwarder: Forwarder, snapshot: dict[str, TargetStats], owned: bool
    ) -> None:
        backlog = forwarder.outbox.backlog
        # The workers know now; the snapshot (2 s old at most) knows targets without one.
        up = {name: stats.up for name, stats in snapshot.items()}
        if owned:
            up |= forwarder.target_up()
        for name, value in up.items():
            families["up"].add_metric([name], 1.0 if value else 0.0)
        outbox = forwarder.outbox.ident
        now = time.time()
        for name, stats in snapshot.items():
            labels = [name, outbox]
            families["backlog"].add_metric(labels, backlog.get(name, stats.backlog))
            families["lag"].add_metric(labels, stats.oldest_age or 0.0)
            families["dead"].add_metric(labels, stats.dead_letters)
            families["delivered"].add_metric(labels, stats.delivered)
            families["retried"].add_metric(labels, stats.retries)
            families["dead_total"].add_metric(labels, stats.dead_lettered_total)
            families["filtered"].add_metric(labels, stats.filtered)
            families["skipped_signed"].add_metric(labels, stats.skipped_signed)
            families["signature_stripped"].add_metric(labels, stats.signature_stripped)
            families["backfilled"].add_metric(labels, stats.backfilled)
            _add_backfill(families, labels, stats.backfill, now)


@dataclass
class _Outbox:
    """What one outbox file says, per target."""

    ident: str = ""  # its outbox id ("" in a file an older version made and none opened since)
    down: set[str] = field(default_factory=set)
    backlog: dict[str, int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)  # Unix time of the oldest owed
    dead: dict[str, int] = field(default_factory=dict)
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    backfills: dict[str, BackfillState] = field(default_factory=dict)

    def targets(self) -> set[str]:
        """Every target this file knows of."""
        return (
            self.down
            | self.backlog.keys()
            | self.dead.keys()
            | {target for target, _ in self.counters}
            | self.backfills.keys()
        )


def _read_outbox(path: Path) -> _Outbox:
    """One outbox's figures in one read transaction (never creates or changes the file)."""
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=5.0, isolation_level=None
    )
    try:
        conn.execute("BEGIN")  # one snapshot of the file
        found = _Outbox(
            ident=_ident(conn),
            down={t for (t,) in conn.execute("SELECT target FROM target_states WHERE up = 0")},
            backlog=dict(conn.execute("SELECT target, COUNT(*) FROM deliveries GROUP BY target")),
            dead=dict(conn.execute("SELECT target, COUNT(*) FROM dead_letters GROUP BY target")),
            counters={
                (t, n): v for t, n, v in conn.execute("SELECT target, name, value FROM counters")
            },
            backfills=_backfills(conn),
        )
        for target in found.backlog:
            row = conn.execute(
                "SELECT s.created FROM deliveries d JOIN statements s ON s.seq = d.seq "
                "WHERE d.target = ? ORDER BY d.seq LIMIT 1",
                (target,),
            ).fetchone()
            if row is not None:
                found.oldest[target] = row[0]
        conn.execute("COMMIT")
        return found
    finally:
        conn.close()


def _ident(conn: sqlite3.Connection) -> str:
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = 'outbox-id'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        return ""
    return "" if row is None else str(row[0])


_BACKFILLS = f"SELECT {BACKFILL_COLUMNS} FROM backfills"  # noqa: S608  (constants only)


def _backfills(conn: sqlite3.Connection) -> dict[str, BackfillState]:
    try:
        return {row[0]: backfill_of(row) for row in conn.execute(_BACKFILLS)}
    except sqlite3.OperationalError as exc:  # a file an older version made: no backfills
        if "no such table" not in str(exc):
            raise
        return {}


def _latest(backfills: Sequence[BackfillState]) -> BackfillState | None:
    """A target's backfill: it lives in one outbox (the latest updated, should there be more)."""
    return max(backfills, key=lambda b: b.updated_at, default=None)


class OutboxesCollector(Collector):
    """Several workers: every outbox file read at scrape time (call it off the event loop).

    Counts add up, the lag is the largest, a target is up only if no outbox has it down;
    a target's backfill is in one outbox.
    """

    def __init__(self, outboxes: Callable[[], Sequence[Path]], names: Sequence[str]) -> None:
        self._outboxes = outboxes  # every outbox file there may be, now
        self._names = list(names)  # configured targets: shown first, even with no figures
        self._last: dict[Path, _Outbox] = {}
        self._failing = FailureLog(log, "metrics: reading an outbox")

    def _read(self, path: Path) -> _Outbox | None:
        try:
            self._last[path] = _read_outbox(path)
        except sqlite3.Error as exc:
            # Its last figures (never more than now), not a drop; a file a worker is
            # making right now (no tables yet) holds nothing to count.
            if "no such table" not in str(exc):
                self._failing.failed(exc)
        return self._last.get(path)

    def collect(self) -> Iterator[Metric]:
        """Yield the families (labels: target name only)."""
        outboxes = [
            o for o in (self._read(p) for p in self._outboxes() if p.exists()) if o is not None
        ]
        names = [
            *self._names,
            *sorted({t for o in outboxes for t in o.targets()} - set(self._names)),
        ]
        families = _families()
        now = time.time()
        # The workers' outboxes added up are the gateway's: worker 0's id (the first) names them.
        outbox = next((o.ident for o in outboxes if o.ident), "")
        for name in names:
            labels = [name, outbox]
            oldest = [o.oldest[name] for o in outboxes if name in o.oldest]
            families["up"].add_metric([name], 0.0 if any(name in o.down for o in outboxes) else 1.0)
            families["backlog"].add_metric(labels, sum(o.backlog.get(name, 0) for o in outboxes))
            families["lag"].add_metric(labels, max(0.0, now - min(oldest)) if oldest else 0.0)
            families["dead"].add_metric(labels, sum(o.dead.get(name, 0) for o in outboxes))
            for family, counter in (
                ("delivered", "delivered"),
                ("retried", "retries"),
                ("dead_total", "dead_letters"),
                ("filtered", "filtered"),
                ("skipped_signed", "skipped_signed"),
                ("signature_stripped", "signature_stripped"),
                ("backfilled", "backfilled"),
            ):
                families[family].add_metric(
                    labels, sum(o.counters.get((name, counter), 0) for o in outboxes)
                )
            backfill = _latest([o.backfills[name] for o in outboxes if name in o.backfills])
            _add_backfill(families, labels, backfill, now)
        yield from families.values()
