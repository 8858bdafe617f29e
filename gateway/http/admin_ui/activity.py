"""The overview's rates: the gateway's own counters, sampled on an interval, as rates.

Every worker samples the whole gateway's counters (with `serve --workers` they are read
from every worker's files), so whichever worker serves the page shows the same picture.
The history is bounded (`keep` samples) and starts empty at each start.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.failurelog import FailureLog

__all__ = ["Activity", "Rates"]

log = logging.getLogger(__name__)
Totals = dict[str, float]


@dataclass(frozen=True, slots=True)
class Rates:
    """Per second over one interval, ending `at` (wall time)."""

    at: float
    per_second: dict[str, float]


class Activity:
    """A bounded history of counter samples, read as rates."""

    def __init__(
        self,
        read: Callable[[], Awaitable[Totals]],
        *,
        clock: Clock,
        interval: float = 10.0,
        keep: int = 61,
    ) -> None:
        self._read = read
        self._clock = clock
        self.interval = interval
        self._samples: deque[tuple[float, float, Totals]] = deque(maxlen=keep)

    async def sample(self) -> None:
        """Read the counters now."""
        totals = await self._read()
        self._samples.append((self._clock.monotonic(), self._clock.now(), totals))

    async def run(self) -> None:
        """Sample every interval until cancelled; a failed read is logged, then retried."""
        failing = FailureLog(
            log, "admin overview: reading the gateway's counters", clock=self._clock
        )
        while True:
            try:
                await self.sample()
            except Exception as exc:  # a metrics file being rewritten: next round
                failing.failed(exc)
            await self._clock.sleep(self.interval)

    def rates(self) -> list[Rates]:
        """Oldest first; a counter that went down (a restart) counts as 0 for that interval."""
        found: list[Rates] = []
        samples = list(self._samples)
        for (t0, _, before), (t1, wall, after) in itertools.pairwise(samples):
            span = t1 - t0
            if span <= 0:
                continue
            found.append(
                Rates(
                    wall,
                    {
                        name: max(0.0, after.get(name, 0.0) - before.get(name, 0.0)) / span
                        for name in after
                    },
                )
            )
        return found


def polyline(values: list[float], *, width: float, height: float, top: float) -> str:
    """SVG polyline points for `values` spread over `width`, scaled so `top` is the top."""
    if not values:
        return ""
    step = width / max(len(values) - 1, 1)
    scale = height / top if top > 0 else 0.0
    return " ".join(
        f"{index * step:.1f},{height - value * scale:.1f}" for index, value in enumerate(values)
    )
