"""The gateway's own endpoints: whoami, liveness, readiness, xAPI about, metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import Forbidden
from gateway.keys import (
    AUTHENTICATOR,
    CONFIG,
    FORWARDER,
    METRICS,
    PRINCIPAL,
    STORAGE,
    STORAGE_ABOUT,
    VERSIONS,
)
from gateway.readiness import check_readiness

__all__ = ["about", "forwarding_status", "heartbeat", "lbheartbeat", "metrics", "whoami"]


async def whoami(request: web.Request) -> web.Response:
    """Ralph's shape `{agent, scopes}` plus the username and the scheme that proved it."""
    principal = request[PRINCIPAL]
    return web.json_response({
        "agent": principal.agent,
        "scopes": sorted(principal.scopes),
        "username": principal.id,
        "scheme": principal.scheme,
    })


async def lbheartbeat(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def heartbeat(request: web.Request) -> web.Response:
    """Readiness: storage answers and accepts the gateway's credential; auth is set up."""
    ready, checks = await check_readiness(request.app)
    return web.json_response({"status": "ok" if ready else "unavailable", "checks": checks},
                             status=200 if ready else 503)


def storage_version(request: web.Request) -> str:
    """The version header the gateway uses for its own calls to the storage LRS."""
    return request.app[VERSIONS].default


async def about(request: web.Request) -> web.Response:
    """The xAPI /about: the versions this gateway accepts, the storage's extensions."""
    body: dict[str, Any] = {"version": list(request.app[CONFIG].xapi.versions)}
    extensions = await request.app[STORAGE_ABOUT].extensions(request.app[STORAGE],
                                                              storage_version(request))
    if extensions:
        body["extensions"] = extensions
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the app's registry (scope-restricted when configured)."""
    scope = request.app[CONFIG].metrics.scope
    if scope is not None:
        principal = await request.app[AUTHENTICATOR].authenticate(
            request.headers.get("Authorization"))
        if scope not in principal.scopes:
            raise Forbidden(f"the metrics need the {scope} scope")
    return request.app[METRICS].exposition()


async def forwarding_status(request: web.Request) -> web.Response:
    """Per forwarding target: backlog, oldest undelivered age, delivered, retries, dead letters."""
    if "admin" not in request[PRINCIPAL].scopes:
        raise Forbidden("the forwarding status needs the admin scope")
    forwarder = request.app.get(FORWARDER)
    if forwarder is None:
        return web.json_response({"targets": {}})
    return web.json_response(forwarder.as_json(await forwarder.status()))
