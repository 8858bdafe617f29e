"""Rustici-style auth callback: Basic credentials verified by POSTing them to a URL."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import aiohttp

from gateway.auth.base import decode_basic
from gateway.auth.principal import Principal
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import CallbackConfig
from gateway.errors import AuthUnavailable, Unauthorized
from gateway.secret import keyed_digest
from gateway.ttlcache import TtlCache
from gateway.xapi.scopes import ROLE_SCOPES, normalize_scopes

__all__ = ["PERMISSION_ROLES", "CallbackBackend"]

log = logging.getLogger(__name__)
PERMISSION_ROLES: dict[str, str | None] = {
    "ROOT": "root",
    "READONLY": "read-only",
    "WRITEONLY": "write-only",
    "USER": "user",
    "NONE": None,
}


class CallbackBackend:
    """`Authorization: Basic` checked by the callback; successes and failures cached apart."""

    challenge = 'Basic realm="xAPI", charset="UTF-8"'

    def __init__(
        self, session: aiohttp.ClientSession, config: CallbackConfig, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        assert config.url is not None
        self._session = session
        self._config = config
        self._url = config.url
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._key = secrets.token_bytes(32)
        # None marks a cached failure.
        self._cache: TtlCache[bytes, Principal | None] = TtlCache(
            config.cache_max_size, clock=clock
        )
        self._inflight: dict[bytes, asyncio.Future[Principal | None]] = {}
        self.calls = 0  # callback requests made (tests and metrics read it)

    def cache_figures(self) -> tuple[str, int, int]:
        """(scheme, hits, misses) of the answer cache, for metrics."""
        return "callback", self._cache.hits, self._cache.misses

    def _digest(self, username: str, password: str) -> bytes:
        message = username.encode("utf-8") + b"\0" + password.encode("utf-8")
        return keyed_digest(self._key, message)

    async def authenticate(self, scheme: str, credentials: str) -> Principal | None:
        """Check Basic credentials with the callback; None for any other scheme."""
        if scheme != "basic":
            return None
        username, password = decode_basic(credentials)
        digest = self._digest(username, password)
        found, principal = self._cache.get(digest)
        if not found:
            waiting = self._inflight.get(digest)
            if waiting is not None:  # the same credentials are being checked right now
                principal = await asyncio.shield(waiting)
            else:
                future: asyncio.Future[Principal | None] = (
                    asyncio.get_running_loop().create_future()
                )
                self._inflight[digest] = future
                try:
                    principal = await self._ask(username, password, f"Basic {credentials}", digest)
                    future.set_result(principal)
                except BaseException as exc:
                    future.set_exception(exc)
                    future.exception()  # retrieved: nobody else may be waiting
                    raise
                finally:
                    del self._inflight[digest]
        if principal is None:
            raise Unauthorized("the credentials were not verified")
        return principal

    async def _ask(
        self, username: str, password: str, header: str, digest: bytes
    ) -> Principal | None:
        body = {"username": username, "password": password, "authorizationHeader": header}
        self.calls += 1
        try:
            async with self._session.post(
                self._url, json=body, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise ValueError(f"it answered HTTP {response.status}")
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            log.error("auth callback: cannot verify credentials: %s", reason)
            raise AuthUnavailable("the credentials cannot be checked right now") from None
        return self._decide(username, answer, digest)

    def _decide(self, username: str, answer: Any, digest: bytes) -> Principal | None:
        if not isinstance(answer, dict) or not isinstance(answer.get("verified"), bool):
            log.error("auth callback: answer without a boolean 'verified'")
            raise AuthUnavailable("the credentials cannot be checked right now")
        permission = answer.get("permission")
        expire = answer.get("expireTimeInSeconds")
        if (permission not in PERMISSION_ROLES and answer["verified"]) or (
            expire is not None
            and (isinstance(expire, bool) or not isinstance(expire, int) or expire < 0)
        ):
            log.error("auth callback: answer with an unknown permission or expiry")
            raise AuthUnavailable("the credentials cannot be checked right now")
        if answer.get("invalidateEntireCache") is True:
            self._cache.clear()
        if not answer["verified"]:
            self._cache.put(digest, None, self._config.cache_seconds_failure)
            return None
        role = PERMISSION_ROLES[str(permission)]
        scopes, _ = normalize_scopes(ROLE_SCOPES[role] if role else ())
        tenant = answer.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            log.error("auth callback: answer with a 'tenant' that is not a name")
            raise AuthUnavailable("the credentials cannot be checked right now")
        principal = Principal(
            id=username,
            scheme="callback",
            scopes=scopes,
            agent={
                "objectType": "Agent",
                "account": {"homePage": self._config.account_homepage, "name": username},
            },
            tenant=tenant,
        )
        ttl = float(expire) if expire is not None else self._config.cache_seconds_success
        self._cache.put(digest, principal, ttl)
        return principal
