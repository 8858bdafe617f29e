"""Backfill: copy the storage LRS's history to one forwarding target, through its outbox.

Storage is paged in `stored` order (`ascending=true`, `since`/`until`, then its `more`
links, `attachments=true`); each page is queued for the one target in the outbox together
with the cursor, in one transaction, so a crash or Ctrl-C resumes exactly where the last
page ended. The target's worker sends what is queued as it sends live statements: through
the target's filter and pseudonymisation, with retries, and with 204/409 for ids the
target knows counting as delivered.

The boundary with live traffic. Each outbox keeps the moment live forwarding to a target
began (`went_live`, before the first statement) and the ids it queued for the target in
its first LIVE_WINDOW seconds (ten minutes). A backfill's history ends, by default, at the
latest moment those ids vouch for (`default_until`): a minute before the backfill runs,
or, run later, a minute before the window closed. It skips those ids: anything storage
stored up to the end that live forwarding did not send comes from history, what live
forwarding sent is not sent again, and what is stored after comes live. This holds while
a request takes less than BOUNDARY_MARGIN and the clocks of storage and gateway agree
within it. Replicas still running without the target (a rollout under way) forward none
of what they take: run the backfill once every replica has the target; a rollout that
ended more than nine minutes after the first replica went live needs `--until` the moment
it ended (an overlap is then refused by the target as known, never stored twice).

Storage's `X-Experience-API-Consistent-Through` is the watermark: the cursor never passes
it (a statement stored earlier but not yet visible would be skipped), so a backfill whose
range reaches past it waits and asks again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from gateway import jsoncodec
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import (
    GatewayError,
    StorageUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.forwarding.store import BACKFILL_STALE, LIVE_WINDOW, BackfillState, LiveStart
from gateway.forwarding.transaction import Outbox
from gateway.upstream.storage import StorageClient, read_capped
from gateway.xapi.attachments import pack_parts
from gateway.xapi.multipart import Part, boundary_of, parse_answer
from gateway.xapi.results import upstream_tail_of_more

__all__ = [
    "BOUNDARY_MARGIN",
    "Backfill",
    "BackfillError",
    "BackfillLost",
    "Progress",
    "default_until",
    "holder_gone",
    "iso_time",
    "parse_time",
]

log = logging.getLogger(__name__)
BOUNDARY_MARGIN = 60.0  # seconds of history after live forwarding began (see above)
RESUME_OVERLAP = timedelta(seconds=1)  # a resume asks from this much before the cursor
_BEAT = 10.0  # seconds between heartbeats while waiting
_MAX_PAGE_BYTES = 256 * 1024 * 1024  # a larger page is asked again in halves
_RETRIES = 5  # transient storage failures in a row before the run stops (resumably)
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
_FOLLOW_MORE_WITHIN = 30.0  # seconds after which a page's `more` is not trusted any more
_WATERMARK_PATIENCE = 600.0  # seconds storage's watermark may stand still below `until`


class BackfillError(Exception):
    """The backfill cannot go on (a message for the operator)."""


class BackfillLost(BackfillError):
    """Another run took over this backfill (this one was thought interrupted)."""


def holder_gone(holder: str | None) -> bool:
    """Whether the run holding a backfill died (known only for one on this host)."""
    host, _, rest = (holder or "").partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def parse_time(value: str) -> datetime:
    """An ISO 8601 timestamp as an aware datetime (UTC when it names no offset)."""
    parsed = datetime.fromisoformat(value.strip())
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def iso_time(moment: datetime) -> str:
    """A moment as storage is asked about it: UTC, microseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def default_until(starts: Sequence[LiveStart], target: str, now: float) -> str:
    """Where history ends for `target` by default: the latest moment the live ids vouch for.

    Live forwarding kept the ids it queued in its first LIVE_WINDOW seconds; what storage
    stored up to LIVE_WINDOW less BOUNDARY_MARGIN after it began is either among them or
    was never sent live. So: BOUNDARY_MARGIN before `now` (everything stored earlier has
    landed), at most that far into the window, and at least BOUNDARY_MARGIN after live
    forwarding began (a run right after the first start waits for it). `starts`: what each
    outbox of the target's tenant knows. BackfillError when none knows when it began.
    """
    known = [start for start in starts if start.known]
    if not known:
        raise BackfillError(
            f"live forwarding to {target} has not begun: start the gateway with it first "
            "(the backfill ends where live forwarding began), or give --until"
        )
    if any(start.since is None for start in known):
        raise BackfillError(
            f"{target} was forwarded to before this version kept when live forwarding "
            "began: give --until (e.g. when the target was added)"
        )
    began = min(start.since for start in known if start.since is not None)
    end = min(now - BOUNDARY_MARGIN, began + LIVE_WINDOW - BOUNDARY_MARGIN)
    return iso_time(datetime.fromtimestamp(max(began + BOUNDARY_MARGIN, end), UTC))


