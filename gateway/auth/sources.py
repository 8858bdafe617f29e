"""Where Basic credentials are looked up: the credentials file first, then the database.

OAuth consumers (database credentials of auth type OAUTH) are held apart: their sealed
secrets are opened once per load, and Basic never accepts them.

The file wins on a username both hold (it is the operator's, edited by hand; a clash is
logged once per change). The database's credentials are held in memory, read again
whenever its generation moves (polled, so a change made by any process reaches this one
within a poll interval); a disabled, deleted, rotated or expired credential is refused at
once after that. When each credential was last used is written back coarsely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.auth.credentials import Credential
from gateway.auth.oauth1 import Consumer, ConsumerSecrets
from gateway.auth.store import CredentialStore
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.failurelog import FailureLog
from gateway.secret import Secret
from gateway.store.credentials import OAUTH, CredentialDatabase, StoredCredential
from gateway.xapi.scopes import ScopeSet, normalize_scopes

__all__ = ["CredentialSources"]

log = logging.getLogger(__name__)
LAST_USED_EVERY = 60.0  # seconds between writes of `last used` (coarse on purpose)
# On a username or secret this process does not know, the database is asked again (another
# process may have just made it), at most this often: a flood of wrong logins costs one
# small read per interval, not one per attempt.
MISS_REFRESH_EVERY = 0.1


def _account(homepage: str, username: str) -> dict[str, Any]:
    return {"objectType": "Agent", "account": {"homePage": homepage, "name": username}}


class CredentialSources:
    """The file over the database, as BasicBackend and gateway tokens read them."""

    def __init__(
        self,
        file: CredentialStore,
        database: CredentialDatabase | None,
        *,
        account_homepage: str,
        poll_interval: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        consumer_secrets: ConsumerSecrets | None = None,
    ) -> None:
        self.file = file
        self._consumer_secrets = consumer_secrets  # None: OAuth is off, consumers unused
        self._consumers: dict[str, tuple[StoredCredential, Consumer]] = {}
        self.database = database
        self._homepage = account_homepage
        self._interval = poll_interval
        self._clock = clock
        self._stored: dict[str, tuple[StoredCredential, Credential]] = {}
        self._stored_max_cost = 0  # of the database's hashes, kept with them
        self._generation: int | None = None
        self._listeners: list[Callable[[], None]] = []
        self._used: dict[str, float] = {}
        self._flushed_at = clock.monotonic()
        self._refreshed_at = -MISS_REFRESH_EVERY
        self._refreshing: asyncio.Future[bool] | None = None
        self._loading = asyncio.Lock()
        file.on_change(self._changed)

    # -- what BasicBackend and TokenBackend read ----------------------------------------

    def get(self, username: str) -> Credential | None:
        """The usable credential for `username` now, if any (the file's first)."""
        found = self.file.get(username)
        if found is not None:
            return found
        held = self._stored.get(username)
        if held is None or not held[0].usable(self._clock.now()):
            return None
        return held[1]

    def consumer(self, key: str) -> Consumer | None:
        """The usable OAuth consumer with this key now, if any."""
        held = self._consumers.get(key)
        if held is None or not held[0].usable(self._clock.now()):
            return None
        return held[1]

    def current(self, username: str) -> tuple[dict[str, Any], ScopeSet, str | None] | None:
        """(agent, scopes, tenant) of `username` now: how gateway tokens find their user."""
        credential = self.get(username)
        return (
            None if credential is None else (credential.agent, credential.scopes, credential.tenant)
        )

    @property
    def max_cost(self) -> int:
        """The highest bcrypt cost of any hash (unknown users are made to pay as much)."""
        return max(self.file.max_cost, self._stored_max_cost)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after the file or the database changed (to clear auth caches)."""
        self._listeners.append(listener)

    def used(self, username: str) -> None:
        """A request authenticated as `username` (kept until the next coarse write)."""
        if (username in self._stored or username in self._consumers) and username not in self._used:
            self._used[username] = self._clock.now()

    def __len__(self) -> int:
        return len(self.file) + len(self._stored) + len(self._consumers)

    # -- keeping the copy current -------------------------------------------------------

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def load(self) -> None:
        """Read the database's credentials now (the file is loaded by its own store)."""
        if self.database is None:
            return
        async with self._loading:
            await self._read()

    async def _read(self) -> None:
        """One read of the database; the caller holds `_loading`.

        Reads one at a time: a slow read begun before a change must not finish after (and
        overwrite) a read that saw it.
        """
        assert self.database is not None
        generation = await self.database.generation()
        stored = await self.database.all()
        held: dict[str, tuple[StoredCredential, Credential]] = {}
        consumers: dict[str, tuple[StoredCredential, Consumer]] = {}
        unopened = 0
        for record in stored:
            if self.file.get(record.username) is not None:
                continue
            scopes, _ = normalize_scopes(record.scopes)
            agent = record.agent or _account(self._homepage, record.username)
            if record.auth_type == OAUTH:
                secret = self._open(record)
                if secret is None:
                    unopened += 1
                else:
                    consumers[record.username] = (
                        record,
                        Consumer(record.username, secret, agent, scopes, record.tenant),
                    )
                continue
            held[record.username] = (
                record,
                Credential(record.username, record.secret_hash, True, scopes, agent, record.tenant),
            )
        clashes = sorted(r.username for r in stored if self.file.get(r.username) is not None)
        if clashes:
            log.warning(
                "credentials: %d username(s) are both in the credentials file and in the "
                "database; the file's are used: %s",
                len(clashes),
                ", ".join(clashes[:10]),
            )
        if unopened and self._consumer_secrets is not None:
            log.warning(
                "credentials: %d OAuth consumer secret(s) cannot be opened with "
                "auth.oauth.encryption_key (sealed with another key?): those consumers are "
                "refused until they are rotated",
                unopened,
            )
        changed = self._generation is not None
        self._stored, self._consumers, self._generation = held, consumers, generation
        self._stored_max_cost = max(
            (int(c.secret.reveal()[4:6]) for _, c in held.values()), default=0
        )
        if changed:
            self._changed()

    def _open(self, record: StoredCredential) -> Secret | None:
        if self._consumer_secrets is None or record.sealed_secret is None:
            return None
        return self._consumer_secrets.open(record.sealed_secret)

    async def refresh_on_miss(self) -> bool:
        """A login this process cannot match: read the database again if it changed.

        True when what the caller looked at is older than what is held now (the caller
        may look again): the database had changed, or another read (the poll's) took in a
        change while this one waited for it. Concurrent misses share one read, and reads
        are at most MISS_REFRESH_EVERY apart.
        """
        if self.database is None:
            return False
        seen = self._generation  # what the caller's lookup just read
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        now = self._clock.monotonic()
        if now - self._refreshed_at < MISS_REFRESH_EVERY:
            return False
        self._refreshed_at = now
        self._refreshing = asyncio.ensure_future(self._reload_if_changed(seen))
        try:
            return await asyncio.shield(self._refreshing)
        finally:
            self._refreshing = None

    async def _reload_if_changed(self, seen: int | None = None) -> bool:
        """Read the database again if its generation moved.

        Whether what is held once done is newer than `seen` (what a caller looked at).
        """
        assert self.database is not None
        async with self._loading:
            if seen is not None and self._generation != seen:
                return True  # another read took in a change while this one waited
            if await self.database.generation() == self._generation:
                return False
            await self._read()
            return True

    async def check_for_change(self) -> None:
        """Reload when another process (or this one) changed the database."""
        if self.database is None:
            return
        await self._reload_if_changed()
        if self._used and self._clock.monotonic() - self._flushed_at >= LAST_USED_EVERY:
            used, self._used = self._used, {}
            self._flushed_at = self._clock.monotonic()
            await self.database.touch(used)

    async def watch(self) -> None:
        """Poll the database until cancelled; a failure is logged and retried."""
        failing = FailureLog(log, "reading the credential database", clock=self._clock)
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.check_for_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a locked or broken database: keep the last good copy
                failing.failed(exc)
