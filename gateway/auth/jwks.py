"""An OpenID provider's discovery document and signing keys, fetched off the request path."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp
import jwt

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.failurelog import FailureLog

__all__ = ["ProviderKeys"]

log = logging.getLogger(__name__)
_BACKOFF_CAP = 60.0


class ProviderKeys:
    """Discovery with retries, JWKS with a TTL, and rate-limited refetch on an unknown kid."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        issuer: str,
        *,
        timeout: float,
        refresh_interval: float,
        unknown_kid_interval: float,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.issuer = issuer
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._refresh_interval = refresh_interval
        self._unknown_kid_interval = unknown_kid_interval
        self._jwks_uri: str | None = None
        # Where people sign in (the web admin's single sign-on), once discovered.
        self.authorization_endpoint: str | None = None
        self.token_endpoint: str | None = None
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._last_refetch = -unknown_kid_interval
        self._lock = asyncio.Lock()
        self.problem: str | None = "discovery has not succeeded yet"
        self.refreshes = 0  # JWKS fetches so far (tests and metrics read it)

    async def _get_json(self, url: str) -> Any:
        async with self._session.get(url, timeout=self._timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            return await response.json(content_type=None)

    async def _discover(self) -> None:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            found = document.get("issuer") if isinstance(document, dict) else None
            raise ValueError(
                f"the discovered issuer {found!r} is not the configured "
                f"{self.issuer!r} (they must match exactly)"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        self._jwks_uri = jwks_uri
        for name in ("authorization_endpoint", "token_endpoint"):
            value = document.get(name)
            setattr(self, name, value if isinstance(value, str) else None)
        await self._fetch_keys()

    async def _fetch_keys(self) -> None:
        assert self._jwks_uri is not None
        data = await self._get_json(self._jwks_uri)
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in data.get("keys", []) if isinstance(data, dict) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type we cannot use (e.g. an encryption-only key)
            keys[key.key_id] = key
        if not keys:
            raise ValueError("the JWKS holds no usable signing key")
        self._keys = keys
        self._fetched_at = self._clock.monotonic()
        self.refreshes += 1

    async def run(self) -> None:
        """Discover until it works (backoff with jitter), then refresh on the interval."""
        delay = 1.0
        failing = FailureLog(log, f"OIDC provider {self.issuer}", clock=self._clock)
        while True:
            try:
                async with self._lock:
                    await self._discover()
                if self.problem is not None:
                    log.info("OIDC provider %s: discovered, %d keys", self.issuer, len(self._keys))
                self.problem = None
                delay = 1.0
                await self._clock.sleep(self._refresh_interval)
                continue
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                # Keep the keys we have: a provider blip must not lock everyone out.
                if not self._keys:
                    self.problem = f"OIDC discovery failed: {exc}"
                log.warning("OIDC provider %s: %s; retrying in %.0f s", self.issuer, exc, delay)
            except Exception as exc:  # a bug or a document we did not foresee: keep trying
                if not self._keys:
                    self.problem = f"OIDC discovery failed: {type(exc).__name__}: {exc}"
                failing.failed(exc, traceback=True)
            await self._clock.sleep(delay * self._rng.uniform(0.5, 1.0))
            delay = min(delay * 2, _BACKOFF_CAP)

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The signing key named `kid` (the only key, for a token without kid)."""
        found = self._lookup(kid)
        if found is not None or self._jwks_uri is None:
            return found
        # Keys rotate: refetch once for an unknown kid, but never more often than the
        # interval, so a flood of made-up kids cannot hammer the provider.
        async with self._lock:
            found = self._lookup(kid)
            now = self._clock.monotonic()
            if found is None and now - self._last_refetch >= self._unknown_kid_interval:
                self._last_refetch = now
                try:
                    await self._fetch_keys()
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    log.warning("OIDC provider %s: JWKS refetch failed: %s", self.issuer, exc)
                found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    @property
    def ready(self) -> bool:
        """Whether keys are known (discovery succeeded at least once)."""
        return bool(self._keys)
