"""Forwarding figures for Prometheus, read from the forwarder's snapshot at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.forwarding.forwarder import Forwarder

__all__ = ["ForwardingCollector"]


class ForwardingCollector(Collector):
    """Up/down, backlog, lag and totals per target; no database work during a scrape."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        """Yield the families (labels: target name only)."""
        snapshot = self._forwarder.snapshot
        backlog = self._forwarder.outbox.backlog
        failed = self._forwarder.failed()
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "up": GaugeMetricFamily(
                "lrs_gateway_forwarding_target_up",
                "1 while a target answers, 0 once retries are exhausted (it is probed slowly)",
                labels=["target"]),
            "backlog": GaugeMetricFamily(
                "lrs_gateway_forwarding_backlog", "Statements waiting for a target",
                labels=["target"]),
            "lag": GaugeMetricFamily(
                "lrs_gateway_forwarding_lag_seconds",
                "Age of the oldest statement a target has not received", labels=["target"]),
            "dead": GaugeMetricFamily(
                "lrs_gateway_forwarding_dead_letters",
                "Statements in a target's dead letters (refused for a permanent reason)",
                labels=["target"]),
            "delivered": CounterMetricFamily(
                "lrs_gateway_forwarding_delivered", "Statements delivered", labels=["target"]),
            "retried": CounterMetricFamily(
                "lrs_gateway_forwarding_retried", "Statement deliveries retried",
                labels=["target"]),
            "dead_total": CounterMetricFamily(
                "lrs_gateway_forwarding_dead_lettered",
                "Statements ever dead-lettered (permanent reasons only)", labels=["target"]),
            "failed": CounterMetricFamily(
                "lrs_gateway_forwarding_failed",
                "Sends to a target that failed (since start)", labels=["target"]),
        }
        # The workers know now; the snapshot (2 s old at most) knows targets without one.
        up = {name: stats.up for name, stats in snapshot.items()} | self._forwarder.target_up()
        for name, value in up.items():
            families["up"].add_metric([name], 1.0 if value else 0.0)
        for name, stats in snapshot.items():
            families["backlog"].add_metric([name], backlog.get(name, stats.backlog))
            families["lag"].add_metric([name], stats.oldest_age or 0.0)
            families["dead"].add_metric([name], stats.dead_letters)
            families["delivered"].add_metric([name], stats.delivered)
            families["retried"].add_metric([name], stats.retries)
            families["dead_total"].add_metric([name], stats.dead_lettered_total)
        for name, count in failed.items():
            families["failed"].add_metric([name], count)
        yield from families.values()
