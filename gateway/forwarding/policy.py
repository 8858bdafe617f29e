"""How a forwarding target's answers are judged and its retries paced: pure, no I/O.

An answer is delivered, retried (the target's trouble: a timeout, a 5xx, a refused
credential), split (a batch the target objects to), or permanent (one statement it objects
to: a dead letter). After more than `max_retries` retries in a row the target is down: its
statements stay in its backlog and it is probed every `backoff_cap`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

__all__ = [
    "MAX_RETRY_AFTER",
    "TARGET_REFUSED",
    "DeliveryPolicy",
    "Kind",
    "Pace",
    "Verdict",
    "parse_retry_after",
]

# Answers about the target, not a statement: its credential, URL or method is wrong. Splitting
# would dead-letter every statement one by one; the target is rather down until it is fixed.
TARGET_REFUSED = frozenset({401, 403, 404, 405, 407})
_REFUSED_NOTE = " (the target refuses the gateway's credential, or its URL is wrong)"


class Kind(StrEnum):
    """What to do with the statements a send carried."""

    DELIVERED = "delivered"
    RETRY = "retry"  # the target's trouble, not a statement's: back off, maybe down
    SPLIT = "split"  # a batch refused: halve it to find the statement
    PERMANENT = "permanent"  # one statement refused: dead letter


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's reading of one send."""

    kind: Kind
    reason: str = ""
    retry_after: float | None = None  # seconds the target asked us to wait


@dataclass(frozen=True, slots=True)
class Pace:
    """When to try again after a failure, and whether the target just went down."""

    delay: float  # seconds
    going_down: bool
    down: bool  # down after this failure (just now or before)


# A target's Retry-After is honoured up to an hour: "inf" or a date in the year 9999 must
# not stop a target's deliveries and probes until the gateway restarts.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), at wall time `now`.

    At most MAX_RETRY_AFTER; None for anything else (NaN included).
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """One target's retry rules (from its configuration)."""

    max_retries: int
    backoff_base: float
    backoff_cap: float
    timeout: float

    def answered(
        self, status: int, headers: Mapping[str, str], reason: str, count: int, now: float
    ) -> Verdict:
        """Judge the target's HTTP answer to a batch of `count` statements."""
        if status in (200, 204):
            return Verdict(Kind.DELIVERED)
        if status == 409 and count == 1:
            return Verdict(Kind.DELIVERED)  # it already holds that id: delivered before
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        if status == 429 or status >= 500 or status == 408:
            return Verdict(Kind.RETRY, reason, retry_after)
        if status in TARGET_REFUSED:
            return Verdict(Kind.RETRY, reason + _REFUSED_NOTE, retry_after)
        if count > 1:
            return Verdict(Kind.SPLIT, reason)  # find the statement it objects to
        return Verdict(Kind.PERMANENT, reason)

    def timed_out(self) -> Verdict:
        """No answer within the target's timeout (connecting or waiting)."""
        return Verdict(Kind.RETRY, f"timed out after {self.timeout} s")

    def unreachable(self, reason: str) -> Verdict:
        """The connection failed or broke: the target's trouble."""
        return Verdict(Kind.RETRY, reason)

    def is_down(self, failures: int) -> bool:
        """Whether `failures` retries in a row make the target down."""
        return failures > self.max_retries

    def pace(
        self, failures: int, *, was_up: bool, retry_after: float | None, rng: random.Random
    ) -> Pace:
        """The wait after the `failures`-th failure in a row (counting this one).

        Up: exponential backoff with full jitter (spreads many gateways' retries over the
        window), never less than Retry-After. Down: a probe every `backoff_cap`.
        """
        floor = retry_after or 0.0
        going_down = was_up and self.is_down(failures)
        if was_up and not going_down:
            window = min(self.backoff_cap, self.backoff_base * 2**failures)
            return Pace(max(rng.uniform(0, window), floor), going_down=False, down=False)
        return Pace(max(self.backoff_cap, floor), going_down=going_down, down=True)
