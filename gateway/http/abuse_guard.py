"""The abuse controls as the middlewares use them: rate limits and login lockout."""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass

from aiohttp import web

from gateway.auth.base import decode_basic
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import LockoutConfig, RateLimitConfig
from gateway.errors import StoreUnavailable, TooManyRequests, Unauthorized
from gateway.http.abuse_limits import FailureLockout, TokenBuckets, client_address
from gateway.secret import keyed_digest
from gateway.store.shared_limits import SharedLimits, SharedLimitsDown
from gateway.ttlcache import TtlCache

log = logging.getLogger(__name__)
_CONSUMER_KEY = re.compile(r'oauth_consumer_key="([^"]*)"')

__all__ = ["Admission", "Guard", "lockout_key"]


def lockout_key(*, username: str | None = None, address: str | None = None) -> str:
    """The lockout key of a username or an address, as `Guard.login_keys` makes them."""
    if username is not None:
        # login_keys keeps a username's first 256 bytes.
        return "user:" + username.encode("utf-8")[:256].decode("utf-8", "replace")
    assert address is not None
    try:
        address = str(ipaddress.ip_address(address.strip()))  # ::1 however it is written
    except ValueError:
        address = address.strip()[:64]  # a forwarded hop that is not an address
    return f"ip:{address}"


@dataclass(frozen=True, slots=True)
class Admission:
    """What `Guard.admit` learnt from Redis for the rest of the request's checks."""

    lockout_keys: tuple[str, ...]
    lockout: list[tuple[float, bool]]  # (seconds locked, has failures) per key
    principal: str | None  # the Basic principal's bucket key, if its token was asked for
    principal_wait: float | None  # None: not taken (a key was locked out)


def _basic_principal(authorization: str | None) -> str | None:
    """The rate-limit key a Basic login will have once proven (`principal:basic:USER`).

    Decoded as the Basic backend decodes it, so the key is the one `check_rate` gets.
    """
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _ = decode_basic(credentials)
    except Unauthorized:
        return None
    return "principal:basic:" + username


