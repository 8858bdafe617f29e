"""HTTP Basic against the credentials file and database, with a TTL cache of successes."""

from __future__ import annotations

import secrets

from async_lru import alru_cache

from gateway.auth.base import decode_basic
from gateway.auth.passwords import PasswordChecker
from gateway.auth.principal import Principal
from gateway.auth.sources import CredentialSources
from gateway.errors import Unauthorized
from gateway.secret import keyed_digest

__all__ = ["BasicBackend"]


class BasicBackend:
    """`Authorization: Basic`: bcrypt once per credential per TTL, equal time for unknown users."""

    challenge = 'Basic realm="xAPI", charset="UTF-8"'

    def __init__(
        self,
        store: CredentialSources,
        checker: PasswordChecker,
        *,
        cache_max_size: int,
        cache_ttl: float,
    ) -> None:
        self._store = store
        self._checker = checker
        # The cache key is a keyed digest: a memory dump shows neither password nor a
        # digest that could be brute-forced offline without this per-process key.
        self._key = secrets.token_bytes(32)
        # A check in flight holds a cache slot too: room for every check the bcrypt queue
        # admits, so a flood of wrong passwords never evicts a cached success.
        self._verified = alru_cache(
            maxsize=cache_max_size + checker.capacity, ttl=cache_ttl, key=self._digest
        )(self._verify)
        store.on_change(self._verified.cache_clear)

    def _digest(self, username: str, password: str) -> bytes:
        message = username.encode("utf-8") + b"\0" + password.encode("utf-8", "surrogatepass")
        return keyed_digest(self._key, message)

    async def _verify(self, username: str, password: str) -> Principal:
        credential = self._store.get(username)
        if credential is None:  # removed by a reload since authenticate() looked
            raise Unauthorized("unknown user or wrong password")
        if credential.hashed:
            ok = await self._checker.check(password, credential.secret.reveal())
        else:
            ok = self._checker.check_plain(password, credential.secret.reveal())
        if not ok:
            raise Unauthorized("unknown user or wrong password")
        return Principal(
            id=username,
            agent=credential.agent,
            scopes=credential.scopes,
            scheme="basic",
            tenant=credential.tenant,
        )

    def cache_figures(self) -> tuple[str, int, int]:
        """(scheme, hits, misses) of the verification cache, for metrics."""
        info = self._verified.cache_info()
        return "basic", info.hits, info.misses

    async def authenticate(self, scheme: str, credentials: str) -> Principal | None:
        """Check Basic credentials; None for any other scheme."""
        if scheme != "basic":
            return None
        username, password = decode_basic(credentials)
        # A credential another process made or rotated a moment ago: look once more.
        if self._store.get(username) is None and not (
            await self._store.refresh_on_miss() and self._store.get(username) is not None
        ):
            # Unknown users never enter the cache, but pay the same bcrypt time.
            await self._checker.dummy_check(password, self._store.max_cost)
            raise Unauthorized("unknown user or wrong password")
        try:
            principal = await self._verified(username, password)
        except Unauthorized:
            if not await self._store.refresh_on_miss():
                raise
            principal = await self._verified(username, password)
        self._store.used(username)
        return principal
