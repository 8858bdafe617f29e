"""Rate limits and login lockouts counted in Redis, so every replica counts together.

Each operation is one atomic Lua script (one round trip), timed by Redis's own clock so
replicas on different machines agree. Any failure (Redis down, slow, refusing) raises
`SharedLimitsDown`: the caller then counts in its own process, which is what a gateway
without Redis does; `usable` says whether to try Redis now (after a failure it waits
`retry_interval` before trying again, so requests do not each wait out the timeout).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # the `redis` extra is not installed: limits per process only
    aioredis = None  # type: ignore[assignment]
    RedisError = OSError  # type: ignore[assignment,misc]

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import ConfigError
from gateway.secret import Secret

__all__ = ["SharedLimits", "SharedLimitsDown"]

log = logging.getLogger(__name__)

# Token bucket: (rate, burst) -> seconds to wait (0: a token was taken). Floats travel as
# strings: Redis would truncate a Lua number to an integer.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(held[1]) or burst
local stamp = tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""

# A request's admission, in one round trip: KEYS = the address's bucket, a principal's
# bucket, then (blocked, failures) per lockout key; ARGV = address rate and burst,
# principal rate and burst, whether to take the principal's token (only when no lockout
# key is blocked). -> {address wait, principal wait or "", pttl, exists, pttl, exists...}
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function take(key, rate, burst)
  local held = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens = tonumber(held[1]) or burst
  local stamp = tonumber(held[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'stamp', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  return tostring(wait)
end
local out = {take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])), ''}
local blocked = false
for i = 3, #KEYS, 2 do
  local pttl = redis.call('PTTL', KEYS[i])
  if pttl > 0 then blocked = true end
  out[#out + 1] = pttl
  out[#out + 1] = redis.call('EXISTS', KEYS[i + 1])
end
if ARGV[5] == '1' and not blocked then
  out[2] = take(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
end
return out
"""

# A failed login: (max_failures, window ms, block ms) -> 1 when a lockout begins now.
# Failures in flight while blocked extend the block but begin no new lockout.
_FAILED = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  local was = redis.call('EXISTS', KEYS[2])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  if was == 1 then return 0 end
  return 1
end
return 0
"""


class SharedLimitsDown(Exception):
    """Redis could not answer: count in this process instead."""


class SharedLimits:
    """Token buckets and failure lockouts in one Redis, for every replica."""

    def __init__(
        self,
        url: str,
        *,
        password: Secret | None = None,
        timeout: float = 0.25,
        retry_interval: float = 5.0,
        prefix: str = "lrs-gateway:",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if aioredis is None:
            raise ConfigError(
                "limits.shared_url is set, but redis-py is not installed: "
                "pip install 'lrs-gateway[redis]'"
            )
        self._client: Any = aioredis.from_url(
            url,
            password=password.reveal() if password is not None else None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self._take = self._client.register_script(_TAKE)
        self._failed = self._client.register_script(_FAILED)
        self._admit = self._client.register_script(_ADMIT)
        self._prefix = prefix
        self._clock = clock
        self._retry_interval = retry_interval
        self._down_until = 0.0
        self.up = True
        self.fallbacks = 0  # calls answered in this process instead (metrics)

    def __repr__(self) -> str:
        return "SharedLimits(<redis>)"  # never the URL: it may hold a password

    async def close(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    @property
    def usable(self) -> bool:
        """Whether to ask Redis now (not while a recent failure's pause lasts)."""
        return self.up or self._clock.monotonic() >= self._down_until

    def _failed_call(self, exc: BaseException) -> SharedLimitsDown:
        self.fallbacks += 1
        self._down_until = self._clock.monotonic() + self._retry_interval
        if self.up:
            self.up = False
            # One line per outage, not per request.
            log.warning(
                "shared limits: Redis did not answer (%s); each process counts rate limits "
                "and lockouts alone until it does (retrying every %g s)",
                type(exc).__name__,
                self._retry_interval,
            )
        return SharedLimitsDown(str(exc))

    def _answered(self) -> None:
        if not self.up:
            self.up = True
            log.warning("shared limits: Redis answers again; every replica counts together")

    async def _run(self, call: Callable[[], Awaitable[Any]]) -> Any:
        if not self.usable:
            self.fallbacks += 1
            raise SharedLimitsDown("Redis failed a moment ago")
        try:
            answer = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed_call(exc) from None
        self._answered()
        return answer

    async def take(self, key: str, rate: float, burst: int) -> float:
        """Spend a token of `key`'s bucket: 0 when allowed, else seconds until one is."""
        wait = await self._run(
            lambda: self._take(keys=[self._prefix + "bucket:" + key], args=[repr(rate), burst])
        )
        return float(wait)

    async def admit(
        self,
        address: tuple[str, float, int],
        principal: tuple[str, float, int] | None,
        lockout_keys: Sequence[str],
    ) -> tuple[float, float | None, list[tuple[float, bool]]]:
        """A request's limits in one round trip: address, lockout, principal.

        The address's token is taken; the lockout keys are read; the principal's token is
        taken only when none of them is locked out. `address` and `principal` are (key,
        rate, burst). Returns the address's wait, the principal's (None when not taken)
        and (seconds locked, has failures) per lockout key.
        """
        keys = [self._prefix + "bucket:" + address[0]]
        keys.append(self._prefix + "bucket:" + (principal or address)[0])
        for key in lockout_keys:
            keys += [self._prefix + "blocked:" + key, self._prefix + "failures:" + key]
        rate_of = principal or address
        answer = await self._run(
            lambda: self._admit(
                keys=keys,
                args=[
                    repr(address[1]),
                    address[2],
                    repr(rate_of[1]),
                    rate_of[2],
                    "1" if principal is not None else "0",
                ],
            )
        )
        waits = [
            (max(0, int(ms)) / 1000, bool(failures))
            for ms, failures in zip(answer[2::2], answer[3::2], strict=True)
        ]
        taken = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
        return float(answer[0]), float(taken) if taken else None, waits

    async def blocked_for(self, keys: Sequence[str]) -> list[tuple[float, bool]]:
        """Per key: seconds it stays locked out (0: not locked), and whether it has failures.

        One round trip; the failures tell a success whether there is anything to clear.
        """
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(self._prefix + "blocked:" + key)
            pipe.exists(self._prefix + "failures:" + key)
        answers = await self._run(pipe.execute)
        return [
            (max(0, int(ms)) / 1000, bool(failures))
            for ms, failures in zip(answers[::2], answers[1::2], strict=True)
        ]

    async def failed(self, key: str, max_failures: int, window: float, block: float) -> bool:
        """Count a failed login of `key`; True when its lockout begins now."""
        began = await self._run(
            lambda: self._failed(
                keys=[self._prefix + "failures:" + key, self._prefix + "blocked:" + key],
                args=[max_failures, int(window * 1000), int(block * 1000)],
            )
        )
        return bool(began)

    async def succeeded(self, key: str) -> None:
        """Forget `key`'s failures (a lockout in force stays)."""
        await self._run(lambda: self._client.delete(self._prefix + "failures:" + key))

    async def lift(self, key: str) -> bool:
        """Forget `key`'s failures and lockout; whether it was locked out."""
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._prefix + "blocked:" + key)
        pipe.delete(self._prefix + "failures:" + key)
        blocked, _ = await self._run(pipe.execute)
        return bool(blocked)
