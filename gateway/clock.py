"""Time as an injected dependency: the system's, or a manual one tests advance."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Wall time, monotonic time and sleeping, as the gateway reads them."""

    def now(self) -> float:
        """Wall time: seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (0 or less: just let other tasks run)."""
        ...


class SystemClock:
    """The real clock; the builtins themselves, so a read costs what it did before."""

    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(asyncio.sleep)


SYSTEM_CLOCK = SystemClock()  # stateless: one is enough


class ManualClock:
    """A clock that moves only when told to: `advance` wakes the sleepers it passes."""

    def __init__(self, *, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0
        self._order = itertools.count()  # ties wake in the order they slept
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        """Wall time as advanced so far."""
        return self._wall

    def monotonic(self) -> float:
        """Monotonic time as advanced so far."""
        return self._mono

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by `seconds`."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._order), future))
        await future

    @property
    def sleepers(self) -> int:
        """Tasks sleeping on this clock now (tests wait for a loop to reach its sleep)."""
        return sum(1 for *_, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        """Move both times on by `seconds`; wake every sleeper whose deadline passed."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._wall += seconds
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():  # a cancelled sleeper is simply dropped
                future.set_result(None)
