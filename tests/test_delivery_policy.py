"""The delivery policy without I/O: each answer's verdict, the backoff window, down and probes."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.forwarding.policy import (
    MAX_RETRY_AFTER,
    DeliveryPolicy,
    Kind,
    Verdict,
    parse_retry_after,
)

POLICY = DeliveryPolicy(max_retries=3, backoff_base=0.5, backoff_cap=60.0, timeout=2.0)
NOW = 1_700_000_000.0
REFUSED = " (the target refuses the gateway's credential, or its URL is wrong)"


@pytest.mark.parametrize(
    ("status", "count", "headers", "expected"),
    [
        (200, 5, {}, Verdict(Kind.DELIVERED)),
        (204, 1, {}, Verdict(Kind.DELIVERED)),
        (409, 1, {}, Verdict(Kind.DELIVERED)),  # it holds that id already
        (409, 2, {}, Verdict(Kind.SPLIT, "r")),  # which of them? halve
        (400, 4, {}, Verdict(Kind.SPLIT, "r")),
        (400, 1, {}, Verdict(Kind.PERMANENT, "r")),
        (413, 1, {}, Verdict(Kind.PERMANENT, "r")),
        (422, 3, {"Retry-After": "5"}, Verdict(Kind.SPLIT, "r")),  # Retry-After means nothing here
        (408, 1, {}, Verdict(Kind.RETRY, "r")),
        (429, 1, {"Retry-After": "7"}, Verdict(Kind.RETRY, "r", 7.0)),
        (500, 9, {}, Verdict(Kind.RETRY, "r")),
        (503, 1, {"Retry-After": "2.5"}, Verdict(Kind.RETRY, "r", 2.5)),
        (599, 1, {}, Verdict(Kind.RETRY, "r")),
        # The target's own problem (credential, URL, method): retried, then down, never split.
        (401, 5, {}, Verdict(Kind.RETRY, "r" + REFUSED)),
        (403, 1, {}, Verdict(Kind.RETRY, "r" + REFUSED)),
        (404, 5, {"Retry-After": "1"}, Verdict(Kind.RETRY, "r" + REFUSED, 1.0)),
        (405, 1, {}, Verdict(Kind.RETRY, "r" + REFUSED)),
        (407, 2, {}, Verdict(Kind.RETRY, "r" + REFUSED)),
    ],
)
def test_an_answer_is_judged(
    status: int, count: int, headers: dict[str, str], expected: Verdict
) -> None:
    assert POLICY.answered(status, headers, "r", count, NOW) == expected


def test_transport_failures_are_retried() -> None:
    assert POLICY.timed_out() == Verdict(Kind.RETRY, "timed out after 2.0 s")
    assert POLICY.unreachable("ConnectError: refused") == Verdict(
        Kind.RETRY, "ConnectError: refused"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("0.25", 0.25),
        ("-4", 0.0),
        ("soon", None),
        (format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True), 90.0),
        (format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True), 0.0),  # past
    ],
)
def test_retry_after_in_seconds_or_as_a_date(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(("failures", "down"), [(1, False), (3, False), (4, True), (9, True)])
def test_a_target_is_down_after_more_than_max_retries_in_a_row(failures: int, down: bool) -> None:
    assert POLICY.is_down(failures) is down


@pytest.mark.parametrize(
    ("failures", "window"),
    [
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),  # base * 2**failures
    ],
)
def test_backoff_is_full_jitter_within_the_window(failures: int, window: float) -> None:
    rng = random.Random(16)
    delays = [
        POLICY.pace(failures, was_up=True, retry_after=None, rng=rng).delay for _ in range(2000)
    ]
    assert all(0.0 <= delay <= window for delay in delays)
    # Full jitter: the whole window is used, not just its top or bottom.
    assert min(delays) < window * 0.05
    assert max(delays) > window * 0.95


def test_the_window_is_capped() -> None:
    policy = DeliveryPolicy(max_retries=20, backoff_base=0.5, backoff_cap=3.0, timeout=1.0)
    rng = random.Random(7)
    delays = [policy.pace(12, was_up=True, retry_after=None, rng=rng).delay for _ in range(500)]
    assert max(delays) <= 3.0
    assert max(delays) > 2.9


def test_the_same_seed_gives_the_same_delays() -> None:
    first = [
        POLICY.pace(2, was_up=True, retry_after=None, rng=random.Random(3)).delay for _ in range(3)
    ]
    assert first == [random.Random(3).uniform(0, 2.0)] * 3  # the window for 2 failures


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(1)
    pace = POLICY.pace(1, was_up=True, retry_after=30.0, rng=rng)
    assert pace.delay == 30.0
    assert not pace.down


@pytest.mark.parametrize(
    ("failures", "was_up", "retry_after", "delay", "going_down", "down"),
    [
        (4, True, None, 60.0, True, True),  # the failure that makes it down: probe at the cap
        (4, True, 90.0, 90.0, True, True),  # unless it asks for longer
        (5, False, None, 60.0, False, True),  # down already: probed every backoff_cap
        (1, False, None, 60.0, False, True),  # down before a restart (failures start again)
    ],
)
def test_a_down_target_is_probed_every_backoff_cap(
    failures: int,
    was_up: bool,
    retry_after: float | None,
    delay: float,
    going_down: bool,
    down: bool,
) -> None:
    pace = POLICY.pace(failures, was_up=was_up, retry_after=retry_after, rng=random.Random(0))
    assert (pace.delay, pace.going_down, pace.down) == (delay, going_down, down)


@pytest.mark.parametrize("value", ["inf", "1e12", "Fri, 31 Dec 9999 23:59:59 GMT", "nan"])
def test_a_retry_after_never_stalls_a_target_for_good(value: str) -> None:
    seconds = parse_retry_after(value, 1_000_000.0)
    assert seconds is None or seconds <= MAX_RETRY_AFTER
