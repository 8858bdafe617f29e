"""The abuse controls as the middlewares use them: rate limits and login lockout."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import secrets

from aiohttp import web

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import LockoutConfig, RateLimitConfig
from gateway.errors import TooManyRequests
from gateway.http.abuse_limits import FailureLockout, TokenBuckets, client_address
from gateway.secret import keyed_digest
from gateway.ttlcache import TtlCache

log = logging.getLogger(__name__)

__all__ = ["Guard", "lockout_key"]


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


class Guard:
    """Holds the buckets and lockout state (bounded in memory) of one app."""

    def __init__(
        self, rate_limit: RateLimitConfig, lockout: LockoutConfig, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
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

    def client_address(self, request: web.Request) -> str:
        """The caller's address, X-Forwarded-For believed from trusted proxies only."""
        return client_address(request.remote, request.headers.get("X-Forwarded-For"), self._trusted)

    def check_rate(self, key: str, *, per_principal: bool) -> None:
        """429 when `key` has spent its tokens."""
        if not self._rates_on:
            return
        buckets = self._per_principal if per_principal else self._per_ip
        wait = buckets.take(key)
        if wait > 0:
            raise TooManyRequests("too many requests; slow down", retry_after=wait)

    def login_keys(self, request: web.Request, authorization: str | None) -> tuple[str, ...]:
        """Lockout keys of a Basic login attempt: its username and its address."""
        if not self._lockout_on or not authorization:
            return ()
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
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

    def check_lockout(self, keys: tuple[str, ...], authorization: str | None) -> None:
        """429 while any key is locked out: no password check runs for it.

        A locked address still lets through credentials that succeeded lately.
        """
        proven: bool | None = None
        for key in keys:
            wait = self.lockout.blocked_for(key)
            if wait <= 0:
                continue
            if key.startswith("ip:"):
                if proven is None:
                    proven = self._proven.get(self._digest(authorization))[0]
                if proven:
                    continue
            raise TooManyRequests("too many failed logins; try again later", retry_after=wait)

    def login_failed(self, keys: tuple[str, ...]) -> None:
        """Count a failed login against its username and address; log a lockout once."""
        for key in keys:
            if self.lockout.failed(key):
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

    def lift_lockout(self, key: str) -> bool:
        """Lift a lockout (key from `lockout_key`) at once; whether one was in force."""
        return self.lockout.lift(key)

    def login_succeeded(self, keys: tuple[str, ...], authorization: str | None) -> None:
        """A success clears the username's failures, not the address's.

        One valid credential must not let a flood from the same address keep guessing; it is
        remembered instead, so it passes that address's lockout itself.
        """
        if not keys:
            return
        for key in keys:
            if key.startswith("user:"):
                self.lockout.succeeded(key)
        self._proven.put(self._digest(authorization), True, self._proven_ttl)
