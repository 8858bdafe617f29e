"""One worker per forwarding target: batches, retries with backoff and jitter, up/down state.

Retries exhausted mean the target is down, not that its statements are given up: they stay
in its backlog (and lag) while the worker probes it every `backoff_cap` with the oldest
batch. Only a permanent reason (a 4xx about one statement) makes a dead letter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import partial

from multidict import CIMultiDict
from yarl import URL

from gateway.attachments import unpack_parts
from gateway.config import ForwardingTarget
from gateway.forwarding.failures import FailureLog
from gateway.forwarding.outbox import Outbox
from gateway.forwarding.store import Claimed, OutboxStore, TargetState
from gateway.h1client import AnswerTimeout, ConnectTimeout, H1Error, H1Pool
from gateway.metrics import status_class
from gateway.multipart import Part, build
from gateway.secret import redact
from gateway.upstream import Observe

__all__ = ["Outcome", "TargetWorker"]

log = logging.getLogger(__name__)
_IDLE_POLL = 1.0  # seconds between looks at the queue (the CLI replays without waking us)
# Answers about the target, not a statement: its credential, URL or method is wrong. Splitting
# would dead-letter every statement one by one; the target is rather down until it is fixed.
_TARGET_REFUSED = frozenset({401, 403, 404, 405, 407})
_REASON_CHARS = 300
_ANSWER_LIMIT = 1 << 20  # bytes of a target's answer read (it is a list of ids)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one POST to the target went."""

    kind: str  # delivered | split | rejected | transient (the target's trouble, not a statement's)
    reason: str = ""
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


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

    def __init__(self, target: ForwardingTarget, outbox: Outbox, *,
                 observe: Observe | None = None) -> None:
        self.target = target
        self._observe = observe
        self.name = target.label
        self._outbox = outbox
        # The lean client (gateway.h1client): batches carry statement ids, so the one
        # resend it makes on a stale connection is harmless (the target answers 409 or
        # takes the same statements again).
        url = URL(target.url)
        self._pool = H1Pool(url.origin(), connect_timeout=target.timeout, max_idle=2)
        self._path = url.raw_path_qs
        self._wake = asyncio.Event()
        self._headers = {"Content-Type": "application/json",
                         "X-Experience-API-Version": target.xapi_version, **target.headers}
        # Masked in the target's answers before they are logged or kept as a reason.
        self._secrets: list[str] = list(target.headers.values())  # API keys live there too
        if target.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {target.bearer_token.reveal()}"
            self._secrets.append(target.bearer_token.reveal())
        elif target.basic_username is not None and target.basic_password is not None:
            token = f"{target.basic_username}:{target.basic_password.reveal()}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
            self._secrets += [token, target.basic_password.reveal()]
        self.failed = 0  # failed sends (metrics read it)
        self.up = True  # metrics and readiness read it; from the outbox once running
        self._down_since: float | None = None  # Unix time
        self._failures = 0  # transient failures in a row
        self._hold_until = 0.0  # monotonic: nothing is sent before (backoff, next probe)

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
        failing = FailureLog(log, f"forwarding to {self.name}")
        await self._restore_state(failing)
        batch: Sequence[Claimed] | None = None
        while True:
            try:
                if batch is None:
                    await self._hold()
                    self._wake.clear()  # before the claim: a wake during it is not lost
                    batch = await self._outbox.call(
                        lambda s: s.claim(self.name, self.target.batch_size))
                if batch:
                    batch = await self._deliver(batch)
                else:
                    batch = None
                    await self._idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the outbox or a bug: log, breathe, go on
                batch = None
                failing.failed(exc, traceback=True)
                await asyncio.sleep(1.0)

    async def _restore_state(self, failing: FailureLog) -> None:
        """A target down before a restart stays down (probed at once: a restart may be the fix)."""
        while True:
            try:
                state = await self._outbox.call(lambda s: s.target_state(self.name))
                break
            except Exception as exc:  # the outbox cannot answer yet: as in run()
                failing.failed(exc)
                await asyncio.sleep(1.0)
        if not state.up:
            self.up, self._down_since = False, state.since
            log.info("forwarding to %s: down since %s (%s), %d statements behind; probing it",
                     self.name, _when(state.since), state.reason, self.behind)

    async def _hold(self) -> None:
        """Wait out the backoff, or the time to the next probe of a down target."""
        wait = self._hold_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=_IDLE_POLL)

    async def _deliver(self, batch: Sequence[Claimed]) -> Sequence[Claimed] | None:
        """Send a claimed batch; the next batch when it could be claimed in the same commit."""
        # An xAPI 2.0 statement is never sent to a target that speaks only 1.0.x.
        target_minor = _minor(self.target.xapi_version)
        unfit = [item.seq for item in batch
                 if item.version is not None and _minor(item.version) > target_minor]
        if unfit:
            reason = (f"written in a newer xAPI version than the target's "
                      f"{self.target.xapi_version}")
            await self._outbox.call(partial(OutboxStore.dead_letter, target=self.name,
                                            seqs=unfit, reason=reason))
            batch = [item for item in batch if item.seq not in unfit]
            if not batch:
                return None
        pending: list[Sequence[Claimed]] = [batch]
        while pending:
            part = pending.pop()
            outcome = await self._send(part)
            seqs = [item.seq for item in part]
            if outcome.kind == "transient":
                self.failed += 1
                await self._failed(seqs, outcome)
                return None  # the target is struggling: wait for the backoff before more
            await self._answered()
            if outcome.kind == "delivered":
                # One commit: the ack and (after the last part) the next batch.
                following = await self._outbox.call(partial(
                    self._acked, seqs=seqs, claim_next=not pending))
                if not pending:
                    return following
            elif outcome.kind == "split":
                half = len(part) // 2
                pending.extend([part[half:], part[:half]])  # first half goes first
            else:  # rejected: one statement, for a reason a human must look at
                log.warning("forwarding to %s: statement dead-lettered: %s", self.name,
                            outcome.reason)
                await self._outbox.call(partial(OutboxStore.dead_letter, target=self.name,
                                                seqs=seqs, reason=outcome.reason))
        return None

    def _acked(self, store: OutboxStore, seqs: Sequence[int],
               claim_next: bool) -> list[Claimed] | None:
        """Delivered: ack, and perhaps claim what is next."""
        store.ack(self.name, seqs)
        return store.claim(self.name, self.target.batch_size) if claim_next else None

    async def _answered(self) -> None:
        """The target answered (whatever it thought of the statements): it is up."""
        self._failures = 0
        if self.up:
            return
        down_since = self._down_since
        await self._outbox.call(lambda s: s.set_state(self.name, TargetState(True)))
        self.up, self._down_since = True, None
        log.info("forwarding to %s: target is back after %s down, %d statements behind; "
                 "delivering them", self.name, _duration(down_since), self.behind)

    async def _failed(self, seqs: Sequence[int], outcome: Outcome) -> None:
        """A transient failure: back off; past max_retries in a row, the target is down."""
        self._failures += 1
        going_down = self.up and self._failures > self.target.max_retries
        if self.up and not going_down:
            # Full jitter: spread retries of many gateways over the whole window.
            window = min(self.target.backoff_cap,
                         self.target.backoff_base * 2 ** self._failures)
            delay = max(random.uniform(0, window), outcome.retry_after or 0.0)
        else:  # down: probe slowly, with the oldest batch
            delay = max(self.target.backoff_cap, outcome.retry_after or 0.0)
        now = time.time()
        state = TargetState(False, now, outcome.reason)

        def record(store: OutboxStore) -> None:
            store.retry(self.name, seqs, now + delay, outcome.reason)
            if going_down:
                store.set_state(self.name, state)

        await self._outbox.call(record)
        self._hold_until = time.monotonic() + delay
        if going_down:
            self.up, self._down_since = False, now
            log.warning("forwarding to %s: target down after %d failed attempts in a row (%s); "
                        "%d statements behind, kept until it is back; probing it every %g s",
                        self.name, self._failures, outcome.reason, self.behind,
                        self.target.backoff_cap)

    async def _send(self, part: Sequence[Claimed]) -> Outcome:
        body, content_type = _payload(part)
        started = time.perf_counter()
        outcome = await self._post(body, content_type, len(part))
        if self._observe is not None:
            label = {"timeout": "timeout", "error": "error"}.get(outcome[1], outcome[1])
            self._observe(self.name, label, time.perf_counter() - started)
        return outcome[0]

    async def _post(self, body: bytes, content_type: str,
                    count: int) -> tuple[Outcome, str]:
        """(outcome, metric label) of one POST."""
        headers = CIMultiDict({**self._headers, "Content-Type": content_type})
        try:
            response = await self._pool.request("POST", self._path, headers, body,
                                                limit=_ANSWER_LIMIT, within=self.target.timeout)
        except (AnswerTimeout, ConnectTimeout):
            return Outcome("transient", f"timed out after {self.target.timeout} s"), "timeout"
        except H1Error as exc:
            return Outcome("transient", f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]), "error"
        text = redact(response.body[:_REASON_CHARS].decode("utf-8", "replace"), self._secrets)
        status = response.status
        retry_after = _retry_after(response.headers.get("Retry-After"))
        reason = f"HTTP {status}: {text}".strip()
        label = status_class(status)
        if status in (200, 204):
            return Outcome("delivered"), label
        if status == 409 and count == 1:
            return Outcome("delivered"), label  # it already holds that id: delivered before
        if status == 429 or status >= 500 or status == 408:
            return Outcome("transient", reason, retry_after), label
        if status in _TARGET_REFUSED:
            return Outcome("transient", f"{reason} (the target refuses the gateway's "
                           "credential, or its URL is wrong)", retry_after), label
        if count > 1:
            return Outcome("split", reason), label  # find the statement it objects to
        return Outcome("rejected", reason), label


def _when(moment: float | None) -> str:
    """A Unix time for a log line (UTC, to the second)."""
    if moment is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _duration(since: float | None) -> str:
    """How long ago `since` was, for a log line."""
    if since is None:
        return "an unknown time"
    seconds = max(0, math.floor(time.time() - since))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
