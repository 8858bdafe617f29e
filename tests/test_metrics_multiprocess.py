"""The parts of metrics across workers: published totals and every outbox read at once."""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.clock import ManualClock
from gateway.forwarding.forwarder import OUTBOX_FILE, Forwarder
from gateway.forwarding.metrics import ForwardingCollector, OutboxesCollector
from gateway.forwarding.store import BACKFILL_STALE, OutboxStore, TargetState
from gateway.http.metrics import Cumulative, Metrics, auth_figures

Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def figures(registry: CollectorRegistry) -> Figures:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_published_total_only_grows_even_when_its_source_starts_again() -> None:
    registry = CollectorRegistry()
    counter = Counter("lookups", "lookups", ["result"], registry=registry)
    totals: dict[tuple[str, ...], float] = {("hit",): 0.0, ("miss",): 0.0}
    cumulative = Cumulative(counter, lambda: dict(totals))
    cumulative.publish()
    assert figures(registry)[("lookups_total", (("result", "hit"),))] == 0  # shown from 0
    totals[("hit",)] = 5
    cumulative.publish()
    cumulative.publish()  # nothing new: nothing added
    assert figures(registry)[("lookups_total", (("result", "hit"),))] == 5
    totals[("hit",)] = 2  # the cache was cleared (a credentials reload): 2 since then
    cumulative.publish()
    assert figures(registry)[("lookups_total", (("result", "hit"),))] == 7


class CachingBackend:
    def __init__(self) -> None:
        self.hits, self.misses = 0, 0

    def cache_figures(self) -> tuple[str, int, int]:
        return "basic", self.hits, self.misses


async def test_auth_cache_figures_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    backend = CachingBackend()
    for cumulative in auth_figures(metrics, [backend, object()]):
        metrics.add_cumulative(cumulative)
    backend.hits, backend.misses = 3, 1
    response = await metrics.exposition()
    text = response.text or ""
    assert 'lrs_gateway_auth_cache_lookups_total{result="hit",scheme="basic"} 3.0' in text
    assert 'lrs_gateway_auth_cache_lookups_total{result="miss",scheme="basic"} 1.0' in text
    assert "lrs_gateway_jwks_refreshes" not in text  # no OIDC backend
    assert 'lrs_gateway_build_info{version="' in text


def outbox(directory: Path, delivered: int, owed: int, *, down: bool = False) -> None:
    store = OutboxStore(directory / OUTBOX_FILE)
    try:
        items = [(str(uuid.uuid4()), b"{}", None) for _ in range(delivered + owed)]
        seqs = store.write_pending(items)
        store.mark_ready(seqs, [("t", 1000)])
        if delivered:
            store.ack("t", seqs[:delivered])
        if down:
            store.set_state("t", TargetState(up=False, since=1.0, reason="refused"))
    finally:
        store.close()


def test_every_outbox_adds_up_and_a_target_is_up_only_if_no_worker_has_it_down(
    tmp_path: Path,
) -> None:
    outbox(tmp_path, delivered=3, owed=1)
    outbox(tmp_path / "worker-1", delivered=4, owed=2, down=True)
    paths = [
        tmp_path / OUTBOX_FILE,
        tmp_path / "worker-1" / OUTBOX_FILE,
        tmp_path / "worker-2" / OUTBOX_FILE,
    ]  # never made: nothing, and not made now
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxesCollector(lambda: paths, ["t", "idle"]))
    found = figures(registry)
    # The workers' outboxes added up are one gateway's: named by worker 0's outbox id.
    store = OutboxStore(tmp_path / OUTBOX_FILE)
    ident = store.ident
    store.close()
    target = (("outbox", ident), ("target", "t"))
    assert found[("lrs_gateway_forwarding_delivered_total", target)] == 7
    assert found[("lrs_gateway_forwarding_backlog", target)] == 3
    assert found[("lrs_gateway_forwarding_target_up", (("target", "t"),))] == 0
    assert found[("lrs_gateway_forwarding_lag_seconds", target)] >= 0
    idle = (("target", "idle"),)  # configured, never sent to: shown, up, at 0
    assert found[("lrs_gateway_forwarding_target_up", idle)] == 1
    assert found[("lrs_gateway_forwarding_delivered_total", (("outbox", ident), *idle))] == 0
    assert not (tmp_path / "worker-2").exists()


# -- backfills: counted, their progress, running or not --------------------------------------

SINCE, UNTIL = "2024-01-01T00:00:00+00:00", "2024-01-11T00:00:00+00:00"  # ten days of history
BACKFILL_FAMILIES = {
    "lrs_gateway_forwarding_backfilled": "counter",
    "lrs_gateway_forwarding_backfill_progress": "gauge",
    "lrs_gateway_forwarding_backfill_running": "gauge",
}


