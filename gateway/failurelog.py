"""Rate-limited log lines for a background loop that keeps failing (never silent, never a flood)."""

from __future__ import annotations

import logging

from gateway.clock import SYSTEM_CLOCK, Clock

__all__ = ["FailureLog"]

_EVERY = 60.0  # seconds between lines about one loop


class FailureLog:
    """Logs a loop's failures at most once a minute, with how many there were meanwhile."""

    def __init__(self, logger: logging.Logger, what: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._log = logger
        self._clock = clock
        self._what = what
        self._last = -_EVERY
        self._unlogged = 0

    def failed(self, exc: BaseException, *, traceback: bool = False) -> None:
        """One more failure: logged (at ERROR) unless a line went out less than a minute ago."""
        self._unlogged += 1
        now = self._clock.monotonic()
        if now - self._last >= _EVERY:
            self._log.error(
                "%s failed (%d times since the last line): %s: %s",
                self._what,
                self._unlogged,
                type(exc).__name__,
                exc,
                exc_info=exc if traceback else None,
            )
            self._last, self._unlogged = now, 0
