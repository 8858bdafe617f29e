"""GET /statements answers: `more` links mapped to the gateway, read/mine filtering (pure)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from yarl import URL

from gateway.errors import BadRequest
from gateway.xapi.agents import authority_includes
from gateway.xapi.paths import check_relative_path

__all__ = ["gateway_more", "keep_own", "upstream_tail_of_more"]


def upstream_tail_of_more(more: Any, upstream_base_path: str) -> str | None:
    """The part of an upstream `more` link after its xAPI base (path and query, encoded).

    None when the link is not a URL, does not lead back under the upstream's base path, or
    would leave it (dot segments, encoded slashes): the caller answers 502 or stops paging.
    """
    if not isinstance(more, str):
        return None
    try:
        url = URL(more, encoded=True)
        path, query = url.raw_path, url.raw_query_string
    except (ValueError, TypeError, IndexError):  # yarl's answers to broken URLs
        return None
    if not path.startswith(upstream_base_path):
        return None
    tail = path[len(upstream_base_path) :]
    try:
        check_relative_path(tail)
    except BadRequest:
        return None
    return tail + (f"?{query}" if query else "")


def gateway_more(tail: str, public_url: str | None) -> str:
    """A `more` link under the gateway's own /xAPI/, absolute when a public URL is set."""
    base = public_url.rstrip("/") if public_url else ""
    return f"{base}/xAPI/{tail}"


def keep_own(statements: list[Any], agent_key: Hashable) -> list[Any]:
    """Only the statements whose authority is (or includes) the caller's agent."""
    return [
        s
        for s in statements
        if isinstance(s, dict) and authority_includes(s.get("authority"), agent_key)
    ]