def backfill(
    store: OutboxStore, target: str, count: int, cursor: str, *, done: bool = False
) -> None:
    """A backfill of `target` that queued `count` statements up to `cursor` (then finished)."""
    holder = uuid.uuid4().hex
    claimed = store.claim_backfill(target, holder, SINCE, UNTIL, stale_after=BACKFILL_STALE)
    items = [(str(uuid.uuid4()), b"{}", None, None) for _ in range(count)]
    progress = replace(claimed, cursor=cursor, first=SINCE, queued=count, skipped=1)
    assert store.backfill_page(target, holder, items, progress)
    if done:
        assert store.finish_backfill(target, holder)


def backfilled_outbox(path: Path) -> str:
    """Targets `running` (a quarter through), `stale` (half through, silent for two minutes),
    `done` and `plain` (never backfilled): the outbox's id."""
    clock = ManualClock(start=time.time() - 2 * BACKFILL_STALE)
    store = OutboxStore(path, clock=clock)
    try:
        backfill(store, "stale", 4, "2024-01-06T00:00:00+00:00")
        clock.advance(2 * BACKFILL_STALE)  # now
        backfill(store, "running", 3, "2024-01-03T12:00:00+00:00")
        backfill(store, "done", 2, "2024-01-11T00:00:00+00:00", done=True)
        seqs = store.write_pending([(str(uuid.uuid4()), b"{}", None)])
        store.mark_ready(seqs, [("plain", 1000)])
        return str(store.ident)
    finally:
        store.close()


def assert_backfill_figures(text: str, outbox: str) -> None:
    """The figures of `backfilled_outbox`, as exposed (checked with Prometheus' parser)."""
    found: Figures = {}
    for family in text_string_to_metric_families(text):
        if family.name in BACKFILL_FAMILIES:
            assert family.type == BACKFILL_FAMILIES[family.name], family.name
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, target: str) -> float | None:
        return found.get((name, (("outbox", outbox), ("target", target))))

    queued = {"running": 3, "stale": 4, "done": 2, "plain": 0}
    for target, count in queued.items():
        assert value("lrs_gateway_forwarding_backfilled_total", target) == count, target
    progress = "lrs_gateway_forwarding_backfill_progress"
    assert value(progress, "running") == 0.25
    assert value(progress, "stale") == 0.5
    assert value(progress, "done") == 1.0
    running = "lrs_gateway_forwarding_backfill_running"
    assert value(running, "running") == 1.0
    assert value(running, "stale") == 0.0  # interrupted: no page for longer than BACKFILL_STALE
    assert value(running, "done") == 0.0
    for name in (progress, running):  # only targets with a backfill
        assert value(name, "plain") is None
        assert not [key for key in found if key[0] == name and ("target", "plain") in key[1]]


def test_the_outboxes_collector_reports_backfills(tmp_path: Path) -> None:
    # Worker 1 holds the backfills; worker 0's outbox (whose id names them all) has none.
    ident = backfilled_outbox(tmp_path / "worker-1" / OUTBOX_FILE)
    store = OutboxStore(tmp_path / OUTBOX_FILE)
    zero = store.ident
    store.close()
    assert zero != ident
    paths = [tmp_path / OUTBOX_FILE, tmp_path / "worker-1" / OUTBOX_FILE]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxesCollector(lambda: paths, ["running", "stale", "done", "plain"]))
    assert_backfill_figures(generate_latest(registry).decode(), zero)


def test_the_forwarding_collector_reports_backfills(tmp_path: Path) -> None:
    ident = backfilled_outbox(tmp_path / OUTBOX_FILE)
    store = OutboxStore(tmp_path / OUTBOX_FILE)
    try:
        snapshot = store.stats(["running", "stale", "done", "plain"])
    finally:
        store.close()
    forwarder = SimpleNamespace(
        target_names=list(snapshot),
        snapshot=snapshot,
        outbox=SimpleNamespace(ident=ident, backlog={}),
        failed=dict,
        target_up=dict,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ForwardingCollector([cast(Forwarder, forwarder)]))
    assert_backfill_figures(generate_latest(registry).decode(), ident)


def test_an_outbox_from_before_backfills_still_counts(tmp_path: Path) -> None:
    """A file an older version made: no `backfills` table, no `backfilled` counter."""
    outbox(tmp_path, delivered=2, owed=1)
    conn = sqlite3.connect(tmp_path / OUTBOX_FILE)
    with conn:
        conn.execute("DROP TABLE backfills")
    conn.close()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxesCollector(lambda: [tmp_path / OUTBOX_FILE], ["t"]))
    found = figures(registry)
    delivered = [v for (n, _), v in found.items() if n == "lrs_gateway_forwarding_delivered_total"]
    backfilled = [
        v for (n, _), v in found.items() if n == "lrs_gateway_forwarding_backfilled_total"
    ]
    assert delivered == [2]
    assert backfilled == [0]
    assert not [n for n, _ in found if "backfill_" in n]
