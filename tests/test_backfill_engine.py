"""The backfill engine against a scripted storage LRS (fault injection, exact edges).

The real-Ralph test (test_backfill.py) shows the whole path; here: ties of `stored` across
pages and an interrupted run, attachments from a multipart answer, the consistency
watermark, the live boundary's ids, the rate limit on an injected clock, and where history
ends by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import write_config

from gateway.clock import ManualClock
from gateway.forwarding.backfill import (
    BOUNDARY_MARGIN,
    Backfill,
    BackfillError,
    Progress,
    default_until,
    parse_time,
)
from gateway.forwarding.outbox import SqliteOutbox
from gateway.forwarding.store import LIVE_WINDOW, BackfillState, LiveStart, OutboxStore
from gateway.upstream.storage import StorageClient
from gateway.upstream.target import storage_target
from gateway.xapi.attachments import unpack_parts
from gateway.xapi.multipart import Part, build

START = datetime(2026, 1, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _when(stored: str) -> datetime:
    """A statement's stored time; the start of time for a broken one (it is listed first)."""
    try:
        return parse_time(stored)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


@dataclass
class History:
    """A scripted storage: statements with `stored`, paged by offset, filtered as xAPI says."""

    statements: list[dict[str, Any]]
    attachments: dict[str, bytes] = field(default_factory=dict)  # sha2 -> content
    consistent_through: list[str] = field(default_factory=list)  # one per answer, then the last
    queries: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.queries.append(query)
        found = sorted(self.statements, key=lambda s: _when(s["stored"]))
        if "since" in query:
            found = [s for s in found if _when(s["stored"]) > parse_time(query["since"])]
        if "until" in query:
            found = [s for s in found if _when(s["stored"]) <= parse_time(query["until"])]
        offset = int(query.pop("offset", "0"))
        limit = int(query["limit"])
        page = found[offset : offset + limit]
        more = ""
        if offset + limit < len(found):
            more = "/xAPI/statements?" + urlencode({**query, "offset": offset + limit})
        headers = {}
        if self.consistent_through:
            index = min(len(self.queries), len(self.consistent_through)) - 1
            headers["X-Experience-API-Consistent-Through"] = self.consistent_through[index]
        document = {"statements": page, "more": more}
        wanted = [
            a["sha2"]
            for s in page
            for a in s.get("attachments", [])
            if a["sha2"] in self.attachments
        ]
        if query.get("attachments") != "true" or not wanted:
            return web.json_response(document, headers=headers)
        parts = [Part(b"Content-Type: application/json\r\n\r\n", web.json_response(document).body)]  # type: ignore[arg-type]
        for sha2 in dict.fromkeys(wanted):
            head = (
                "Content-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"
                f"X-Experience-API-Hash: {sha2}\r\n\r\n"
            ).encode()
            parts.append(Part(head, self.attachments[sha2]))
        body, boundary = build(parts)
        return web.Response(
            body=body,
            headers={**headers, "Content-Type": f"multipart/mixed; boundary={boundary}"},
        )