class Guard:
    """Holds the buckets and lockout state (bounded in memory) of one app.

    With `shared` (Redis), every replica counts together; whenever Redis cannot answer,
    this process counts alone, as it does without Redis. Lockouts learnt from Redis are
    kept here too, so a username locked out stays locked out while Redis is down.
    """

    def __init__(
        self,
        rate_limit: RateLimitConfig,
        lockout: LockoutConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        shared: SharedLimits | None = None,
    ) -> None:
        self.shared = shared
        self._rate_limit = rate_limit
        self._trusted = [
            ipaddress.ip_network(cidr, strict=False) for cidr in rate_limit.trusted_proxies
        ]
        self._rates_on = rate_limit.enabled
        self._per_ip = TokenBuckets(
            rate_limit.per_ip_rate, rate_limit.per_ip_burst, rate_limit.max_tracked, clock=clock
        )
        self._per_principal = TokenBuckets(
            rate_limit.per_principal_rate,
            rate_limit.per_principal_burst,
            rate_limit.max_tracked,
            clock=clock,
        )
        self._lockout_on = lockout.enabled
        self._lockout_config = lockout
        self.lockout = FailureLockout(
            lockout.max_failures, lockout.window, lockout.block, lockout.max_tracked, clock=clock
        )
        # Credentials that just succeeded (by keyed digest): they pass a locked address, so
        # a flood from a shared address (NAT, proxy) does not lock out its valid users.
        self._key = secrets.token_bytes(32)
        self._proven: TtlCache[bytes, bool] = TtlCache(lockout.max_tracked, clock=clock)
        self._proven_ttl = lockout.block

    def trusts_peer(self, request: web.Request) -> bool:
        """Whether the request came straight from one of `rate_limit.trusted_proxies`."""
        try:
            peer = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        return any(peer in network for network in self._trusted)

    def client_address(self, request: web.Request) -> str:
        """The caller's address, X-Forwarded-For believed from trusted proxies only."""
        return client_address(request.remote, request.headers.get("X-Forwarded-For"), self._trusted)

    async def check_rate(
        self, key: str, *, per_principal: bool, admission: Admission | None = None
    ) -> None:
        """429 when `key` has spent its tokens (taken already by `admit` when it matches)."""
        if not self._rates_on:
            return
        wait: float | None = None
        if admission is not None and admission.principal == key:
            wait = admission.principal_wait
        if wait is None and self.shared is not None:
            limits = self._rate_limit
            rate, burst = (
                (limits.per_principal_rate, limits.per_principal_burst)
                if per_principal
                else (limits.per_ip_rate, limits.per_ip_burst)
            )
            with contextlib.suppress(SharedLimitsDown):
                wait = await self.shared.take(key, rate, burst)
        if wait is None:
            buckets = self._per_principal if per_principal else self._per_ip
            wait = buckets.take(key)
        if wait > 0:
            raise TooManyRequests("too many requests; slow down", retry_after=wait)

    async def admit(self, request: web.Request, authorization: str | None) -> Admission | None:
        """The address's rate limit (429 past it), first thing for every request.

        With Redis, the same round trip reads the lockout state of a Basic login and takes
        its principal's token: the answers come back for `check_lockout` and `check_rate`,
        so a cached Basic request costs one round trip instead of three.
        """
        address = f"ip:{self.client_address(request)}"
        if self.shared is None or not self._rates_on:
            await self.check_rate(address, per_principal=False)
            return None
        limits = self._rate_limit
        keys = self.login_keys(request, authorization)
        principal = _basic_principal(authorization) if keys else None
        try:
            wait, taken, lockout = await self.shared.admit(
                (address, limits.per_ip_rate, limits.per_ip_burst),
                None
                if principal is None
                else (principal, limits.per_principal_rate, limits.per_principal_burst),
                keys,
            )
        except SharedLimitsDown:
            await self.check_rate(address, per_principal=False)
            return None
        if wait > 0:
            raise TooManyRequests("too many requests; slow down", retry_after=wait)
        return Admission(keys, lockout, principal, taken)

    def login_keys(self, request: web.Request, authorization: str | None) -> tuple[str, ...]:
        """Lockout keys of a Basic (or OAuth) attempt: its username (consumer key), address."""
        if not self._lockout_on or not authorization:
            return ()
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "oauth":  # a bad signature counts against the consumer and the address
            address = f"ip:{self.client_address(request)}"
            found = _CONSUMER_KEY.search(credentials)
            return (address,) if found is None else (f"user:{found.group(1)[:256]}", address)
        if scheme != "basic":
            return ()
        address = f"ip:{self.client_address(request)}"
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return (address,)
        username = decoded.partition(b":")[0][:256].decode("utf-8", "replace")
        return (f"user:{username}", address)

    def _digest(self, authorization: str | None) -> bytes:
        return keyed_digest(self._key, (authorization or "").encode("utf-8", "replace"))

    async def check_lockout(
        self,
        keys: tuple[str, ...],
        authorization: str | None,
        admission: Admission | None = None,
    ) -> frozenset[str]:
        """429 while any key is locked out: no password check runs for it.

        A locked address still lets through credentials that succeeded lately. Returns
        the keys with failures to clear on a success (with Redis, those it holds).
        """
        if not keys:
            return frozenset()
        waits: list[float] | None = None
        failing = frozenset(keys)
        if self.shared is not None:
            with contextlib.suppress(SharedLimitsDown):
                if admission is not None and admission.lockout_keys == keys:
                    answers = admission.lockout
                else:
                    answers = await self.shared.blocked_for(keys)
                waits = [held for held, _ in answers]
                failing = frozenset(k for k, (_, has) in zip(keys, answers, strict=True) if has)
            for key, held in zip(keys, waits or (), strict=False):
                # Redis decides while it answers; kept here too, so a key locked out
                # stays locked out if Redis goes away (and one lifted is lifted here).
                if held > 0:
                    self.lockout.hold(key, held)
                elif self.lockout.blocked_for(key) > 0:
                    self.lockout.lift(key)
        if waits is None:  # no Redis, or it did not answer: this process's own count
            waits = [self.lockout.blocked_for(key) for key in keys]
        proven: bool | None = None
        for key, wait in zip(keys, waits, strict=True):
            if wait <= 0:
                continue
            if key.startswith("ip:"):
                if proven is None:
                    proven = self._proven.get(self._digest(authorization))[0]
                if proven:
                    continue
            raise TooManyRequests("too many failed logins; try again later", retry_after=wait)
        return failing

    async def login_failed(self, keys: tuple[str, ...]) -> None:
        """Count a failed login against its username and address; log a lockout once.

        Counted here too when Redis counts it: the count to fall back on if Redis fails.
        """
        config = self._lockout_config
        for key in keys:
            began = self.lockout.failed(key)
            if self.shared is not None:
                with contextlib.suppress(SharedLimitsDown):  # else this process's count decides
                    began = await self.shared.failed(
                        key, config.max_failures, config.window, config.block
                    )
            if began:
                kind, _, who = key.partition(":")
                # One line per lockout (not per refused guess); never the password.
                log.warning(
                    "lockout: %s %r blocked for %g s after %d failed logins within "
                    "%g s (lrs-gateway lockout clear lifts it)",
                    "username" if kind == "user" else "address",
                    who,
                    self._lockout_config.block,
                    self._lockout_config.max_failures,
                    self._lockout_config.window,
                )

    async def lift_lockout(self, key: str) -> bool:
        """Lift a lockout (key from `lockout_key`) at once; whether one was in force.

        Lifted in Redis too when it is shared; a Redis that does not answer is a 503 (the
        lockout would otherwise come back from it).
        """
        locked = self.lockout.lift(key)
        if self.shared is not None:
            try:
                locked = await self.shared.lift(key) or locked
            except SharedLimitsDown:
                raise StoreUnavailable(
                    "the shared limits (Redis) did not answer: the lockout is lifted in "
                    "this process only; try again"
                ) from None
        return locked

    async def login_succeeded(
        self,
        keys: tuple[str, ...],
        authorization: str | None,
        failing: frozenset[str] | None = None,
    ) -> None:
        """A success clears the username's failures, not the address's.

        One valid credential must not let a flood from the same address keep guessing; it is
        remembered instead, so it passes that address's lockout itself.
        """
        if not keys:
            return
        for key in keys:
            if key.startswith("user:"):
                self.lockout.succeeded(key)
                # Only what Redis holds (`failing`, from the lockout check): a success
                # costs no round trip of its own in the usual case.
                if self.shared is not None and (failing is None or key in failing):
                    with contextlib.suppress(SharedLimitsDown):
                        await self.shared.succeeded(key)
        self._proven.put(self._digest(authorization), True, self._proven_ttl)
