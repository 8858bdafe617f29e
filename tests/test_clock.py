"""The manual clock tests drive: sleepers wake when time passes them, and only then."""

from __future__ import annotations

import asyncio

import pytest

from gateway.clock import ManualClock
from gateway.http.abuse_limits import FailureLockout, TokenBuckets
from gateway.ttlcache import TtlCache


async def test_advance_wakes_the_sleepers_it_passes_in_order() -> None:
    clock = ManualClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("b", 2.0), ("a", 1.0), ("c", 5))]
    await asyncio.sleep(0)
    assert clock.sleepers == 3
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(1.6)
    await asyncio.gather(*tasks[:2])
    assert woke == ["a", "b"]
    tasks[2].cancel()
    clock.advance(10)  # a cancelled sleeper is dropped quietly
    assert clock.sleepers == 0


async def test_time_moves_only_when_advanced() -> None:
    clock = ManualClock(start=100.0)
    wall, mono = clock.now(), clock.monotonic()
    await clock.sleep(0)  # no wait at all
    assert (clock.now(), clock.monotonic()) == (wall, mono)
    clock.advance(2.5)
    assert (clock.now() - wall, clock.monotonic() - mono) == (2.5, 2.5)
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)


def test_a_ttl_cache_entry_lives_exactly_its_ttl() -> None:
    clock = ManualClock()
    cache: TtlCache[str, int] = TtlCache(10, clock=clock)
    cache.put("k", 1, 0.3)
    clock.advance(0.299)
    assert cache.get("k") == (True, 1)
    clock.advance(0.001)
    assert cache.get("k") == (False, None)


def test_buckets_refill_and_lockouts_lift_with_the_clock() -> None:
    clock = ManualClock()
    buckets = TokenBuckets(rate=2.0, burst=1, max_keys=10, clock=clock)
    assert buckets.take("ip") == 0
    assert buckets.take("ip") == pytest.approx(0.5)
    clock.advance(0.5)
    assert buckets.take("ip") == 0
    lockout = FailureLockout(max_failures=2, window=60, block=30, max_keys=10, clock=clock)
    lockout.failed("user:a")
    lockout.failed("user:a")
    assert lockout.blocked_for("user:a") == 30
    clock.advance(29.5)
    assert lockout.blocked_for("user:a") == pytest.approx(0.5)
    clock.advance(0.5)
    assert lockout.blocked_for("user:a") == 0
