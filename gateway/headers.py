"""HTTP header names the gateway's own clients manage: no configuration may set them."""

from __future__ import annotations

__all__ = ["RESERVED_HEADERS"]

# Set by the HTTP client itself: from configuration they would make a conflicting copy.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "keep-alive",
    }
)
