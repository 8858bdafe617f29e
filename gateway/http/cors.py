"""CORS answered by the gateway itself (`server.cors`): preflights never reach storage.

Preflights (OPTIONS with `Origin` and `Access-Control-Request-Method`) get a 204 for an
allowed origin and a 403 for any other. Every other answer to an allowed origin, errors and
streamed answers included, carries `Access-Control-Allow-Origin` (set as it is prepared);
the storage LRS's own CORS headers never pass, so a disallowed origin gets none.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.config.settings import CorsConfig
from gateway.errors import Forbidden
from gateway.http.keys import CORS

__all__ = ["CorsPolicy", "add_cors_headers", "cors_middleware", "is_preflight"]

# Every method of the xAPI resources (OPTIONS itself is never preflighted).
_METHODS = "GET, HEAD, POST, PUT, DELETE"
_CORS_PREFIX = "access-control-"


class CorsPolicy:
    """The configured origins and the headers answered to them, computed once."""

    def __init__(self, config: CorsConfig) -> None:
        self._any = "*" in config.allow_origins
        self._origins = frozenset(o.lower() for o in config.allow_origins if o != "*")
        self._credentials = config.allow_credentials
        self._preflight = {
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Allow-Headers": ", ".join(config.allow_headers),
            "Access-Control-Max-Age": str(config.max_age),
        }
        self._expose = ", ".join(config.expose_headers)

    def allow_origin(self, origin: str | None) -> str | None:
        """The `Access-Control-Allow-Origin` for `origin`, or None when it is not allowed."""
        if not origin:
            return None
        if origin.lower() in self._origins:
            return origin  # echoed as the browser sent it: it compares byte for byte
        return "*" if self._any else None

    def preflight_headers(self, allowed: str) -> dict[str, str]:
        """The answer to an allowed origin's preflight."""
        return {**self._preflight, **self._origin_headers(allowed)}

    def response_headers(self, allowed: str) -> dict[str, str]:
        """What an allowed origin's scripts may see of an ordinary answer."""
        headers = self._origin_headers(allowed)
        if self._expose:
            headers["Access-Control-Expose-Headers"] = self._expose
        return headers

    def _origin_headers(self, allowed: str) -> dict[str, str]:
        headers = {"Access-Control-Allow-Origin": allowed}
        if self._credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers


def is_preflight(request: web.BaseRequest) -> bool:
    """Whether `request` is a browser's CORS preflight."""
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With `server.cors`, answer preflights here (204, or 403 for another origin)."""
    policy = request.app.get(CORS)
    if policy is None or not is_preflight(request):
        return await handler(request)
    allowed = policy.allow_origin(request.headers["Origin"])
    if allowed is None:
        raise Forbidden("this origin is not allowed to call the gateway from a browser")
    response = web.Response(status=204, headers=policy.preflight_headers(allowed))
    _vary_on_origin(response)
    return response


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: an allowed origin may read every answer, errors included."""
    policy = request.app.get(CORS)
    if policy is None or is_preflight(request):
        return  # preflights are answered whole by the middleware (or refused)
    for name in [n for n in response.headers if n.lower().startswith(_CORS_PREFIX)]:
        response.headers.popall(name, None)  # storage's own policy is not ours
    _vary_on_origin(response)
    allowed = policy.allow_origin(request.headers.get("Origin"))
    if allowed is not None:
        response.headers.update(policy.response_headers(allowed))


def _vary_on_origin(response: web.StreamResponse) -> None:
    """Caches must keep answers to different origins apart."""
    tokens = {
        token.strip().lower()
        for value in response.headers.getall("Vary", ())
        for token in value.split(",")
    }
    if not tokens & {"origin", "*"}:
        response.headers.add("Vary", "Origin")
