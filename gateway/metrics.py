"""Prometheus metrics on a registry injected into the app (never the global one)."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__

__all__ = ["Metrics", "metrics_middleware"]

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
        Info("build", "Build information", namespace=_NS,
             registry=registry).info({"version": __version__})

    def exposition(self) -> web.Response:
        """The registry in Prometheus text format."""
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def metrics_middleware(metrics: Metrics) -> web.middleware:  # type: ignore[valid-type]
    """Count and time every request by route name, method and status class."""
    from gateway.routes import route_info

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
            metrics.duration.labels(route, method).observe(time.perf_counter() - started)
            metrics.requests.labels(route, method, f"{status // 100}xx").inc()

    return middleware
