"""The gateway's own endpoints: whoami, liveness, readiness, xAPI about, metrics, admin."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.errors import BadRequest, Forbidden, NotFound, WorkersUnavailable
from gateway.forwarding.forwarder import Forwarder
from gateway.http.abuse_guard import Guard, lockout_key
from gateway.http.admin_scope import Admin, request_admin
from gateway.http.bodies import read_limited
from gateway.http.keys import (
    AUTHENTICATOR,
    CONFIG,
    CREDENTIAL_SOURCES,
    GUARD,
    METRICS,
    PRINCIPAL,
    STORAGE,
    STORAGE_ABOUT,
    VERSIONS,
    WORKER,
)
from gateway.http.readiness import check_readiness
from gateway.http.tenancy import all_forwarders
from gateway.runtime.workers import (
    Command,
    merged_status,
    retired_status,
    shared_data_dir,
    sibling_command,
    sibling_documents,
)
from gateway.xapi.statements import parse_json_body

__all__ = [
    "about",
    "forwarding_document",
    "forwarding_replay",
    "forwarding_status",
    "heartbeat",
    "lbheartbeat",
    "lift_own_lockout",
    "lockout_clear",
    "metrics",
    "own_forwarding_status",
    "replay_dead_letters",
    "replay_own_dead_letters",
    "whoami",
]

log = logging.getLogger(__name__)


async def whoami(request: web.Request) -> web.Response:
    """Ralph's shape `{agent, scopes}` plus the username and the scheme that proved it."""
    principal = request[PRINCIPAL]
    return web.json_response(
        {
            "agent": principal.agent,
            "scopes": sorted(principal.scopes),
            "username": principal.id,
            "scheme": principal.scheme,
        }
    )


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
    """The xAPI /about: the versions this gateway serves, the storage's extensions.

    The configured versions narrowed to those storage speaks (gateway.http.storage_about).
    """
    body: dict[str, Any] = {"version": list(request.app[VERSIONS].versions)}
    extensions = await request.app[STORAGE_ABOUT].extensions(
        request.app[STORAGE], storage_version(request)
    )
    if extensions:
        body["extensions"] = extensions
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition (scope-restricted when configured).

    With several workers, every worker's figures, whichever answers (gateway.http.metrics).
    """
    scope = request.app[CONFIG].metrics.scope
    if scope is not None:
        principal = await request.app[AUTHENTICATOR].authenticate(
            request.headers.get("Authorization")
        )
        if scope not in principal.scopes:
            raise Forbidden(f"the metrics need the {scope} scope")
    return await request.app[METRICS].exposition()


async def _own_forwarding(app: web.Application) -> dict[str, Any]:
    """Every tenant's targets, each once: as the forwarder whose tenant has it sees it."""
    targets: dict[str, Any] = {}
    statuses = [(f, await f.status()) for f in all_forwarders(app)]
    for owned in (True, False):
        for forwarder, status in statuses:
            mine = set(forwarder.target_names)
            for name, figures in Forwarder.as_json(status)["targets"].items():
                if (name in mine) == owned and name not in targets:
                    targets[name] = figures
    return {"targets": targets}


async def own_forwarding_status(request: web.Request) -> web.Response:
    """The answering worker's own outbox figures (workers' socket)."""
    return web.json_response(await _own_forwarding(request.app))


async def forwarding_status(request: web.Request) -> web.Response:
    """Per forwarding target: backlog, oldest undelivered age, delivered, retries, dead letters.

    With several workers: every worker's outbox added up, and how many did not answer.
    """
    admin = request_admin(request, "the forwarding status")
    document = await forwarding_document(request.app)
    if admin.bound:  # a tenant's admin sees its tenant's targets alone
        mine = admin.targets(request.app[CONFIG])
        document["targets"] = {n: t for n, t in document["targets"].items() if n in mine}
    return web.json_response(document)


async def forwarding_document(app: web.Application) -> dict[str, Any]:
    """Every forwarding target's figures, every worker's outbox added up."""
    own = await _own_forwarding(app)
    forwarders = all_forwarders(app)
    if forwarders and all(f.outbox.shared for f in forwarders):
        return own  # one outbox every worker and replica shares: this one's figures are all
    role = app.get(WORKER)
    # Outboxes of workers an earlier run had more of: what they delivered still counts,
    # as `lrs-gateway forwarding status` counts it.
    config = app[CONFIG]
    data_dir = config.resolve_path(config.data_dir)
    if role is not None:
        data_dir = shared_data_dir(data_dir, role)
    retired = await asyncio.to_thread(
        _retired, data_dir, 1 if role is None else role.count, [t.label for t in config.forwardings]
    )
    if role is None:
        return merged_status([own, *retired]) if retired else own
    others, missing = await sibling_documents(role, "/forwarding")
    document = merged_status([own, *(json.loads(o) for o in others), *retired])
    document["workers"] = {"count": role.count, "unanswered": missing}
    return document


def _retired(data_dir: Path, count: int, names: list[str]) -> list[dict[str, Any]]:
    return retired_status(data_dir, count, names) if data_dir.is_dir() else []


