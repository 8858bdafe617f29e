"""The credentials file, loaded off the loop and reloaded when it changes on disk."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.auth.credentials import (
    Credential,
    CredentialsError,
    ParsedCredentials,
    parse_credentials,
)
from gateway.failurelog import FailureLog
from gateway.xapi.scopes import ScopeSet

__all__ = ["CredentialStore"]

log = logging.getLogger(__name__)
_Stamp = tuple[int, int, int]


class CredentialStore:
    """Holds the last good credentials; a broken new file is logged and ignored."""

    def __init__(
        self,
        path: Path,
        *,
        account_homepage: str,
        scope_prefix: str,
        reload_interval: float,
        tenants: frozenset[str] = frozenset(),
    ) -> None:
        self.path = path
        self._tenants = tenants
        self._homepage = account_homepage
        self._prefix = scope_prefix
        self._interval = reload_interval
        self._users: dict[str, Credential] = {}
        self._stamp: _Stamp | None = None
        self._listeners: list[Callable[[], None]] = []
        self.max_cost = 12

    def get(self, username: str) -> Credential | None:
        """The credential for `username`, if any."""
        return self._users.get(username)

    def current(self, username: str) -> tuple[dict[str, Any], ScopeSet, str | None] | None:
        """(agent, scopes, tenant) of `username` now: how gateway tokens find their user."""
        credential = self._users.get(username)
        return (
            None if credential is None else (credential.agent, credential.scopes, credential.tenant)
        )

    def __len__(self) -> int:
        return len(self._users)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every successful reload (e.g. to clear an auth cache)."""
        self._listeners.append(listener)

    def _read(self) -> tuple[_Stamp, ParsedCredentials]:
        stat = os.stat(self.path)
        text = self.path.read_text(encoding="utf-8")
        parsed = parse_credentials(
            text,
            account_homepage=self._homepage,
            scope_prefix=self._prefix,
            tenants=self._tenants,
        )
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino), parsed

    async def load(self) -> None:
        """Load the file now; raise CredentialsError/OSError when it cannot be used."""
        try:
            stamp, parsed = await asyncio.to_thread(self._read)
        except UnicodeDecodeError:
            raise CredentialsError("the file is not UTF-8") from None
        for warning in parsed.warnings:
            log.warning("credentials file %s: %s", self.path, warning)
        self._users = parsed.users
        self._stamp = stamp
        costs = [int(c.secret.reveal()[4:6]) for c in parsed.users.values() if c.hashed]
        self.max_cost = max(costs, default=12)
        for listener in self._listeners:
            listener()
        log.info("credentials file %s: %d users loaded", self.path, len(parsed.users))

    async def _stamp_now(self) -> _Stamp | None:
        try:
            stat = await asyncio.to_thread(os.stat, self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    async def check_for_change(self) -> None:
        """Reload when the file's mtime, size or inode changed; keep the old one on error."""
        stamp = await self._stamp_now()
        if stamp is None:
            if self._stamp is not None:
                log.error(
                    "credentials file %s: cannot be read; keeping the last good one", self.path
                )
                self._stamp = None
            return
        if stamp == self._stamp:
            return
        try:
            await self.load()
        except (CredentialsError, OSError) as exc:
            self._stamp = stamp  # log a broken file once, not on every poll
            log.error(
                "credentials file %s: not reloaded, keeping the last good one: %s", self.path, exc
            )

    async def watch(self) -> None:
        """Poll for changes until cancelled; an unexpected failure is logged, then retried."""
        failing = FailureLog(log, f"watching the credentials file {self.path}")
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_for_change()
            except Exception as exc:  # check_for_change handles the expected ones itself
                failing.failed(exc, traceback=True)
