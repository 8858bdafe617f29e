"""POST /token: a short-lived gateway token with scopes narrowed from the caller's."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.http.bodies import read_limited
from gateway.http.keys import PRINCIPAL, TOKEN_SIGNER
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
    """Sign a token for the caller, who needs `admin` or `tokens/issue`."""
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
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("scopes must be a list of strings")
    lifetime = requested_lifetime(body, datetime.now(UTC), signer.max_lifetime)
    token, expires = signer.issue(principal, scopes, lifetime)
    return web.json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
        }
    )