def made(
    count: int, *, same_stored_every: int = 1, start: datetime = START
) -> list[dict[str, Any]]:
    """Statements; `same_stored_every` consecutive ones share a `stored` (ties)."""
    return [
        {
            "id": str(uuid.uuid4()),
            "actor": {"mbox": f"mailto:l{n}@example.org"},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
            "object": {"id": f"https://example.org/a/{n}"},
            "stored": iso(start + timedelta(milliseconds=n // same_stored_every)),
        }
        for n in range(count)
    ]


@dataclass
class Rig:
    outbox: SqliteOutbox
    storage: StorageClient
    history: History
    path: Path

    def queued_ids(self) -> list[str]:
        store = OutboxStore(self.path)
        try:
            return [
                row[0]
                for row in store.conn.execute(
                    "SELECT s.statement_id FROM deliveries d JOIN statements s ON s.seq = d.seq "
                    "WHERE d.target = 'new' ORDER BY d.seq"
                )
            ]
        finally:
            store.close()


@pytest.fixture
async def rig(tmp_path: Path) -> Any:
    history = History([])
    app = web.Application()

    async def statements(request: web.Request) -> web.StreamResponse:
        # Looked up per request: a test may put another handler in front of the history.
        return await history.handle(request)

    app.router.add_get("/xAPI/statements", statements)
    server = TestServer(app)
    await server.start_server()
    config = write_config(tmp_path, str(server.make_url("/xAPI/")), [])
    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3", synchronous="normal")
    await outbox.open()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        storage = StorageClient(session, storage_target(config.storage))
        yield Rig(outbox, storage, history, tmp_path / "outbox.sqlite3")
        storage.close()
    await outbox.close()
    await server.close()


def job(rig: Rig, **options: Any) -> Backfill:
    return Backfill(rig.outbox, rig.storage, "new", version="1.0.3", **options)


UNTIL = iso(START + timedelta(days=1))


async def test_ties_across_pages_and_an_interrupted_run_queue_each_statement_once(
    rig: Rig,
) -> None:
    # 10 statements share each stored time; pages of 7 split every tie group.
    rig.history.statements = made(200, same_stored_every=10)
    pages = 0
    stop = asyncio.Event()

    def count(_: Progress) -> None:
        nonlocal pages
        pages += 1
        if pages == 5:
            stop.set()

    first = job(rig, page_size=7, on_progress=count)
    task = asyncio.create_task(first.run(None, UNTIL))
    await stop.wait()
    task.cancel()  # as Ctrl-C: whatever was committed stays, nothing half
    with pytest.raises(asyncio.CancelledError):
        await task
    partly = rig.queued_ids()
    assert 0 < len(partly) < 200
    # The interrupted run is taken over at once (stale_after 0), from its cursor.
    done = await job(rig, page_size=7, stale_after=0.0).run(None, UNTIL)
    queued = rig.queued_ids()
    assert sorted(queued) == sorted(s["id"] for s in rig.history.statements)
    assert done.queued == 200
    assert done.state == "done"
    # It asked from a second before the cursor, not from the beginning.
    resumed = [q for q in rig.history.queries if "since" in q and "offset" not in q]
    assert resumed
    assert parse_time(resumed[-1]["since"]) > START - timedelta(seconds=1)


async def test_attachments_come_from_the_multipart_answer(rig: Rig) -> None:
    content = b"a certificate of completion"
    sha2 = hashlib.sha256(content).hexdigest()
    statements = made(3)
    statements[1]["attachments"] = [
        {
            "usageType": "http://id.tincanapi.com/attachment/certificate",
            "display": {"en": "certificate"},
            "contentType": "text/plain",
            "length": len(content),
            "sha2": sha2,
        }
    ]
    rig.history.statements = statements
    rig.history.attachments = {sha2: content}
    await job(rig).run(None, UNTIL)
    claimed = await rig.outbox.call(lambda tx: tx.claim("new", 10))
    by_id = {json.loads(c.body)["id"]: c for c in claimed}
    with_parts = by_id[statements[1]["id"]]
    assert with_parts.attachments is not None
    (part,) = unpack_parts(with_parts.attachments)
    assert part.body == content
    assert by_id[statements[0]["id"]].attachments is None
    assert all(q.get("attachments") == "true" for q in rig.history.queries)


async def test_the_cursor_never_passes_storages_consistency_watermark(rig: Rig) -> None:
    rig.history.statements = made(30)
    middle = iso(START + timedelta(milliseconds=14))
    # Storage is consistent through the middle for its first answers, then through all.
    rig.history.consistent_through = [middle, middle, iso(START + timedelta(days=2))]
    waits: list[str] = []
    queued_at_first_wait: list[int] = []

    def note(progress: Progress) -> None:
        if progress.waiting:
            waits.append(progress.waiting)
            if not queued_at_first_wait:
                queued_at_first_wait.append(progress.state.queued)

    done = await job(rig, page_size=50, on_progress=note).run(None, UNTIL)
    assert done.queued == 30
    assert sorted(rig.queued_ids()) == sorted(s["id"] for s in rig.history.statements)
    assert any("consistent through" in w for w in waits)
    assert queued_at_first_wait == [15]  # 0 to 14 ms: up to the watermark, not past it
    assert len(rig.history.queries) >= 2


async def test_ids_live_forwarding_queued_are_left_to_it(rig: Rig) -> None:
    rig.history.statements = made(20)
    live = {s["id"] for s in rig.history.statements[15:]}
    done = await job(rig, skip_ids=frozenset(live)).run(None, UNTIL)
    assert done.queued == 15
    assert done.skipped == 5
    assert set(rig.queued_ids()) == {s["id"] for s in rig.history.statements[:15]}


async def test_since_and_until_bound_the_range(rig: Rig) -> None:
    rig.history.statements = made(20)
    since = rig.history.statements[4]["stored"]
    until = rig.history.statements[9]["stored"]
    await job(rig).run(since, until)
    assert set(rig.queued_ids()) == {s["id"] for s in rig.history.statements[5:10]}


async def test_the_rate_limit_paces_pages_on_the_clock(rig: Rig) -> None:
    clock = ManualClock()
    rig.history.statements = made(300)
    task = asyncio.create_task(job(rig, max_rate=100, clock=clock).run(None, UNTIL))

    async def queued_then_sleeping(count: int) -> None:
        for _ in range(500):
            if clock.sleepers and len(rig.queued_ids()) == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not paused at {count}: {len(rig.queued_ids())}")

    await queued_then_sleeping(100)  # a page of a second's worth, then a pause
    clock.advance(1.0)
    await queued_then_sleeping(200)
    clock.advance(1.0)
    done = await asyncio.wait_for(task, 10)
    assert done.queued == 300


async def test_a_page_storage_cannot_give_stops_the_run_resumably(rig: Rig) -> None:
    rig.history.statements = [{"id": str(uuid.uuid4()), "stored": "not a time"}]
    with pytest.raises(BackfillError, match="unreadable stored"):
        await job(rig).run(None, UNTIL)


def test_history_ends_at_the_latest_moment_the_live_ids_vouch_for() -> None:
    """A minute before the backfill runs; not before a minute after live forwarding began
    (the earliest outbox's), nor past a minute before its id window closed."""
    began = START.timestamp()
    starts = [
        LiveStart(known=True, since=began + 5, window_ids=frozenset()),
        LiveStart(known=True, since=began, window_ids=frozenset()),
        LiveStart(known=False, since=None, window_ids=frozenset()),
    ]

    def until(now: float) -> datetime:
        return parse_time(default_until(starts, "new", began + now))

    margin = timedelta(seconds=BOUNDARY_MARGIN)
    assert until(10) == START + margin  # right after the start: it waits for this
    assert until(300) == START + timedelta(seconds=300) - margin
    assert until(86_400) == START + timedelta(seconds=LIVE_WINDOW) - margin
    with pytest.raises(BackfillError, match="has not begun"):
        default_until([LiveStart(known=False, since=None, window_ids=frozenset())], "new", began)
    with pytest.raises(BackfillError, match="give --until"):
        default_until([LiveStart(known=True, since=None, window_ids=frozenset())], "new", began)


class InstantClock:
    """A clock whose sleeps pass at once (and move it on): waits and backoff, no waiting."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self._at = 1_000.0

    def now(self) -> float:
        return 1_700_000_000.0 + self._at

    def monotonic(self) -> float:
        return self._at

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._at += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass
class Flaky:
    """Answers `failures` requests with `status`, then lets the history's handler answer."""

    inner: Callable[[web.Request], Awaitable[web.StreamResponse]]
    status: int
    failures: int
    answered: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.answered += 1
        if self.answered <= self.failures:
            return web.json_response({"message": "busy"}, status=self.status)
        return await self.inner(request)


async def test_storage_failing_for_a_while_is_asked_again_with_backoff(rig: Rig) -> None:
    rig.history.statements = made(10)
    flaky = Flaky(rig.history.handle, 503, failures=3)
    handle = rig.history.handle
    rig.history.handle = flaky.handle  # type: ignore[method-assign]
    clock = InstantClock()
    try:
        done = await job(rig, clock=clock).run(None, UNTIL)
    finally:
        rig.history.handle = handle  # type: ignore[method-assign]
    assert done.queued == 10
    assert clock.slept[:3] == [1.0, 2.0, 4.0]


async def test_storage_failing_for_good_stops_the_run_with_its_reason(rig: Rig) -> None:
    rig.history.statements = made(10)
    for status, reason in (
        (503, "HTTP 503 \\(6 times in a row\\)"),
        (401, "refused the gateway's credential"),
    ):
        flaky = Flaky(rig.history.handle, status, failures=100)
        rig.history.handle = flaky.handle  # type: ignore[method-assign]
        with pytest.raises(BackfillError, match=reason):
            await job(rig, clock=InstantClock(), stale_after=0.0).run(None, UNTIL)
    assert rig.queued_ids() == []


async def test_a_more_that_ends_early_is_caught_by_the_last_look_from_the_cursor(
    rig: Rig,
) -> None:
    rig.history.statements = made(30)
    original = rig.history.handle
    calls = 0

    async def forgetful(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        answer = await original(request)
        if calls == 2:  # the second page forgets its `more`, as an expired cursor might
            document = json.loads(answer.body)  # type: ignore[attr-defined]
            return web.json_response({**document, "more": ""})
        return answer

    rig.history.handle = forgetful  # type: ignore[method-assign]
    done = await job(rig, page_size=10).run(None, UNTIL)
    assert done.queued == 30
    assert sorted(rig.queued_ids()) == sorted(s["id"] for s in rig.history.statements)


async def test_a_page_too_large_is_asked_for_in_halves(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.history.statements = made(40)
    monkeypatch.setattr("gateway.forwarding.backfill._MAX_PAGE_BYTES", 2_000)
    done = await job(rig, page_size=40).run(None, UNTIL)
    assert done.queued == 40
    limits = {int(q["limit"]) for q in rig.history.queries}
    assert 40 in limits
    assert min(limits) < 20  # halved until a page fits


def test_progress_is_1_only_once_done() -> None:
    """The interrupted-backfill alert reads progress 1 as done: a running one never says 1."""
    state = BackfillState(
        target="new",
        since=iso(START),
        until=UNTIL,
        cursor=UNTIL,  # every page queued, not yet marked done
        tie_ids=(),
        first=None,
        queued=10,
        skipped=0,
        state="running",
        started_at=0.0,
        updated_at=0.0,
    )
    assert 0.99 <= state.fraction < 1.0
    assert replace(state, state="done").fraction == 1.0
    assert replace(state, cursor=iso(START + timedelta(hours=6))).fraction == 0.25
