"""One worker per forwarding target: batches, retries with backoff and jitter, up/down state.

Retries exhausted mean the target is down, not that its statements are given up: they stay
in its backlog (and lag) while the worker probes it every `backoff_cap` with the oldest
batch. Only a permanent reason (a 4xx about one statement) makes a dead letter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from multidict import CIMultiDict

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import ForwardingTarget
from gateway.errors import GatewayError, StoreUnavailable
from gateway.failurelog import FailureLog
from gateway.forwarding.policy import DeliveryPolicy, Kind, Verdict
from gateway.forwarding.store import Claimed, TargetState
from gateway.forwarding.transaction import Outbox, OutboxTransaction
from gateway.upstream.h1 import AnswerTimeout, ConnectTimeout, H1Error
from gateway.upstream.target import Observe, forwarding_target, status_class
from gateway.xapi.attachments import pack_parts, unpack_parts
from gateway.xapi.filters import StatementFilter, voided_id
from gateway.xapi.multipart import Part, build
from gateway.xapi.pseudonyms import Pseudonymiser, is_signed, without_signature
from gateway.xapi.statements import encode_statement

__all__ = ["TargetWorker"]

log = logging.getLogger(__name__)
_IDLE_POLL = 1.0  # seconds between looks at the queue (the CLI replays without waking us)
_REASON_CHARS = 300
_ANSWER_LIMIT = 1 << 20  # bytes of a target's answer read (it is a list of ids)
_LOOKUP_PAUSE = 5.0  # seconds before asking storage again where a voided statement went


def _minor(version: str) -> tuple[int, ...]:
    """(major, minor) of a version like 1.0.3, for comparing."""
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _payload(part: Sequence[Claimed]) -> tuple[bytes, str]:
    """The batch as JSON, or as multipart/mixed with each attachment part once."""
    statements = b"[" + b",".join(item.body for item in part) + b"]"
    if all(item.attachments is None for item in part):
        return statements, "application/json"
    parts = [Part(b"Content-Type: application/json\r\n\r\n", statements)]
    seen: set[str] = set()
    for item in part:
        for attachment in unpack_parts(item.attachments or b""):
            sha2 = (attachment.header("X-Experience-API-Hash") or "").lower()
            if sha2 not in seen:
                seen.add(sha2)
                parts.append(attachment)
    body, boundary = build(parts)
    return body, f'multipart/mixed; boundary="{boundary}"'


class TargetWorker:
    """Delivers a target's queue in order; a slow or dead target only delays itself."""

    def __init__(
        self,
        target: ForwardingTarget,
        outbox: Outbox,
        *,
        observe: Observe | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        statement_filter: StatementFilter | None = None,
        voided_lookup: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None,
    ) -> None:
        self.target = target
        # Applied again as statements are sent: the resolver and voiding statements queue
        # without judging (a voiding statement goes where the statement it voids went).
        self._filter = statement_filter
        self._voided_lookup = voided_lookup
        key = target.pseudonymise.key
        self._pseudonymiser = (
            None
            if key is None
            else Pseudonymiser(key.reveal().encode(), target.pseudonymise.homepage)
        )
        self._skip_signed = target.pseudonymise.signed == "skip"
        self._stripped: set[int] = set()  # sent without their signature: counted once acked
        self._lookups = FailureLog(
            log, f"forwarding to {target.label}: asking storage for a voided statement", clock=clock
        )
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._policy = DeliveryPolicy(
            max_retries=target.max_retries,
            backoff_base=target.backoff_base,
            backoff_cap=target.backoff_cap,
            timeout=target.timeout,
        )
        self._upstream = forwarding_target(target, observe=observe)
        self.name = self._upstream.name
        self._outbox = outbox
        # The lean client (gateway.upstream.h1): batches carry statement ids, so the one
        # resend it makes on a stale connection is harmless (the target answers 409 or
        # takes the same statements again).
        self._pool = self._upstream.lean_pool()
        self._path = self._upstream.url.raw_path_qs
        self._wake = asyncio.Event()
        self.failed = 0  # failed sends (metrics read it)
        self.up = True  # metrics and readiness read it; from the outbox once running
        self._down_since: float | None = None  # Unix time
        self._failures = 0  # transient failures in a row
        self._hold_until = 0.0  # monotonic: nothing is sent before (backoff, next probe)
        self._claimed_at = 0.0  # monotonic: when the batch in hand was claimed (or renewed)

    def close(self) -> None:
        """Close the idle connection to the target."""
        self._pool.close()

    def wake(self) -> None:
        """New deliveries were queued."""
        self._wake.set()

    @property
    def behind(self) -> int:
        """Statements this target has not received (read without a round trip)."""
        return self._outbox.backlog.get(self.name, 0)

    async def run(self) -> None:
        """Deliver until cancelled."""
        failing = FailureLog(log, f"forwarding to {self.name}", clock=self._clock)
        await self._restore_state(failing)
        batch: Sequence[Claimed] | None = None
        while True:
            try:
                if batch is None:
                    await self._hold()
                    self._wake.clear()  # before the claim: a wake during it is not lost
                    batch = await self._outbox.call(
                        lambda s: s.claim(self.name, self.target.batch_size)
                    )
                    self._claimed_at = self._clock.monotonic()
                if batch:
                    batch = await self._deliver(batch)
                else:
                    batch = None
                    await self._idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the outbox or a bug: log, breathe, go on
                batch = None
                # A database out of reach is said in one line; anything else may be a bug.
                failing.failed(exc, traceback=not isinstance(exc, StoreUnavailable))
                await self._clock.sleep(1.0)

    async def _restore_state(self, failing: FailureLog) -> None:
        """A target down before a restart stays down (probed at once: a restart may be the fix)."""
        while True:
            try:
                state = await self._outbox.read(lambda s: s.target_state(self.name))
                break
            except Exception as exc:  # the outbox cannot answer yet: as in run()
                failing.failed(exc)
                await self._clock.sleep(1.0)
        if not state.up:
            self.up, self._down_since = False, state.since
            log.info(
                "forwarding to %s: down since %s (%s), %d statements behind; probing it",
                self.name,
                _when(state.since),
                state.reason,
                self.behind,
            )

    async def _hold(self) -> None:
        """Wait out the backoff, or the time to the next probe of a down target."""
        wait = self._hold_until - self._clock.monotonic()
        if wait > 0:
            await self._clock.sleep(wait)

    async def _idle(self) -> None:
        """Until woken, or `_IDLE_POLL` on the clock has passed."""
        woken = asyncio.ensure_future(self._wake.wait())
        polled = asyncio.ensure_future(self._clock.sleep(_IDLE_POLL))
        try:
            await asyncio.wait((woken, polled), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            polled.cancel()

    async def _deliver(self, batch: Sequence[Claimed]) -> Sequence[Claimed] | None:
        """Send a claimed batch; the next batch when it could be claimed in the same commit."""
        parsed: dict[int, Any] = {}  # statements parsed once, by seq, for both steps
        if self._filter is not None:
            judged = await self._filtered(batch, parsed)
            if judged is None:
                return batch  # storage could not tell where a voided statement went: again
            batch = judged
            if not batch:
                return None
        if self._pseudonymiser is not None:
            batch = await self._pseudonymised(batch, parsed)
            if not batch:
                return None
        # An xAPI 2.0 statement is never sent to a target that speaks only 1.0.x.
        target_minor = _minor(self.target.xapi_version)
        unfit = [
            item.seq
            for item in batch
            if item.version is not None and _minor(item.version) > target_minor
        ]
        if unfit:
            reason = f"written in a newer xAPI version than the target's {self.target.xapi_version}"
            await self._dead_letter(unfit, reason)
            batch = [item for item in batch if item.seq not in unfit]
            if not batch:
                return None
        pending: list[Sequence[Claimed]] = [batch]
        while pending:
            part = pending.pop()
            if not await self._still_held(pending, part):
                return None  # another replica has them now: claim afresh
            verdict = await self._send(part)
            seqs = [item.seq for item in part]
            if verdict.kind is Kind.RETRY:
                self.failed += 1
                await self._failed(seqs, verdict)
                return None  # the target is struggling: wait for the backoff before more
            await self._answered()
            if verdict.kind is Kind.DELIVERED:
                # One commit: the ack and (after the last part) the next batch.
                following = await self._outbox.call(
                    partial(self._acked, seqs=seqs, claim_next=not pending)
                )
                if following:
                    self._claimed_at = self._clock.monotonic()
                if not pending:
                    return following
            elif verdict.kind is Kind.SPLIT:
                half = len(part) // 2
                pending.extend([part[half:], part[:half]])  # first half goes first
            else:  # permanent: one statement, for a reason a human must look at
                log.warning(
                    "forwarding to %s: statement dead-lettered: %s", self.name, verdict.reason
                )
                await self._dead_letter(seqs, verdict.reason)
        return None

    async def _filtered(
        self, batch: Sequence[Claimed], parsed: dict[int, Any]
    ) -> Sequence[Claimed] | None:
        """What of the batch the filter lets through; the rest acked as filtered.

        A voiding statement goes only where the statement it voids went: judged by that
        statement (in the batch, else storage's copy; none there, nowhere). None when
        storage cannot tell now: the same batch is judged again after a pause.
        """
        assert self._filter is not None
        parsed.update((item.seq, _parsed(item.body)) for item in batch)
        by_id = {
            str(statement.get("id", "")).lower(): (statement, item.version)
            for item in batch
            if isinstance(statement := parsed[item.seq], dict)
        }
        kept: list[Claimed] = []
        dropped: list[Claimed] = []
        for item in batch:
            statement = parsed[item.seq]
            written_in = item.version
            voided = voided_id(statement)
            if voided is not None:
                if voided in by_id:
                    statement, written_in = by_id[voided]
                elif self._voided_lookup is not None:
                    try:
                        statement = await self._voided_lookup(voided)
                    except (GatewayError, ValueError) as exc:
                        self._lookups.failed(exc)
                        await self._clock.sleep(_LOOKUP_PAUSE)
                        return None
                else:
                    statement = None
            goes = statement is not None and self._filter.matches(statement, written_in)
            (kept if goes else dropped).append(item)
        if dropped:
            seqs = [item.seq for item in dropped]
            await self._outbox.call(lambda tx: tx.ack(self.name, seqs, counter="filtered"))
        return kept

    async def _pseudonymised(
        self, batch: Sequence[Claimed], parsed: dict[int, Any]
    ) -> list[Claimed]:
        """The batch as this target gets it: every agent a pseudonym.

        A signed statement's signature cannot hold once it is changed: it is stripped
        (attachment and part), or the statement is not sent (`skipped_signed`).
        """
        assert self._pseudonymiser is not None
        copies: list[Claimed] = []
        skipped: list[int] = []
        unreadable: list[int] = []
        for item in batch:
            statement = parsed[item.seq] if item.seq in parsed else _parsed(item.body)
            if not isinstance(statement, dict):
                unreadable.append(item.seq)  # never sent unchanged: it would carry identities
                continue
            attachments = item.attachments
            if is_signed(statement):
                if self._skip_signed:
                    skipped.append(item.seq)
                    continue
                statement, attachments = _unsigned(statement, attachments)
                self._stripped.add(item.seq)
            body = encode_statement(self._pseudonymiser.statement(statement))
            copies.append(dataclasses.replace(item, body=body, attachments=attachments))
        if skipped:
            await self._outbox.call(lambda tx: tx.ack(self.name, skipped, counter="skipped_signed"))
        if unreadable:
            await self._dead_letter(unreadable, "not a JSON statement: cannot be pseudonymised")
        return copies

    async def _still_held(
        self, pending: Sequence[Sequence[Claimed]], part: Sequence[Claimed]
    ) -> bool:
        """Renew the claim on what is left of a batch once a third of its lease has gone.

        A send is shorter than a lease (the configuration sees to it), but a batch split
        again and again is not; without renewal another replica would send it too.
        """
        lease = self._outbox.lease
        if lease is None or self._clock.monotonic() - self._claimed_at < lease / 3:
            return True
        seqs = [item.seq for chunk in (*pending, part) for item in chunk]
        held = await self._outbox.call(lambda tx: tx.renew(self.name, seqs))
        self._claimed_at = self._clock.monotonic()
        return held == len(seqs)

    async def _dead_letter(self, seqs: Sequence[int], reason: str) -> None:
        """Give up on these for a permanent reason (a human looks, then replays)."""
        await self._outbox.call(lambda tx: tx.dead_letter(self.name, seqs, reason))
        self._stripped.difference_update(seqs)

    async def _acked(
        self, tx: OutboxTransaction, seqs: Sequence[int], claim_next: bool
    ) -> list[Claimed] | None:
        """Delivered: ack, and perhaps claim what is next."""
        await tx.ack(self.name, seqs)
        stripped = self._stripped.intersection(seqs)
        if stripped:
            await tx.count("signature_stripped", [(self.name, len(stripped))])
            self._stripped.difference_update(stripped)
        return await tx.claim(self.name, self.target.batch_size) if claim_next else None

    async def _answered(self) -> None:
        """The target answered (whatever it thought of the statements): it is up."""
        self._failures = 0
        if self.up:
            return
        down_since = self._down_since
        await self._outbox.call(lambda s: s.set_state(self.name, TargetState(True)))
        self.up, self._down_since = True, None
        log.info(
            "forwarding to %s: target is back after %s down, %d statements behind; delivering them",
            self.name,
            _duration(down_since, self._clock.now()),
            self.behind,
        )

    async def _failed(self, seqs: Sequence[int], verdict: Verdict) -> None:
        """A failure to retry: back off; past max_retries in a row, the target is down."""
        self._failures += 1
        pace = self._policy.pace(
            self._failures, was_up=self.up, retry_after=verdict.retry_after, rng=self._rng
        )
        going_down = pace.going_down
        now = self._clock.now()
        state = TargetState(False, now, verdict.reason)

        async def record(tx: OutboxTransaction) -> None:
            await tx.retry(self.name, seqs, now + pace.delay, verdict.reason)
            if going_down:
                await tx.set_state(self.name, state)

        await self._outbox.call(record)
        self._hold_until = self._clock.monotonic() + pace.delay
        if going_down:
            self.up, self._down_since = False, now
            log.warning(
                "forwarding to %s: target down after %d failed attempts in a row (%s); "
                "%d statements behind, kept until it is back; probing it every %g s",
                self.name,
                self._failures,
                verdict.reason,
                self.behind,
                self.target.backoff_cap,
            )

    async def _send(self, part: Sequence[Claimed]) -> Verdict:
        body, content_type = _payload(part)
        started = time.perf_counter()
        verdict, label = await self._post(body, content_type, len(part))
        if self._upstream.observe is not None:
            self._upstream.observe(self.name, label, time.perf_counter() - started)
        return verdict

    async def _post(self, body: bytes, content_type: str, count: int) -> tuple[Verdict, str]:
        """(the policy's verdict, metric label) of one POST."""
        headers = CIMultiDict({**self._upstream.headers, "Content-Type": content_type})
        try:
            response = await self._pool.request(
                "POST",
                self._path,
                headers,
                body,
                limit=_ANSWER_LIMIT,
                within=self._upstream.total_timeout,
            )
        except (AnswerTimeout, ConnectTimeout):
            return self._policy.timed_out(), "timeout"
        except H1Error as exc:
            return self._policy.unreachable(f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]), "error"
        text = self._upstream.redact(response.body[:_REASON_CHARS].decode("utf-8", "replace"))
        reason = f"HTTP {response.status}: {text}".strip()
        verdict = self._policy.answered(
            response.status, response.headers, reason, count, self._clock.now()
        )
        return verdict, status_class(response.status)


def _unsigned(
    statement: dict[str, Any], attachments: bytes | None
) -> tuple[dict[str, Any], bytes | None]:
    """The statement without its signature attachment, and its parts without that part."""
    unsigned = without_signature(statement)
    still = {a.get("sha2") for a in unsigned.get("attachments", []) if isinstance(a, dict)}
    gone = {
        str(a.get("sha2", "")).lower()
        for a in statement.get("attachments", [])
        if isinstance(a, dict) and a.get("sha2") not in still
    }
    if attachments is None:
        return unsigned, None
    parts = [
        part
        for part in unpack_parts(attachments)
        if (part.header("X-Experience-API-Hash") or "").lower() not in gone
    ]
    return unsigned, pack_parts(parts)


def _parsed(body: bytes) -> Any:
    """A queued statement's JSON (the outbox holds what storage accepted: it parses)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _when(moment: float | None) -> str:
    """A Unix time for a log line (UTC, to the second)."""
    if moment is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _duration(since: float | None, now: float) -> str:
    """How long before `now` `since` was, for a log line."""
    if since is None:
        return "an unknown time"
    seconds = max(0, math.floor(now - since))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
