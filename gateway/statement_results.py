"""GET /statements answers: `more` links mapped to the gateway, read/mine filtering (pure)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from yarl import URL

from gateway.agents import authority_includes

__all__ = ["gateway_more", "keep_own", "upstream_tail_of_more"]


def upstream_tail_of_more(more: str, upstream_base_path: str) -> str | None:
    """The part of an upstream `more` link after its xAPI base (path and query, encoded).

    None when the link does not lead back under the upstream's base path.
    """
    url = URL(more, encoded=True)
    path = url.raw_path
    if not path.startswith(upstream_base_path):
        return None
    tail = path[len(upstream_base_path):]
    return tail + (f"?{url.raw_query_string}" if url.raw_query_string else "")


def gateway_more(tail: str, public_url: str | None) -> str:
    """A `more` link under the gateway's own /xAPI/, absolute when a public URL is set."""
    base = public_url.rstrip("/") if public_url else ""
    return f"{base}/xAPI/{tail}"


def keep_own(statements: list[Any], agent_key: Hashable) -> list[Any]:
    """Only the statements whose authority is (or includes) the caller's agent."""
    return [s for s in statements
            if isinstance(s, dict) and authority_includes(s.get("authority"), agent_key)]
