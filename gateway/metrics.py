"""Prometheus metrics on a registry injected into the app (never the global one)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from gateway import __version__

__all__ = ["AuthCollector", "Metrics", "metrics_middleware", "status_class"]

_NS = "lrs_gateway"


class Metrics:
    """The collectors the request path updates; labels come from fixed sets only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "requests", "HTTP requests answered", ["route", "method", "status_class"],
            namespace=_NS, registry=registry)
        self.duration = Histogram(
            "request_duration_seconds", "Time to answer a request", ["route", "method"],
            namespace=_NS, registry=registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.in_flight = Gauge("requests_in_flight", "Requests being answered",
                               namespace=_NS, registry=registry)
        self.auth = Counter("auth_attempts", "Authentication attempts", ["scheme", "result"],
                            namespace=_NS, registry=registry)
        self.bcrypt = Histogram(
            "bcrypt_duration_seconds", "Time of one bcrypt check (in its thread pool)",
            namespace=_NS, registry=registry,
            buckets=(.01, .025, .05, .1, .2, .3, .5, .75, 1, 2, 5))
        self.upstream_requests = Counter(
            "upstream_requests", "Requests to upstream LRSes", ["target", "outcome"],
            namespace=_NS, registry=registry)
        self.upstream_duration = Histogram(
            "upstream_duration_seconds", "Time until an upstream LRS answered", ["target"],
            namespace=_NS, registry=registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.statements_accepted = Counter(
            "statements_accepted", "Statements the storage LRS accepted through the gateway",
            namespace=_NS, registry=registry)
        self.ready = Gauge("ready", "1 when the last readiness check passed",
                           namespace=_NS, registry=registry)
        Info("build", "Build information", namespace=_NS,
             registry=registry).info({"version": __version__})
        # Labelled children looked up once: `labels()` costs more than the update itself.
        self._upstream_counts: dict[tuple[str, str], Any] = {}
        self._upstream_durations: dict[str, Any] = {}

    def upstream(self, target: str, outcome: str, seconds: float) -> None:
        """One upstream exchange: outcome is a status class, `timeout` or `error`."""
        count = self._upstream_counts.get((target, outcome))
        if count is None:
            count = self._upstream_counts[target, outcome] = self.upstream_requests.labels(
                target, outcome)
        count.inc()
        duration = self._upstream_durations.get(target)
        if duration is None:
            duration = self._upstream_durations[target] = self.upstream_duration.labels(target)
        duration.observe(seconds)

    def exposition(self) -> web.Response:
        """The registry in Prometheus text format."""
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


def status_class(status: int) -> str:
    """`2xx` for 204 and so on: a label from a fixed set."""
    return f"{min(max(status // 100, 1), 5)}xx"


class AuthCollector(Collector):
    """Auth cache hits and misses and JWKS refreshes, read from the backends at scrape time."""

    def __init__(self, backends: Sequence[object]) -> None:
        self._backends = tuple(backends)

    def collect(self) -> Iterator[Metric]:
        """Yield the families."""
        lookups = CounterMetricFamily(f"{_NS}_auth_cache_lookups", "Auth cache lookups",
                                      labels=["scheme", "result"])
        refreshes = CounterMetricFamily(f"{_NS}_jwks_refreshes",
                                        "Fetches of the OpenID provider's keys")
        any_refresh = False
        for backend in self._backends:
            info = getattr(backend, "cache_figures", None)
            if info is not None:
                scheme, hits, misses = info()
                lookups.add_metric([scheme, "hit"], hits)
                lookups.add_metric([scheme, "miss"], misses)
            count = getattr(backend, "key_refreshes", None)
            if count is not None:
                refreshes.add_metric([], count())
                any_refresh = True
        yield lookups
        if any_refresh:
            yield refreshes


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def metrics_middleware(metrics: Metrics) -> web.middleware:  # type: ignore[valid-type]
    """Count and time every request by route name, method and status class."""
    from gateway.routes import route_info

    # Labelled children looked up once per label set: `labels()` costs more than the update.
    durations: dict[tuple[str, str], Any] = {}
    counts: dict[tuple[str, str, str], Any] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_info(request).name
        method = request.method if request.method in _KNOWN_METHODS else "OTHER"
        started = time.perf_counter()
        status = 500
        metrics.in_flight.inc()
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.in_flight.dec()
            key = (route, method)
            duration = durations.get(key)
            if duration is None:
                duration = durations[key] = metrics.duration.labels(route, method)
            duration.observe(time.perf_counter() - started)
            count_key = (route, method, status_class(status))
            count = counts.get(count_key)
            if count is None:
                count = counts[count_key] = metrics.requests.labels(*count_key)
            count.inc()

    return middleware