async def _replay(app: web.Application, target: str) -> int:
    """Re-queue `target`'s dead letters in the outbox of the tenant that has it."""
    for forwarder in all_forwarders(app):
        if target in forwarder.target_names:
            return await forwarder.replay(target)
    return 0


def replay_own_dead_letters(app: web.Application) -> Command:
    """The sibling command that re-queues a target's dead letters in this worker's outbox."""

    async def replay(payload: dict[str, Any]) -> dict[str, Any]:
        target = payload.get("target")
        if not isinstance(target, str):
            return {"moved": 0}
        return {"moved": await _replay(app, target)}

    return replay


async def replay_dead_letters(app: web.Application, target: str, admin: Admin) -> int:
    """Re-queue `target`'s dead letters in every worker's outbox; how many moved.

    404 for a target the configuration does not name (or another tenant's, for a tenant's
    admin); 503 when a worker did not answer (what moved stays moved: a second call moves
    the rest).
    """
    if target not in admin.targets(app[CONFIG]):
        raise NotFound("no forwarding target has that name")
    actor = admin.actor
    moved = await _replay(app, target)
    forwarders = all_forwarders(app)
    role = app.get(WORKER)
    missing = 0
    if role is not None and not (forwarders and all(f.outbox.shared for f in forwarders)):
        answers, missing = await sibling_command(role, "forwarding-replay", {"target": target})
        moved += sum(int(answer.get("moved", 0)) for answer in answers)
    log.info("forwarding to %s: %d dead letters re-queued by %s", target, moved, actor)
    if missing:
        raise WorkersUnavailable(
            f"{moved} dead letters re-queued, but {missing} of {role.count if role else 1} "
            "workers did not answer (one may be restarting): try again for theirs"
        )
    return moved


async def forwarding_replay(request: web.Request) -> web.Response:
    """POST /admin/forwarding/{target}/replay: its dead letters back in its queue (admin)."""
    admin = request_admin(request, "replaying dead letters")
    target = request.match_info["target"]
    moved = await replay_dead_letters(request.app, target, admin)
    return web.json_response({"target": target, "requeued": moved})


_MAX_LOCKOUT_REQUEST = 4096


def _lockout_subject(body: object) -> dict[str, str]:
    """`{"username": U}` or `{"address": A}`, exactly one, a non-empty string."""
    if not isinstance(body, dict):
        raise BadRequest('the body must be {"username": "..."} or {"address": "..."}')
    given = {k: v for k, v in body.items() if k in ("username", "address")}
    if len(given) != 1 or set(body) != set(given):
        raise BadRequest('the body must be {"username": "..."} or {"address": "..."}')
    ((kind, value),) = given.items()
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise BadRequest(f"{kind} must be a non-empty string")
    return {kind: value}


def _check_lockout_reach(request: web.Request, admin: Admin, subject: dict[str, str]) -> None:
    """A tenant's admin lifts its own credentials' lockouts, not an address's.

    An address may be anyone's (a shared proxy, another tenant's clients); a username
    that is not the tenant's is answered as unknown, so none can be probed for.
    """
    username = subject.get("username")
    if username is None:
        raise Forbidden("lifting an address's lockout needs an admin of every tenant")
    sources = request.app.get(CREDENTIAL_SOURCES)
    found = None if sources is None else sources.get(username)
    if found is None or found.tenant != admin.tenant:
        raise NotFound("no credential of this tenant has that username")


def lift_own_lockout(guard: Guard) -> Command:
    """The sibling command that lifts a lockout in this worker."""

    async def lift(payload: dict[str, Any]) -> dict[str, Any]:
        subject = _lockout_subject(payload)
        return {"was_locked_out": await guard.lift_lockout(lockout_key(**subject))}

    return lift


async def lockout_clear(request: web.Request) -> web.Response:
    """POST /admin/lockout/clear: lift a username's or an address's lockout now (scope admin).

    With several workers every one lifts it (each keeps its own); if one does not answer,
    503, and the call can be repeated.
    """
    principal = request[PRINCIPAL]
    admin = request_admin(request, "lifting a lockout")
    subject = _lockout_subject(parse_json_body(await read_limited(request, _MAX_LOCKOUT_REQUEST)))
    if admin.bound:
        _check_lockout_reach(request, admin, subject)
    locked = await request.app[GUARD].lift_lockout(lockout_key(**subject))
    answer: dict[str, Any] = dict(subject)
    role = request.app.get(WORKER)
    if role is not None:
        answers, missing = await sibling_command(role, "lockout-clear", subject)
        locked = locked or any(a.get("was_locked_out") for a in answers)
        if missing:
            raise WorkersUnavailable(
                f"{missing} of {role.count} workers did not answer (one "
                "may be restarting): the lockout may remain there; "
                "try again"
            )
        answer["workers"] = role.count
    ((kind, value),) = subject.items()
    log.info(
        "lockout of %s %s lifted by %s (%s)",
        kind,
        value[:256],
        principal.id,
        "it was locked out" if locked else "it was not locked out",
    )
    answer["was_locked_out"] = locked
    return web.json_response(answer)
