"""One worker per forwarding target: batches, retries with backoff and jitter, dead letters."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
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
from gateway.forwarding.outbox import Outbox
from gateway.forwarding.store import Claimed, OutboxStore
from gateway.h1client import AnswerTimeout, ConnectTimeout, H1Error, H1Pool
from gateway.metrics import status_class
from gateway.multipart import Part, build
from gateway.secret import redact
from gateway.upstream import Observe

__all__ = ["Outcome", "TargetWorker"]

log = logging.getLogger(__name__)
_IDLE_POLL = 1.0  # seconds between looks at the queue (the CLI replays without waking us)
_REASON_CHARS = 300
_ANSWER_LIMIT = 1 << 20  # bytes of a target's answer read (it is a list of ids)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one POST to the target went."""

    kind: str  # delivered | split | rejected | transient
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
        self._last_probe = 0.0
        self.failed = 0  # failed sends (metrics read it)

    def close(self) -> None:
        """Close the idle connection to the target."""
        self._pool.close()

    def wake(self) -> None:
        """New deliveries were queued."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        batch: Sequence[Claimed] | None = None
        while True:
            try:
                if batch is None:
                    batch = await self._outbox.call(
                        lambda s: s.claim(self.name, self.target.batch_size, time.time()))
                if batch:
                    batch = await self._deliver(batch)
                else:
                    batch = None
                    await self._idle()
            except asyncio.CancelledError:
                raise
            except Exception:  # the outbox or a bug: log, breathe, go on
                batch = None
                log.exception("forwarding to %s: unexpected error", self.name)
                await asyncio.sleep(1.0)

    async def _idle(self) -> None:
        due = await self._outbox.call(lambda s: s.next_due(self.name))
        wait = min(_IDLE_POLL, self.target.backoff_cap if due is None
                   else max(0.0, due - time.time()))
        if due is None and time.monotonic() - self._last_probe >= self.target.backoff_cap:
            # Transient dead letters (the target was down): send a few again as a probe;
            # a success brings all the others back (see _settle).
            self._last_probe = time.monotonic()
            moved = await self._outbox.call(lambda s: s.requeue(
                self.name, transient_only=True, limit=self.target.batch_size,
                attempts=self.target.max_retries))
            if moved:
                return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=wait)

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
                                            seqs=unfit, reason=reason, transient=False))
            batch = [item for item in batch if item.seq not in unfit]
            if not batch:
                return None
        pending: list[Sequence[Claimed]] = [batch]
        while pending:
            part = pending.pop()
            outcome = await self._send(part)
            seqs = [item.seq for item in part]
            if outcome.kind == "delivered":
                # One commit: the ack, dead letters brought back, and (after the last part)
                # the next batch.
                moved, following = await self._outbox.call(partial(
                    self._acked, seqs=seqs, claim_next=not pending))
                if moved:
                    log.info("forwarding to %s: reachable again, %d dead letters re-queued",
                             self.name, moved)
                if not pending:
                    return following
            elif outcome.kind == "split":
                half = len(part) // 2
                pending.extend([part[half:], part[:half]])  # first half goes first
            elif outcome.kind == "rejected":
                log.warning("forwarding to %s: statement dead-lettered: %s", self.name,
                            outcome.reason)
                await self._outbox.call(partial(OutboxStore.dead_letter, target=self.name,
                                                seqs=seqs, reason=outcome.reason,
                                                transient=False))
            else:
                self.failed += 1
                await self._retry_or_give_up(part, outcome)
                return None  # the target is struggling: wait for the backoff before more
        return None

    def _acked(self, store: OutboxStore, seqs: Sequence[int],
               claim_next: bool) -> tuple[int, list[Claimed] | None]:
        """Delivered: ack, bring transient dead letters back, perhaps claim what is next.

        Dead letters come back in chunks: after a long outage they may be many.
        """
        store.ack(self.name, seqs)
        moved = store.requeue(self.name, transient_only=True, limit=10 * self.target.batch_size)
        following = (store.claim(self.name, self.target.batch_size, time.time())
                     if claim_next else None)
        return moved, following

    async def _retry_or_give_up(self, part: Sequence[Claimed], outcome: Outcome) -> None:
        attempts = max(item.attempts for item in part) + 1
        seqs = [item.seq for item in part]
        if attempts > self.target.max_retries:
            log.warning("forwarding to %s: %d statements dead-lettered after %d attempts: %s",
                        self.name, len(seqs), attempts, outcome.reason)
            await self._outbox.call(
                lambda s: s.dead_letter(self.name, seqs, outcome.reason, True))
            return
        # Full jitter: spread retries of many gateways over the whole window.
        window = min(self.target.backoff_cap, self.target.backoff_base * 2 ** attempts)
        delay = max(random.uniform(0, window), outcome.retry_after or 0.0)
        await self._outbox.call(
            lambda s: s.retry(self.name, seqs, time.time() + delay, outcome.reason))

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
        if status == 429 or status >= 500 or status in (408,):
            return Outcome("transient", reason, retry_after), label
        if count > 1:
            return Outcome("split", reason), label  # find the statement it objects to
        return Outcome("rejected", reason), label
