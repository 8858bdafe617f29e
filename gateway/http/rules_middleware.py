"""The one place the xAPI request-level rules (gateway.xapi.request_rules) are applied."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.http.bodies import read_limited
from gateway.http.keys import ALTERNATE_BODY, CONFIG
from gateway.http.route_info import route_info
from gateway.xapi.request_rules import (
    DOCUMENT_RESOURCES,
    check_merge_document,
    check_query,
    check_repeats,
)
from gateway.xapi.versions import VERSION_HEADER

__all__ = ["request_rules_middleware"]

# Route name → the resource name gateway.xapi.request_rules knows; other routes have no rules
# (xapi.other is an LRS's own extension: its parameters are its business).
_RESOURCES = {
    "xapi.statements": "statements",
    "xapi.state": "state",
    "xapi.activity_profile": "activity_profile",
    "xapi.agent_profile": "agent_profile",
    "xapi.activities": "activities",
    "xapi.agents": "agents",
    "xapi.about": "about",
}


@web.middleware
async def request_rules_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """400 for query parameters (and document merges) the xAPI spec does not allow.

    Runs after auth (401/403 come first) and, as the alternate syntax middleware is outer,
    on the ordinary request an alternate-syntax one stands for.
    """
    resource = _RESOURCES.get(route_info(request).name)
    if resource is None or request.method == "OPTIONS":  # a CORS preflight: not xAPI's
        return await handler(request)
    query = request.query
    if request.app[CONFIG].xapi.validation == "basic":
        # Kept even in basic mode: with a repeated parameter the gateway (read/mine, the
        # PUT id it checked) and the LRS could each act on another value.
        check_repeats(query)
        return await handler(request)
    version = request.headers.get(VERSION_HEADER, "")
    check_query(resource, request.method, query, v2=version.lstrip().startswith("2."))
    if request.method == "POST" and resource in DOCUMENT_RESOURCES:
        body = await read_limited(request, request.app[CONFIG].server.max_body_size)
        check_merge_document(request.content_type, body)
        # The passthrough sends exactly the bytes checked here (its stream is spent).
        request[ALTERNATE_BODY] = body
    return await handler(request)
