"""The storage LRS's /about: its xAPI versions (the gateway serves no others), its extensions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.http.keys import CONFIG, STORAGE, STORAGE_ABOUT, VERSIONS
from gateway.upstream.storage import StorageClient
from gateway.xapi.versions import VERSION_HEADER, Narrowing, VersionPolicy

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["About", "StorageAbout", "fetch_about", "storage_about_loop"]

log = logging.getLogger(__name__)
# Until storage has answered once, ask again sooner than the usual refresh.
_RETRY = 5.0


@dataclass(frozen=True)
class About:
    """Storage's /about; `versions` None when it has none (Ralph: 404) or lists none."""

    versions: tuple[str, ...] | None
    extensions: dict[str, Any] | None


async def fetch_about(storage: StorageClient, version: str, within: float | None) -> About | None:
    """Storage's /about, or None when it gave no usable answer (down, slow, 5xx, 401...).

    `within`: seconds for the whole exchange (None: storage.timeout alone).
    """
    try:
        async with asyncio.timeout(within):
            async with storage.request(
                "GET", "about", decompress=True, headers={VERSION_HEADER: version}
            ) as answer:
                if answer.status == 404:
                    return About(None, None)
                if answer.status != 200:
                    return None
                document = json.loads(await answer.read())
    except (GatewayError, TimeoutError):
        return None
    except ValueError:  # not JSON: no /about worth the name
        return About(None, None)
    if not isinstance(document, dict):
        return About(None, None)
    listed = document.get("version")
    versions = (
        tuple(listed)
        if isinstance(listed, list) and listed and all(isinstance(v, str) for v in listed)
        else None
    )
    found = document.get("extensions")
    return About(versions, found if isinstance(found, dict) and found else None)


class StorageAbout:
    """Storage's /about, fetched at most once a minute (and kept fresh by the loop)."""

    ttl = 60.0

    def __init__(self) -> None:
        self._extensions: dict[str, Any] | None = None
        self._fetched_at = -self.ttl
        self._served: tuple[str, ...] | None = None  # what was last logged as served

    async def extensions(self, storage: StorageClient, version: str) -> dict[str, Any] | None:
        """The storage's `extensions` object, if it has an /about with one."""
        if time.monotonic() - self._fetched_at < self.ttl:
            return self._extensions
        self._fetched_at = time.monotonic()
        about = await fetch_about(storage, version, None)
        self._extensions = about.extensions if about is not None else None
        return self._extensions

    async def learn(self, storage: StorageClient, policy: VersionPolicy, within: float) -> bool:
        """Narrow `policy` to storage's versions; False when storage did not answer."""
        about = await fetch_about(storage, policy.configured[0], within)
        if about is None:
            return False  # keep what is served: a blip must not widen or narrow it
        self._fetched_at = time.monotonic()
        self._extensions = about.extensions
        self._log_change(policy.narrow(about.versions), about.versions, storage.name)
        return True

    def _log_change(self, narrowing: Narrowing, spoken: tuple[str, ...] | None, name: str) -> None:
        # Logged once per change, not at every refresh.
        if narrowing.served == self._served:
            return
        first = self._served is None
        self._served = narrowing.served
        if narrowing.disjoint:
            log.error(
                "the %s LRS speaks xAPI %s (its /about), none of the configured "
                "xapi.versions %s: serving those, but storage will refuse them",
                name,
                ", ".join(spoken or ()),
                ", ".join(narrowing.served),
            )
        elif narrowing.dropped:
            log.warning(
                "the %s LRS speaks xAPI %s (its /about): serving %s of the "
                "configured xapi.versions, not %s",
                name,
                ", ".join(spoken or ()),
                ", ".join(narrowing.served),
                ", ".join(narrowing.dropped),
            )
        elif not first:
            log.info(
                "the %s LRS speaks every configured xAPI version again: serving %s",
                name,
                ", ".join(narrowing.served),
            )


async def _keep_learning(
    about: StorageAbout, storage: StorageClient, policy: VersionPolicy, within: float, learned: bool
) -> None:
    while True:
        await asyncio.sleep(about.ttl if learned else _RETRY)
        try:
            learned = await about.learn(storage, policy, within)
        except Exception:  # never let the loop die: the next round may work
            log.exception("learning the storage LRS's xAPI versions failed")


async def storage_about_loop(app: web.Application) -> AsyncIterator[None]:
    """At start (within storage.probe_timeout) and then every minute: learn storage's versions."""
    about, storage, policy = app[STORAGE_ABOUT], app[STORAGE], app[VERSIONS]
    within = app[CONFIG].storage.probe_timeout
    learned = await about.learn(storage, policy, within)
    task = asyncio.create_task(
        _keep_learning(about, storage, policy, within, learned), name="storage-about"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
