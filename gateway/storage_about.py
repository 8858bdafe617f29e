"""The storage LRS's /about extensions, for the gateway's own /about."""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.errors import GatewayError
from gateway.upstream import Upstream
from gateway.xapiversion import VERSION_HEADER

__all__ = ["StorageAbout"]


class StorageAbout:
    """Fetched at most once a minute; an LRS without /about (Ralph) simply has none."""

    ttl = 60.0

    def __init__(self) -> None:
        self._extensions: dict[str, Any] | None = None
        self._fetched_at = -self.ttl

    async def extensions(self, storage: Upstream, version: str) -> dict[str, Any] | None:
        """The storage's `extensions` object, if it has an /about with one."""
        if time.monotonic() - self._fetched_at < self.ttl:
            return self._extensions
        self._fetched_at = time.monotonic()
        self._extensions = None
        try:
            async with storage.request("GET", "about", decompress=True,
                                       headers={VERSION_HEADER: version}) as answer:
                if answer.status == 200:
                    document = json.loads(await answer.read())
                    found = document.get("extensions") if isinstance(document, dict) else None
                    self._extensions = found if isinstance(found, dict) and found else None
        except (GatewayError, ValueError):
            pass  # nothing to add; the gateway's /about still answers
        return self._extensions
