"""Which request paths may be sent to an upstream LRS (pure: no aiohttp here)."""

from __future__ import annotations

from urllib.parse import unquote

from gateway.errors import BadRequest

__all__ = ["check_not_a_resource", "check_origin_form", "check_relative_path"]


def check_relative_path(raw_tail: str) -> str:
    """Refuse a path (still percent-encoded) that could leave the upstream's xAPI base."""
    segments = raw_tail.split("/")
    for segment in segments:
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded or "\0" in decoded:
            raise BadRequest("the request path is not allowed")
    if any(segment == "" for segment in segments[:-1]):
        raise BadRequest("the request path is not allowed")
    return raw_tail


def check_origin_form(raw_target: str) -> str:
    """Refuse a request target that is not origin-form (`/path?query`); return it.

    aiohttp routes an absolute-form target (`GET http://other/xAPI/statements`) on the path
    it parsed out of it, while the raw target, which the upstream URL is built from, still
    holds the scheme and host: what was authorised and what is forwarded would differ.
    """
    if not raw_target.startswith("/"):
        raise BadRequest("the request target must be a path (origin-form), not an absolute URL")
    return raw_target


# The xAPI resources the gateway routes itself (gateway.http.routes), lower-cased.
_GATEWAY_RESOURCES = frozenset(
    {
        "statements",
        "about",
        "activities",
        "activities/state",
        "activities/profile",
        "agents",
        "agents/profile",
    }
)


def check_not_a_resource(raw_tail: str) -> str:
    """Refuse an `other` path that an LRS could take for a resource the gateway checks.

    Many LRSes route without regard to case or a trailing slash (Learning Locker's Express
    does): `/xAPI/STATEMENTS` must not reach their statements endpoint past the checks,
    stamping and outbox of `/xAPI/statements`.
    """
    if unquote(raw_tail).strip("/").lower() in _GATEWAY_RESOURCES:
        raise BadRequest(
            "the xAPI resources are spelt as in the specification (e.g. /xAPI/statements)"
        )
    return raw_tail
