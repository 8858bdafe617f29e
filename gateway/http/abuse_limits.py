"""Abuse controls kept in bounded memory: token buckets and login-failure lockout."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence

from gateway.clock import SYSTEM_CLOCK, Clock

__all__ = ["FailureLockout", "TokenBuckets", "client_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(
    remote: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str:
    """The client's address, as seen through our trusted proxies only.

    Walking X-Forwarded-For from the nearest hop, the first address that is not a trusted
    proxy is the client: whatever the client itself put further left is not believed.
    """
    address = remote or "-"
    if not trusted or not forwarded_for:
        return address
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    chain = [*hops, address]
    for hop in reversed(chain):
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            return hop[:64]  # not an address: nothing after it can be trusted
        if not any(ip in network for network in trusted):
            return hop
    return chain[0]


class TokenBuckets:
    """One token bucket per key (`rate` per second, up to `burst`), LRU-bounded."""

    def __init__(
        self, rate: float, burst: int, max_keys: int, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._monotonic = clock.monotonic  # bound once: a check costs one call, as before
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Spend a token: 0 when allowed, else the seconds until one is available."""
        now = self._monotonic()
        tokens, stamp = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        if tokens >= 1.0:
            self._remember(key, (tokens - 1.0, now))
            return 0.0
        self._remember(key, (tokens, now))
        return (1.0 - tokens) / self._rate

    def _remember(self, key: str, value: tuple[float, float]) -> None:
        self._buckets[key] = value
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)  # the longest idle: a full bucket anyway

    def __len__(self) -> int:
        return len(self._buckets)


class FailureLockout:
    """After `max_failures` within `window` seconds a key is blocked for `block` seconds."""

    def __init__(
        self,
        max_failures: int,
        window: float,
        block: float,
        max_keys: int,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._monotonic = clock.monotonic
        self._max_failures = max_failures
        self._window = window
        self._block = block
        self._max_keys = max_keys
        # key -> (failures in the current window, window start, blocked until)
        self._state: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def blocked_for(self, key: str) -> float:
        """Seconds `key` stays blocked (0 when it may try)."""
        state = self._state.get(key)
        if state is None:
            return 0.0
        return max(0.0, state[2] - self._monotonic())

    def failed(self, key: str) -> bool:
        """Count a failure; block the key at the limit (True: a lockout begins now).

        Guesses already in flight when a key is blocked still fail and extend the block,
        but do not begin another lockout.
        """
        now = self._monotonic()
        count, start, until = self._state.get(key, (0, now, 0.0))
        was_blocked = until > now
        if now - start > self._window:
            count, start = 0, now
        count += 1
        blocked = count >= self._max_failures
        if blocked:
            until, count, start = now + self._block, 0, now
        self._state[key] = (count, start, until)
        self._state.move_to_end(key)
        if len(self._state) > self._max_keys:
            self._state.popitem(last=False)
        return blocked and not was_blocked

    def hold(self, key: str, seconds: float) -> None:
        """Block `key` for at least `seconds` from now (a lockout learnt from elsewhere)."""
        now = self._monotonic()
        count, start, until = self._state.get(key, (0, now, 0.0))
        self._state[key] = (count, start, max(until, now + seconds))
        self._state.move_to_end(key)
        if len(self._state) > self._max_keys:
            self._state.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """A success forgets the key's failures."""
        self._state.pop(key, None)

    def lift(self, key: str) -> bool:
        """An admin's decision: forget the key's failures; whether it was blocked."""
        blocked = self.blocked_for(key) > 0
        self._state.pop(key, None)
        return blocked

    def __len__(self) -> int:
        return len(self._state)