@dataclass(frozen=True, slots=True)
class Progress:
    """What a progress display shows."""

    state: BackfillState
    rate: float  # statements queued per second over this run
    eta: float | None  # seconds left, from the share of the range covered
    waiting: str | None = None  # why it waits now (the target's backlog, the watermark)


@dataclass(frozen=True, slots=True)
class _Row:
    statement_id: str
    stored: datetime
    body: bytes
    parts: bytes | None
    version: str | None


@dataclass(frozen=True, slots=True)
class _Pass:
    """How a pass over storage ended."""

    state: BackfillState
    watermark: datetime | None  # the lowest Consistent-Through storage gave (None: none)
    queued: int
    complete: bool  # False: ask again from the cursor (a `more` may have expired)


class _TooLarge(Exception):
    """A page over _MAX_PAGE_BYTES: ask for fewer statements at a time."""


class _Transient(Exception):
    """Storage failed in a way worth asking again (5xx, 429, a timeout, no connection)."""


class Backfill:
    """One run of a target's backfill: resumes an interrupted one, holds it while running."""

    def __init__(
        self,
        outbox: Outbox,
        storage: StorageClient,
        target: str,
        *,
        version: str,
        clock: Clock = SYSTEM_CLOCK,
        page_size: int = 500,
        ahead: int = 5000,
        max_rate: float | None = None,
        skip_ids: frozenset[str] = frozenset(),
        on_progress: Callable[[Progress], None] | None = None,
        holder: str | None = None,
        stale_after: float = BACKFILL_STALE,
    ) -> None:
        self._outbox = outbox
        self._storage = storage
        self.target = target
        self._version = version  # asked of storage in
        self._clock = clock
        self._rate = max_rate
        # A page is at most a second's worth under a rate limit: the bursts stay small.
        self._page_size = max(1, min(page_size, int(max_rate))) if max_rate else page_size
        self._ahead = max(ahead, self._page_size)
        self._skip_ids = skip_ids
        self._on_progress = on_progress
        # Names this run (host/pid/token): a run on the same host can tell one that died.
        self.holder = holder or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._stale_after = stale_after
        self._started = clock.monotonic()
        self._queued_here = 0
        self._fraction_before: float | None = None  # how far earlier runs had come
        self._next_at = clock.monotonic()  # the rate limit's next free moment
        self._last_beat = clock.monotonic()

    async def run(self, since: str | None, until: str, *, restart: bool = False) -> BackfillState:
        """Queue every statement storage stored in (since, until] for the target; the end.

        Passes over storage from the cursor until one finds nothing new: the last one
        checks that storage's `more` links did not end early.
        """
        state = await self._outbox.call(
            lambda tx: tx.claim_backfill(
                self.target,
                self.holder,
                since,
                until,
                stale_after=self._stale_after,
                restart=restart,
            )
        )
        if state.cursor is not None:
            log.info(
                "backfill of %s: resuming after %s (%d queued so far)",
                self.target,
                state.cursor,
                state.queued,
            )
        until_at = parse_time(state.until)
        mark: datetime | None = None  # the watermark while waiting for it
        mark_since = self._clock.monotonic()
        while True:
            done = await self._pass(state, until_at)
            state = done.state
            if not done.complete:
                continue
            if done.watermark is not None and done.watermark < until_at:
                if mark is None or done.watermark > mark:
                    mark, mark_since = done.watermark, self._clock.monotonic()
                elif self._clock.monotonic() - mark_since > _WATERMARK_PATIENCE:
                    raise BackfillError(
                        f"storage has said for {_WATERMARK_PATIENCE / 60:.0f} minutes that it "
                        f"is consistent only through {iso_time(mark)}: run it again later, "
                        "or give an earlier --until"
                    )
                # Storage may not show everything stored before `until` yet: ask again.
                self._report(state, f"storage is consistent through {iso_time(mark)}")
                await self._wait(1.0)
                continue
            if done.queued:
                continue
            break
        if not await self._outbox.call(lambda tx: tx.finish_backfill(self.target, self.holder)):
            raise self._lost()
        finished = replace(state, state="done", holder=None)
        self._report(finished, None)
        return finished

    async def _pass(self, state: BackfillState, until_at: datetime) -> _Pass:
        """Page storage from the cursor to the end of the range (or of what it shows)."""
        query = {"ascending": "true", "attachments": "true", "limit": str(self._page_size)}
        query["until"] = state.until
        since = state.since
        if state.cursor is not None:
            # Ties: what shares the cursor's stored time and is not queued yet comes again.
            since = iso_time(parse_time(state.cursor) - RESUME_OVERLAP)
        if since is not None:
            query["since"] = since
        tail = "statements?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        watermark: datetime | None = None
        queued = 0
        while True:
            path, _, raw_query = tail.partition("?")
            asked = self._clock.monotonic()
            try:
                statements, parts, more, page_mark = await self._page(state, path, raw_query)
            except _TooLarge:
                if self._page_size == 1:
                    raise BackfillError(
                        f"storage's answer for one statement is over {_MAX_PAGE_BYTES} bytes"
                    ) from None
                self._page_size = max(1, self._page_size // 2)
                log.warning(
                    "backfill of %s: a page is over %d bytes; asking for %d statements at a time",
                    self.target,
                    _MAX_PAGE_BYTES,
                    self._page_size,
                )
                return _Pass(state, watermark, queued, complete=False)
            if page_mark is not None:
                watermark = page_mark if watermark is None else min(watermark, page_mark)
            bound = until_at if watermark is None else min(until_at, watermark)
            rows, live = self._rows(statements, parts, state, bound)
            beyond = any(row.stored > bound for row in rows)
            rows = [row for row in rows if row.stored <= bound]
            state = await self._queue(state, rows, live)
            queued += len(rows)
            if beyond or not more:
                return _Pass(state, watermark, queued, complete=True)
            next_tail = upstream_tail_of_more(more, self._storage.base_path)
            if next_tail is None:
                raise BackfillError("storage gave a `more` link outside its xAPI base")
            if self._clock.monotonic() - asked > _FOLLOW_MORE_WITHIN:
                # A long wait (the target's backlog, retries): a `more` link may have
                # expired (Ralph's point in time lasts a minute); ask from the cursor.
                return _Pass(state, watermark, queued, complete=False)
            tail = next_tail

    async def _page(
        self, state: BackfillState, path: str, raw_query: str
    ) -> tuple[list[Any], dict[str, Part], str, datetime | None]:
        """One page, asked again (with backoff) while storage fails transiently."""
        for attempt in range(_RETRIES + 1):
            try:
                return await self._fetch(path, raw_query)
            except _Transient as exc:
                if attempt == _RETRIES:
                    raise BackfillError(f"{exc} ({_RETRIES + 1} times in a row)") from None
                delay = min(30.0, 2.0**attempt)
                log.warning("backfill of %s: %s; asking again in %.0f s", self.target, exc, delay)
                self._report(state, f"{exc}; asking again")
                await self._wait(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(
        self, path: str, raw_query: str
    ) -> tuple[list[Any], dict[str, Part], str, datetime | None]:
        """One page: its statements, attachment parts by sha2, `more`, the watermark."""
        headers = {"X-Experience-API-Version": self._version}
        try:
            async with self._storage.request(
                "GET", path, raw_query=raw_query, headers=headers, decompress=True
            ) as response:
                status = response.status
                try:
                    body = await read_capped(response, _MAX_PAGE_BYTES)
                except UpstreamUnavailable:
                    if status == 200:
                        raise _TooLarge from None
                    body = b""
                content_type = response.headers.get("Content-Type", "")
                consistent = response.headers.get("X-Experience-API-Consistent-Through")
        except (UpstreamTimeout, UpstreamUnavailable, StorageUnavailable) as exc:
            raise _Transient(f"storage: {exc.message}") from None
        if status in (401, 403):
            raise BackfillError(
                f"storage refused the gateway's credential (HTTP {status}): check the "
                "storage section's credential in the configuration"
            )
        if status in _TRANSIENT:
            raise _Transient(f"storage answered HTTP {status}")
        if status != 200:
            raise BackfillError(
                f"storage answered HTTP {status} to a statement query: {_summary(body)}"
            )
        parts: dict[str, Part] = {}
        try:
            if content_type.lower().startswith("multipart/"):
                answer = parse_answer(body, boundary_of(content_type))
                body = answer.parts[0].body if answer.parts else b"{}"
                for part in answer.parts[1:]:
                    sha2 = part.header("X-Experience-API-Hash")
                    if sha2:
                        parts[sha2.lower()] = part
            data = jsoncodec.loads(body)
        except (GatewayError, ValueError):
            raise BackfillError(
                "storage answered a statement query with no statement result"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("statements"), list):
            raise BackfillError("storage answered a statement query with no statement result")
        more = data.get("more") or ""
        if not isinstance(more, str):
            raise BackfillError(
                "storage answered a statement query with a `more` that is not a URL"
            )
        mark: datetime | None = None
        if consistent:
            try:
                mark = parse_time(consistent)
            except ValueError:
                mark = None  # unreadable: as if absent
        return data["statements"], parts, more, mark

    def _rows(
        self,
        statements: list[Any],
        parts: dict[str, Part],
        state: BackfillState,
        bound: datetime,
    ) -> tuple[list[_Row], list[tuple[str, datetime]]]:
        """The page's statements not queued yet, in stored order; those live forwarding had."""
        cursor = None if state.cursor is None else parse_time(state.cursor)
        ties = set(state.tie_ids)
        rows: list[_Row] = []
        live: list[tuple[str, datetime]] = []
        for statement in statements:
            if not isinstance(statement, dict):
                raise BackfillError("storage listed a statement that is not an object")
            statement_id = str(statement.get("id", "")).lower()
            stored = statement.get("stored")
            if not statement_id or not isinstance(stored, str):
                raise BackfillError("storage listed a statement without an id or stored time")
            try:
                at = parse_time(stored)
            except ValueError:
                raise BackfillError(
                    f"storage listed {statement_id} with an unreadable stored"
                ) from None
            if cursor is not None and (at < cursor or (at == cursor and statement_id in ties)):
                continue  # behind the cursor: seen already, by this run or the one it resumes
            if statement_id in self._skip_ids:
                if at <= bound:
                    live.append((statement_id, at))  # live forwarding queued it
                continue
            rows.append(
                _Row(
                    statement_id,
                    at,
                    jsoncodec.dumps(statement),
                    pack_parts(_parts_of(statement, parts)),
                    # As the live path records it: the version a 1.0.x client would send.
                    "2.0.0" if str(statement.get("version", "")).startswith("2.") else "1.0.3",
                )
            )
        rows.sort(key=lambda row: row.stored)  # some LRSs order a page's statements otherwise
        return rows, live

    async def _queue(
        self, state: BackfillState, rows: list[_Row], live: list[tuple[str, datetime]]
    ) -> BackfillState:
        """Wait for room and the rate limit, then queue the rows and move the cursor.

        The cursor passes what live forwarding had too (seen, never to be counted again).
        """
        if not rows and not live:
            return state
        if rows:
            await self._room(state, len(rows))
            await self._pace(len(rows))
        seen = [(row.statement_id, row.stored) for row in rows] + live
        last = max(at for _, at in seen)
        same = [statement_id for statement_id, at in seen if at == last]
        old = None if state.cursor is None else parse_time(state.cursor)
        if old is not None and old > last:  # all of it at the cursor's time or before
            last, same = old, []
        progress = replace(
            state,
            cursor=state.cursor if old == last else iso_time(last),
            tie_ids=(*state.tie_ids, *same) if old == last else tuple(same),
            first=state.first or iso_time(min(at for _, at in seen)),
            queued=state.queued + len(rows),
            skipped=state.skipped + len(live),
        )
        items = [(row.statement_id, row.body, row.parts, row.version) for row in rows]
        held = await self._outbox.call(
            lambda tx: tx.backfill_page(self.target, self.holder, items, progress)
        )
        if not held:
            raise self._lost()
        self._last_beat = self._clock.monotonic()
        self._queued_here += len(rows)
        self._report(progress, None)
        return progress

    async def _room(self, state: BackfillState, count: int) -> None:
        """Until the target's backlog leaves room for `count` more (the outbox stays small)."""
        while True:
            backlog = await self._outbox.read(lambda tx: tx.backlog_of(self.target))
            if backlog + count <= self._ahead:
                return
            self._report(state, f"the target's backlog is {backlog}")
            await self._wait(0.5)

    async def _pace(self, count: int) -> None:
        """At most `max_rate` statements a second, on average."""
        if not self._rate:
            return
        wait = self._next_at - self._clock.monotonic()
        if wait > 0:
            await self._wait(wait)
        self._next_at = max(self._next_at, self._clock.monotonic()) + count / self._rate

    async def _wait(self, seconds: float) -> None:
        """Sleep on the clock, telling the outbox every _BEAT seconds that this run lives."""
        if self._clock.monotonic() - self._last_beat >= _BEAT:
            self._last_beat = self._clock.monotonic()
            if not await self._outbox.call(lambda tx: tx.beat_backfill(self.target, self.holder)):
                raise self._lost()
        await self._clock.sleep(seconds)

    def _lost(self) -> BackfillLost:
        return BackfillLost(
            f"another run took over the backfill of {self.target} (this one was silent for "
            f"{self._stale_after:.0f} s, or its process looked gone): that run carries on"
        )

    def _report(self, state: BackfillState, waiting: str | None) -> None:
        if self._on_progress is None:
            return
        elapsed = max(1e-6, self._clock.monotonic() - self._started)
        rate = self._queued_here / elapsed
        fraction = state.fraction
        if self._fraction_before is None:
            self._fraction_before = fraction
        covered = fraction - self._fraction_before
        eta = None
        if covered > 0.0 and fraction < 1.0:
            eta = elapsed * (1.0 - fraction) / covered
        self._on_progress(Progress(state, rate, eta, waiting))


def _summary(body: bytes) -> str:
    """The start of an error answer, for the operator (one line)."""
    text = body[:200].decode("utf-8", errors="replace").replace("\n", " ").strip()
    return text or "(no body)"


def _parts_of(statement: dict[str, Any], parts: dict[str, Part]) -> list[Part]:
    """The attachment parts a statement claims, each once (fileUrl ones have none)."""
    found: list[Part] = []
    attachments = statement.get("attachments")
    for attachment in attachments if isinstance(attachments, list) else []:
        sha2 = attachment.get("sha2") if isinstance(attachment, dict) else None
        part = parts.get(sha2.lower()) if isinstance(sha2, str) else None
        if part is not None and part not in found:
            found.append(part)
    return found
