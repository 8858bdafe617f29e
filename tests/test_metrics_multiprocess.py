"""The parts of metrics across workers: published totals and every outbox read at once."""

from __future__ import annotations

import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.forwarding.forwarder import OUTBOX_FILE
from gateway.forwarding.metrics import OutboxesCollector
from gateway.forwarding.store import OutboxStore, TargetState
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
