"""The route table: paths, names, and what each name needs (auth, version, scope)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.scopes import Resource

__all__ = ["RouteInfo", "raw_query", "route_info", "setup_routes", "xapi_tail"]

XAPI_PREFIX = "/xAPI/"


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """What the middlewares need to know about a route."""

    name: str
    public: bool = False
    xapi: bool = False
    resource: Resource | None = None


_INFO = {
    info.name: info
    for info in (
        RouteInfo("xapi.about", public=True, xapi=True),
        RouteInfo("xapi.statements", xapi=True, resource=Resource.STATEMENTS),
        RouteInfo("xapi.state", xapi=True, resource=Resource.STATE),
        RouteInfo("xapi.activity_profile", xapi=True, resource=Resource.ACTIVITY_PROFILE),
        RouteInfo("xapi.agent_profile", xapi=True, resource=Resource.AGENT_PROFILE),
        RouteInfo("xapi.activities", xapi=True, resource=Resource.ACTIVITIES),
        RouteInfo("xapi.agents", xapi=True, resource=Resource.AGENTS),
        RouteInfo("xapi.other", xapi=True, resource=Resource.OTHER),
        RouteInfo("whoami"),
        RouteInfo("token"),
        RouteInfo("admin.forwarding"),
        RouteInfo("admin.lockout_clear"),
        RouteInfo("lbheartbeat", public=True),
        RouteInfo("heartbeat", public=True),
        RouteInfo("metrics", public=True),
    )
}
_UNMATCHED = RouteInfo("unmatched", public=True)


def route_info(request: web.Request) -> RouteInfo:
    """The RouteInfo of the route that matched `request` (a public stand-in when none did)."""
    name = request.match_info.route.name
    return _INFO.get(name, _UNMATCHED) if name else _UNMATCHED


def xapi_tail(request: web.Request) -> str:
    """The still-encoded path after `/xAPI/`, which the upstream URL is built from."""
    raw_path = request.raw_path.partition("?")[0]
    return raw_path[len(XAPI_PREFIX):] if raw_path.startswith(XAPI_PREFIX) else ""


def raw_query(request: web.Request) -> str:
    """The query string exactly as the client encoded it."""
    return request.raw_path.partition("?")[2]


def setup_routes(app: web.Application, *, metrics_path: str | None) -> None:
    """Register every route; the catch-all for other /xAPI/ paths goes last."""
    from gateway import passthrough, service, statements_api, tokens_api
    from gateway.keys import GUARD, WORKER

    router = app.router
    router.add_get("/xAPI/about{slash:/?}", service.about, name="xapi.about")
    statements = router.add_resource("/xAPI/statements{slash:/?}", name="xapi.statements")
    # One handler for every method: a request in the alternate syntax changes its method
    # after routing.
    statements.add_route("*", statements_api.statements)
    for path, name in (
        ("/xAPI/activities/state{slash:/?}", "xapi.state"),
        ("/xAPI/activities/profile{slash:/?}", "xapi.activity_profile"),
        ("/xAPI/agents/profile{slash:/?}", "xapi.agent_profile"),
        ("/xAPI/activities{slash:/?}", "xapi.activities"),
        ("/xAPI/agents{slash:/?}", "xapi.agents"),
        ("/xAPI/{tail:.+}", "xapi.other"),
    ):
        router.add_route("*", path, passthrough.proxy, name=name)
    router.add_get("/whoami", service.whoami, name="whoami")
    router.add_post("/token", tokens_api.issue_token, name="token")
    router.add_get("/admin/forwarding", service.forwarding_status, name="admin.forwarding")
    router.add_post("/admin/lockout/clear", service.lockout_clear, name="admin.lockout_clear")
    role = app.get(WORKER)
    if role is not None:  # each worker keeps its own lockouts: siblings lift theirs too
        role.commands.register("lockout-clear", service.lift_own_lockout(app[GUARD]))
    router.add_get("/__lbheartbeat__", service.lbheartbeat, name="lbheartbeat")
    router.add_get("/__heartbeat__", service.heartbeat, name="heartbeat")
    if metrics_path is not None:
        router.add_get(metrics_path, service.metrics, name="metrics")
