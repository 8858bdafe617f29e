"""The middlewares; their order is written once, in app.py."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.auth.oauth1 import SignedRequest
from gateway.auth.principal import Principal
from gateway.errors import (
    AuthUnavailable,
    BadRequest,
    Forbidden,
    GatewayError,
    TooManyRequests,
    Unauthorized,
)
from gateway.http.keys import (
    ADMISSION,
    ALTERNATE_BODY,
    AUTHENTICATOR,
    CONFIG,
    GUARD,
    METRICS,
    PRINCIPAL,
    REQUEST_ID,
    REQUEST_IDS,
    VERSIONS,
)
from gateway.http.route_info import route_info
from gateway.http.tenancy import check_tenant
from gateway.xapi.scopes import is_allowed
from gateway.xapi.versions import VERSION_HEADER

__all__ = [
    "auth_middleware",
    "authenticate_request",
    "error_middleware",
    "render_error",
    "request_id_middleware",
    "throttle_middleware",
]

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def render_error(request: web.Request, error: GatewayError) -> web.Response:
    """xAPI-style JSON error body with the request id."""
    body = {
        "error": error.kind,
        "message": error.message,
        "request_id": request.get(REQUEST_ID, ""),
    }
    response = web.Response(
        status=error.status, text=json.dumps(body), content_type="application/json"
    )
    if isinstance(error, Unauthorized):
        for challenge in request.app[AUTHENTICATOR].challenges:
            response.headers.add("WWW-Authenticate", challenge)
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a JSON answer; nothing unforeseen leaks a traceback."""
    try:
        return await handler(request)
    except GatewayError as error:
        return render_error(request, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        translated = GatewayError(exc.reason)
        translated.status = exc.status
        translated.kind = _HTTP_KINDS.get(exc.status, "http_error")
        response = render_error(request, translated)
        for name in ("Allow",):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except (ConnectionResetError, TimeoutError):
        raise  # the client went away or was too slow: nobody to answer
    except Exception:
        log.exception("unexpected error (request %s)", request.get(REQUEST_ID, "-"))
        return render_error(request, GatewayError("internal error"))


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (or keep a sane incoming one) and write the access log line."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else request.app[REQUEST_IDS].next()
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        if access_log.isEnabledFor(logging.INFO):
            _log_access(request, request_id, status, started)


def _log_access(request: web.Request, request_id: str, status: int, started: float) -> None:
    principal = request.get(PRINCIPAL)
    fields = {
        "request_id": request_id,
        "remote": request.app[GUARD].client_address(request),
        "method": request.method,
        "route": route_info(request).name,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "principal": principal.id if principal else "-",
    }
    # Only the route name, never the raw path or query: they may carry personal data.
    access_log.info(
        "%(remote)s %(method)s %(route)s %(status)d %(duration_ms).1fms "
        "principal=%(principal)s request_id=%(request_id)s",
        fields,
        extra=fields,
    )


@web.middleware
async def throttle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Per client address: a token bucket (429 with Retry-After past it)."""
    admission = await request.app[GUARD].admit(request, request.headers.get("Authorization"))
    if admission is not None:
        request[ADMISSION] = admission
    return await handler(request)


def signed_request(request: web.Request, authorization: str) -> SignedRequest:
    """What an OAuth 1.0a client signed: the method and the URI it addressed.

    Behind a trusted proxy (`rate_limit.trusted_proxies`) the URI's scheme and host are
    the proxy's `X-Forwarded-Proto` and `-Host`: the ones the client used.
    """
    if ALTERNATE_BODY in request:
        raise BadRequest(
            "an OAuth-signed request cannot use the alternate request syntax (?method=): "
            "send the request itself"
        )
    scheme, host = request.scheme, request.host
    if request.app[GUARD].trusts_peer(request):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    return SignedRequest(
        request.method,
        f"{scheme}://{host}{request.raw_path}",
        authorization,
        xapi_version=request.headers.get(VERSION_HEADER),
    )


async def authenticate_request(request: web.Request, authorization: str | None) -> Principal:
    """Who `authorization` proves, with the lockout, the metrics and the rate limit.

    For every way in: a request's Authorization header, or the web admin's login form.
    """
    attempts = request.app[METRICS].auth
    guard = request.app[GUARD]
    login_keys = guard.login_keys(request, authorization)
    admission = request.get(ADMISSION)  # with Redis: the lockout state read already
    try:
        # 429 before any bcrypt runs
        failing = await guard.check_lockout(login_keys, authorization, admission)
        authenticator = request.app[AUTHENTICATOR]
        signed = None
        oauth = authorization and authorization.lstrip()[:6].lower() == "oauth "
        if oauth and authenticator.takes_oauth:
            assert authorization is not None
            signed = signed_request(request, authorization.strip())
        principal = await authenticator.authenticate(authorization, signed)
    except Unauthorized:
        attempts.labels(_scheme_label(authorization), "bad_credentials").inc()
        await guard.login_failed(login_keys)
        raise
    except (TooManyRequests, AuthUnavailable) as refused:
        if isinstance(refused, AuthUnavailable):
            attempts.labels(_scheme_label(authorization), "error").inc()
        if refused.retry_after is not None:
            # A tarpit: answering a locked-out or overflowing guess at once would let a
            # flood come straight back; a second's wait costs us a sleeping coroutine.
            await asyncio.sleep(request.app[CONFIG].lockout.tarpit)
        raise
    await guard.login_succeeded(login_keys, authorization, failing)
    await guard.check_rate(
        f"principal:{principal.scheme}:{principal.id}", per_principal=True, admission=admission
    )
    return principal


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is calling (401), which xAPI version (400), whether they may (403)."""
    info = route_info(request)
    if info.public or (info.xapi and request.method == "OPTIONS"):
        # A CORS preflight never carries credentials. With server.cors the gateway answered
        # it already; without, the LRS behind does, so browser clients keep working as they
        # did against the LRS itself: sent WITHOUT the gateway's credential (passthrough).
        return await handler(request)
    principal = await authenticate_request(request, request.headers.get("Authorization"))
    check_tenant(request.app, principal)
    request[PRINCIPAL] = principal
    attempts = request.app[METRICS].auth
    if info.xapi:
        request.app[VERSIONS].check(request.headers.get(VERSION_HEADER))
    resource = info.resource
    if resource is not None and not is_allowed(principal.scopes, resource, request.method):
        attempts.labels(principal.scheme, "forbidden").inc()
        raise Forbidden(f"the credentials lack the scope to {request.method} {info.name}")
    if principal.restriction is not None and info.xapi and resource is not None:
        principal.restriction.check_request(resource, request.method, request.query)
    attempts.labels(principal.scheme, "ok").inc()
    return await handler(request)


def _scheme_label(authorization: str | None) -> str:
    """A metric label from a fixed set, whatever the client sent."""
    if not authorization:
        return "none"
    scheme = authorization.strip().partition(" ")[0].lower()
    return scheme if scheme in ("basic", "bearer", "oauth") else "other"
