"""What each route name needs (auth, version, scope), and the raw path pieces handlers use."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.xapi.scopes import Resource

__all__ = ["XAPI_PREFIX", "RouteInfo", "raw_query", "route_info", "xapi_tail"]

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
        RouteInfo("admin.forwarding_replay"),
        RouteInfo("admin.credentials"),
        RouteInfo("admin.credential"),
        RouteInfo("admin.credential_rotate"),
        RouteInfo("admin.audit"),
        RouteInfo("admin.rustici"),
        RouteInfo("admin.rustici_one"),
        RouteInfo("admin.sqllrs"),
        # The web admin authenticates people by its session cookie, not per request.
        RouteInfo("admin_ui.index", public=True),
        RouteInfo("admin_ui.login", public=True),
        RouteInfo("admin_ui.logout", public=True),
        RouteInfo("admin_ui.sso", public=True),
        RouteInfo("admin_ui.callback", public=True),
        RouteInfo("admin_ui.credentials", public=True),
        RouteInfo("admin_ui.act", public=True),
        RouteInfo("admin_ui.overview", public=True),
        RouteInfo("admin_ui.forwarding", public=True),
        RouteInfo("admin_ui.replay", public=True),
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
    return raw_path[len(XAPI_PREFIX) :] if raw_path.startswith(XAPI_PREFIX) else ""


def raw_query(request: web.Request) -> str:
    """The query string exactly as the client encoded it."""
    return request.raw_path.partition("?")[2]
