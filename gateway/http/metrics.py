"""Prometheus metrics on a registry injected into the app (never the global one).

One process: its registry is the exposition. Several workers (`serve --workers N`): every
metric value lives in a per-process file of prometheus-client's multiprocess mode in a
directory the supervisor made, and a scrape answered by any worker reads them all. A dead
worker's counter and histogram files stay (so totals never go down); its live gauge files
go with it (the supervisor marks it dead).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from gateway import __version__
from gateway.failurelog import FailureLog
from gateway.http.route_info import route_info
from gateway.upstream.target import status_class

__all__ = [
    "ACTIVITY_FIGURES",
    "PUBLISH_INTERVAL",
    "Cumulative",
    "Metrics",
    "auth_figures",
    "metrics_middleware",
    "multiprocess_ready",
]

log = logging.getLogger(__name__)

_NS = "lrs_gateway"
# What the web admin's overview charts, from the gateway's own counters.
ACTIVITY_FIGURES = ("requests", "client_errors", "server_errors", "auth_ok", "auth_refused")
PUBLISH_INTERVAL = 1.0  # seconds: how stale another worker's cumulative figures may be

# Labels → the running total a component keeps itself.
Read = Callable[[], Mapping[tuple[str, ...], float]]


def multiprocess_ready(directory: Path) -> bool:
    """Whether this interpreter keeps metric values in files (the supervisor set it up)."""
    # prometheus-client chooses its value class once, when first imported.
    return bool(getattr(values.ValueClass, "_multiprocess", False)) and directory.is_dir()


class _BuildInfo(Collector):
    """`lrs_gateway_build_info{version}` (an Info has no multiprocess mode)."""

    def collect(self) -> Iterator[Metric]:
        """Yield the one family."""
        yield InfoMetricFamily(f"{_NS}_build", "Build information", value={"version": __version__})


class _SharedLimitsUp(Collector):
    """`lrs_gateway_shared_limits_up`: 1 while Redis answers the answering process."""

    def __init__(self, up: Callable[[], bool]) -> None:
        self._up = up

    def collect(self) -> Iterator[Metric]:
        """Yield the one family."""
        yield GaugeMetricFamily(
            f"{_NS}_shared_limits_up",
            "Whether Redis counts rate limits and lockouts for every replica (0: each alone)",
            value=1 if self._up() else 0,
        )


class _Workers(Collector):
    """`lrs_gateway_workers`: how many workers the supervisor runs."""

    def __init__(self, count: int) -> None:
        self._count = count

    def collect(self) -> Iterator[Metric]:
        """Yield the one family."""
        yield GaugeMetricFamily(
            f"{_NS}_workers", "Worker processes serving the gateway", value=self._count
        )


class Cumulative:
    """A running total a component keeps itself, published into a Counter by its increase.

    The counter then adds up across processes (its value lives in this process's file)
    and never goes down, even when the component's own total starts again (a cache
    cleared on a credentials reload resets its hit count).
    """

    def __init__(self, counter: Counter, read: Read) -> None:
        self._counter = counter
        self._read = read
        self._published: dict[tuple[str, ...], float] = {}

    def publish(self) -> None:
        """Add what each total grew by since the last call (a total that restarted: all of it)."""
        for labels, total in self._read().items():
            last = self._published.get(labels)
            self._published[labels] = total
            grown = total if last is None or total < last else total - last
            if last is None or grown:
                child = self._counter.labels(*labels) if labels else self._counter
                child.inc(grown)  # inc(0) on first sight: the series shows 0, as before


class Metrics:
    """The collectors the request path updates; labels come from fixed sets only.

    `shared_dir`: the multiprocess directory of `serve --workers N` (None: one process).
    """

    def __init__(
        self, registry: CollectorRegistry, *, shared_dir: Path | None = None, workers: int = 1
    ) -> None:
        self.registry = registry
        self._shared_dir = shared_dir
        # tenant: the caller's ("default" for the top-level storage; "" before
        # authentication answered): the configured tenants bound it.
        self.requests = Counter(
            "requests",
            "HTTP requests answered",
            ["route", "method", "status_class", "tenant"],
            namespace=_NS,
            registry=registry,
        )
        self.duration = Histogram(
            "request_duration_seconds",
            "Time to answer a request",
            ["route", "method"],
            namespace=_NS,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # Gauges say how several workers' values combine (ignored by a single process).
        self.in_flight = Gauge(
            "requests_in_flight",
            "Requests being answered",
            namespace=_NS,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.auth = Counter(
            "auth_attempts",
            "Authentication attempts",
            ["scheme", "result"],
            namespace=_NS,
            registry=registry,
        )
        self.auth_cache = Counter(
            "auth_cache_lookups",
            "Auth cache lookups",
            ["scheme", "result"],
            namespace=_NS,
            registry=registry,
        )
        self.bcrypt = Histogram(
            "bcrypt_duration_seconds",
            "Time of one bcrypt check (in its thread pool)",
            namespace=_NS,
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5),
        )
        self.upstream_requests = Counter(
            "upstream_requests",
            "Requests to upstream LRSes",
            ["target", "outcome"],
            namespace=_NS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "upstream_duration_seconds",
            "Time until an upstream LRS answered",
            ["target"],
            namespace=_NS,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.statements_accepted = Counter(
            "statements_accepted",
            "Statements the storage LRS accepted through the gateway",
            ["tenant"],
            namespace=_NS,
            registry=registry,
        )
        # Ready only if every live worker is.
        self.ready = Gauge(
            "ready",
            "1 when the last readiness check passed",
            namespace=_NS,
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._jwks_refreshes: Counter | None = None
        self._forwarding_failed: Counter | None = None
        self._cumulative: list[Cumulative] = []
        # Read at scrape time, not per process: the same in every worker's answer.
        self._collectors: list[Collector] = [_BuildInfo()]
        if shared_dir is None:
            registry.register(self._collectors[0])
        else:
            self._collectors.append(_Workers(workers))
        # Labelled children looked up once: `labels()` costs more than the update itself.
        self._upstream_counts: dict[tuple[str, str], Any] = {}
        self._upstream_durations: dict[str, Any] = {}
        self._accepted: dict[str, Any] = {}

    @property
    def shared(self) -> bool:
        """Whether several worker processes share these metrics."""
        return self._shared_dir is not None

    def jwks_refreshes(self) -> Counter:
        """The counter of JWKS fetches (made when an OIDC backend first needs it)."""
        if self._jwks_refreshes is None:
            self._jwks_refreshes = Counter(
                "jwks_refreshes",
                "Fetches of the OpenID provider's keys",
                namespace=_NS,
                registry=self.registry,
            )
        return self._jwks_refreshes

    def shared_limits(self, up: Callable[[], bool], fallbacks: Callable[[], int]) -> Cumulative:
        """Whether Redis answers the shared limits, and the calls counted here instead."""
        self.add_collector(_SharedLimitsUp(up))
        counter = Counter(
            "shared_limits_fallbacks",
            "Rate-limit and lockout calls counted in this process because Redis did not answer",
            namespace=_NS,
            registry=self.registry,
        )
        return Cumulative(counter, _unlabelled(fallbacks))

    def forwarding_failed(self) -> Counter:
        """The counter of failed sends per forwarding target (made when forwarding starts)."""
        if self._forwarding_failed is None:
            self._forwarding_failed = Counter(
                "forwarding_failed",
                "Sends to a target that failed",
                ["target"],
                namespace=_NS,
                registry=self.registry,
            )
        return self._forwarding_failed

    def add_collector(self, collector: Collector) -> None:
        """A collector read at scrape time (its figures are the whole gateway's)."""
        self._collectors.append(collector)
        if not self.shared:
            self.registry.register(collector)

    def remove_collector(self, collector: Collector) -> None:
        """Stop reading `collector`."""
        self._collectors.remove(collector)
        if not self.shared:
            self.registry.unregister(collector)

    def add_cumulative(self, cumulative: Cumulative) -> None:
        """Publish `cumulative` before every scrape and, with several workers, every second."""
        cumulative.publish()
        self._cumulative.append(cumulative)

    def remove_cumulative(self, cumulative: Cumulative) -> None:
        """Publish it a last time and forget it."""
        cumulative.publish()
        self._cumulative.remove(cumulative)

    def publish(self) -> None:
        """Bring the published counters up to the components' own totals (event loop only)."""
        for cumulative in self._cumulative:
            cumulative.publish()

    async def publishing(self) -> None:
        """With several workers: publish every second, so other workers' scrapes see it."""
        failing = FailureLog(log, "metrics: publishing cumulative figures")
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            try:
                self.publish()
            except Exception as exc:  # a component's figures: next round
                failing.failed(exc, traceback=True)

    def upstream(self, target: str, outcome: str, seconds: float) -> None:
        """One upstream exchange: outcome is a status class, `timeout` or `error`."""
        count = self._upstream_counts.get((target, outcome))
        if count is None:
            count = self._upstream_counts[target, outcome] = self.upstream_requests.labels(
                target, outcome
            )
        count.inc()
        duration = self._upstream_durations.get(target)
        if duration is None:
            duration = self._upstream_durations[target] = self.upstream_duration.labels(target)
        duration.observe(seconds)

    def accepted(self, tenant: str, count: int) -> None:
        """`count` statements the storage LRS of `tenant` (its label) accepted."""
        child = self._accepted.get(tenant)
        if child is None:
            child = self._accepted[tenant] = self.statements_accepted.labels(tenant)
        child.inc(count)

    def _shared_body(self) -> bytes:
        """Every worker's files plus the scrape-time collectors (blocking: file reads)."""
        assert self._shared_dir is not None
        registry = CollectorRegistry(auto_describe=False)  # collect once, at generation
        path = str(self._shared_dir)
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        for collector in self._collectors:
            registry.register(collector)
        return generate_latest(registry)

    def _activity_samples(self) -> Iterator[Sample]:
        """The request and auth counters' samples (every worker's; blocking: file reads)."""
        if self._shared_dir is None:
            families = [*self.requests.collect(), *self.auth.collect()]
        else:
            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry, path=str(self._shared_dir))  # type: ignore[no-untyped-call]
            families = list(registry.collect())
        for family in families:
            yield from family.samples

    def _activity_list(self) -> list[Sample]:
        return list(self._activity_samples())

    async def activity_totals(self) -> dict[str, float]:
        """Requests (all, 4xx, 5xx) and auth outcomes (ok, refused) so far, for the overview."""
        samples: list[Sample] = (
            await asyncio.to_thread(self._activity_list) if self.shared else self._activity_list()
        )
        totals = dict.fromkeys(ACTIVITY_FIGURES, 0.0)
        for sample in samples:
            if sample.name == f"{_NS}_requests_total":
                totals["requests"] += sample.value
                kind = {"4xx": "client_errors", "5xx": "server_errors"}.get(
                    sample.labels.get("status_class", "")
                )
                if kind is not None:
                    totals[kind] += sample.value
            elif sample.name == f"{_NS}_auth_attempts_total":
                ok = sample.labels.get("result") == "ok"
                totals["auth_ok" if ok else "auth_refused"] += sample.value
        return totals

    async def exposition(self) -> web.Response:
        """The metrics in Prometheus text format."""
        self.publish()
        if self.shared:
            body = await asyncio.to_thread(self._shared_body)
        else:
            body = generate_latest(self.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


def auth_figures(metrics: Metrics, backends: Sequence[object]) -> list[Cumulative]:
    """The backends' own cache hit/miss and JWKS fetch totals, as published counters."""
    found: list[Cumulative] = []
    for backend in backends:
        figures = getattr(backend, "cache_figures", None)
        if figures is not None:
            found.append(Cumulative(metrics.auth_cache, _cache_lookups(figures)))
        refreshes = getattr(backend, "key_refreshes", None)
        if refreshes is not None:
            found.append(Cumulative(metrics.jwks_refreshes(), _unlabelled(refreshes)))
    return found


def _cache_lookups(figures: Callable[[], tuple[str, int, int]]) -> Read:
    def read() -> dict[tuple[str, ...], float]:
        scheme, hits, misses = figures()
        return {(scheme, "hit"): hits, (scheme, "miss"): misses}

    return read


def _unlabelled(count: Callable[[], int]) -> Read:
    return lambda: {(): count()}


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def metrics_middleware(metrics: Metrics, tenant_of: Callable[[web.Request], str]) -> web.middleware:  # type: ignore[valid-type]
    """Count and time every request by route name, method and status class (and tenant).

    `tenant_of`: the tenant label of an answered request (read after the handler, once
    authentication has said who called).
    """
    # Labelled children looked up once per label set: `labels()` costs more than the update.
    durations: dict[tuple[str, str], Any] = {}
    counts: dict[tuple[str, str, str, str], Any] = {}

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
            count_key = (route, method, status_class(status), tenant_of(request))
            count = counts.get(count_key)
            if count is None:
                count = counts[count_key] = metrics.requests.labels(*count_key)
            count.inc()

    return middleware
