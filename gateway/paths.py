"""Which request paths may be sent to an upstream LRS (pure: no aiohttp here)."""

from __future__ import annotations

from urllib.parse import unquote

from gateway.errors import BadRequest

__all__ = ["check_relative_path"]


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
