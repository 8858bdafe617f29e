"""POST /token: a short-lived gateway token with scopes narrowed from the caller's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.config.settings import DEFAULT_TENANT
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.http.bodies import read_limited
from gateway.http.keys import PRINCIPAL, TOKEN_SIGNER
from gateway.xapi.restrictions import Restriction, RestrictionError
from gateway.xapi.scopes import ROLE_SCOPES
from gateway.xapi.statements import parse_json_body

__all__ = ["issue_token", "requested_lifetime"]

_MAX_REQUEST = 64 * 1024


def requested_lifetime(body: dict[str, object], now: datetime, default: float) -> float:
    """Seconds from `expires_in` or from an ISO 8601 `expiry`; `default` when neither."""
    if "expires_in" in body:
        value = body["expires_in"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise BadRequest("expires_in must be a positive number of seconds")
        return float(value)
    if "expiry" in body:
        value = body["expiry"]
        try:
            expiry = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest("expiry must be an ISO 8601 date and time") from None
        if expiry.tzinfo is None:
            raise BadRequest("expiry must carry a time zone (e.g. Z)")
        seconds = (expiry - now).total_seconds()
        if seconds <= 0:
            raise BadRequest("expiry is in the past")
        return seconds
    return default


async def issue_token(request: web.Request) -> web.Response:
    """Sign a token for the caller, who needs `admin` or `tokens/issue`.

    Ours: `{"scopes": [...], "restrict": {...}, "expires_in": 900}`, answered with
    `{"token", "token_type", "expires_at"}`. Rustici Engine's: `{"permissions": {"scopes":
    [...], "tenantName": ..., "courseId": ...}, "expiry": ...}`, answered with
    `{"result": token}`; its courseId (the course's activity IRI here) restricts the token
    to that activity.
    """
    signer = request.app.get(TOKEN_SIGNER)
    if signer is None:
        raise NotFound("token issuing is not enabled (auth.backends has no 'token')")
    principal = request[PRINCIPAL]
    if principal.scheme == "token":
        raise Forbidden(
            "a gateway token cannot issue tokens: use the credential it was issued from"
        )
    if principal.scopes.isdisjoint({"admin", "tokens/issue"}):
        raise Forbidden("issuing tokens needs the admin or tokens/issue scope")
    body = parse_json_body(await read_limited(request, _MAX_REQUEST))
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    rustici = "permissions" in body
    scopes, raw_restriction = (
        _rustici_request(body, principal.tenant) if rustici else _our_request(body)
    )
    restriction = None
    if raw_restriction is not None:
        try:
            restriction = Restriction.parse(raw_restriction, sub_activities=signer.sub_activities)
        except RestrictionError as exc:
            raise BadRequest(str(exc)) from None
    lifetime = requested_lifetime(body, datetime.now(UTC), signer.max_lifetime)
    token, expires = signer.issue(principal, scopes, lifetime, restriction)
    if rustici:
        return web.json_response({"result": token})
    return web.json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
        }
    )


def _scopes(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise BadRequest(f"{where} must be a list of strings")
    return value


def _our_request(body: dict[str, Any]) -> tuple[list[str], Any]:
    """(scopes, restriction or None) of `{"scopes": [...], "restrict": {...}}`."""
    return _scopes(body.get("scopes"), "scopes"), body.get("restrict")


def _rustici_request(body: dict[str, Any], tenant: str | None) -> tuple[list[str], Any]:
    """(scopes, restriction or None) of Rustici Engine's `{"permissions": {...}}`."""
    permissions = body["permissions"]
    if not isinstance(permissions, dict):
        raise BadRequest("permissions must be an object")
    unknown = sorted(set(permissions) - {"scopes", "tenantName", "courseId"})
    if unknown:
        raise BadRequest(f"permissions.{unknown[0]}: not a permission this gateway knows")
    if "restrict" in body:
        raise BadRequest("restrict goes with scopes, not with permissions (Rustici's shape)")
    tenant_name = permissions.get("tenantName")
    # Rustici calls the tenant of a system without tenants "default", as we do.
    if tenant_name is not None and tenant_name != (tenant or DEFAULT_TENANT):
        # Never a default: a token for a tenant the caller is not in is refused.
        raise Forbidden(f"permissions.tenantName: the caller is not in tenant {tenant_name!r}")
    # Rustici's xAPI credential roles (root, read-only, ...) stand for their scopes.
    scopes = [
        scope
        for named in _scopes(permissions.get("scopes"), "permissions.scopes")
        for scope in ROLE_SCOPES.get(named, (named,))
    ]
    course = permissions.get("courseId")
    if course is None:
        return scopes, None
    if not isinstance(course, str):
        raise BadRequest("permissions.courseId must be a string: the course's activity IRI")
    return scopes, {"activity": course}
