"""The forwarding headers the gateway sends storage in place of the client's own.

Policy: storage gets `X-Forwarded-For` (one address: the client as the gateway trusts it,
see `Guard.client_address` and `rate_limit.trusted_proxies`), `X-Forwarded-Proto` and
`X-Forwarded-Host` (the scheme and Host of the request as the gateway received it). A
storage LRS that trusts the gateway as its one proxy thus sees the real client; whatever a
client wrote in such headers itself is dropped (gateway.upstream.storage.CLIENT_ASSERTED_HEADERS),
and RFC 7239 `Forwarded` is not sent at all, so there is one source of truth.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from gateway.http.keys import GUARD

__all__ = ["forwarded_headers"]


def forwarded_headers(request: web.Request) -> dict[str, str]:
    """`X-Forwarded-For`/`-Proto`/`-Host` for the request to storage made for `request`."""
    headers = {"X-Forwarded-Proto": request.scheme}
    address = request.app[GUARD].client_address(request)
    try:
        # Only an address: a trusted proxy's chain may hold anything (`unknown`, tokens).
        ipaddress.ip_address(address)
        headers["X-Forwarded-For"] = address
    except ValueError:
        pass  # a Unix socket peer, or a proxy that did not say: better none than a guess
    host = request.host
    if host:
        headers["X-Forwarded-Host"] = host
    return headers
