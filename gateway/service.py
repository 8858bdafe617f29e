"""The gateway's own endpoints: whoami, liveness, readiness, xAPI about, metrics."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import Forbidden, WorkersUnavailable
from gateway.keys import (
    AUTHENTICATOR,
    CONFIG,
    FORWARDER,
    METRICS,
    PRINCIPAL,
    STORAGE,
    STORAGE_ABOUT,
    VERSIONS,
    WORKER,
)
from gateway.metricsmerge import merge_expositions
from gateway.readiness import check_readiness
from gateway.workers import merged_status, sibling_documents

__all__ = ["about", "forwarding_status", "heartbeat", "lbheartbeat", "metrics",
           "own_forwarding_status", "own_metrics", "whoami"]


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
    """Readiness: storage answers the gateway's credential with 2xx; auth and outbox work.

    The body details each check and each forwarding target (never a reason for 503).
    """
    report = await check_readiness(request.app)
    return web.json_response(report.as_json(), status=200 if report.ready else 503)


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
    role = request.app.get(WORKER)
    if role is None:
        return request.app[METRICS].exposition()
    own = generate_latest(request.app[METRICS].registry).decode()
    others, missing = await sibling_documents(role, "/metrics")
    if missing:
        # A sum without some workers would make every counter seem to drop (and rate()
        # spike): better a failed scrape, which Prometheus shows as such.
        raise WorkersUnavailable(f"{missing} of {role.count} workers did not answer (one "
                                 "may be restarting); scrape again")
    workers = ("# HELP lrs_gateway_workers Worker processes serving the gateway\n"
               "# TYPE lrs_gateway_workers gauge\n"
               f"lrs_gateway_workers {role.count}\n")
    body = merge_expositions([own, *(o.decode() for o in others), workers])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def own_metrics(request: web.Request) -> web.Response:
    """The answering worker's own figures, for the one adding them up (workers' socket)."""
    return request.app[METRICS].exposition()


async def _own_forwarding(app: web.Application) -> dict[str, Any]:
    forwarder = app.get(FORWARDER)
    return {"targets": {}} if forwarder is None else forwarder.as_json(await forwarder.status())


async def own_forwarding_status(request: web.Request) -> web.Response:
    """The answering worker's own outbox figures (workers' socket)."""
    return web.json_response(await _own_forwarding(request.app))


async def forwarding_status(request: web.Request) -> web.Response:
    """Per forwarding target: backlog, oldest undelivered age, delivered, retries, dead letters.

    With several workers: every worker's outbox added up, and how many did not answer.
    """
    if "admin" not in request[PRINCIPAL].scopes:
        raise Forbidden("the forwarding status needs the admin scope")
    own = await _own_forwarding(request.app)
    role = request.app.get(WORKER)
    if role is None:
        return web.json_response(own)
    others, missing = await sibling_documents(role, "/forwarding")
    document = merged_status([own, *(json.loads(o) for o in others)])
    document["workers"] = {"count": role.count, "unanswered": missing}
    return web.json_response(document)
