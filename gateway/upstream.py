"""The storage LRS client: one session, its own credentials, timeouts, errors translated here."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import StorageConfig
from gateway.errors import (
    BadRequest,
    StorageUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.h1client import (
    AnswerTimeout,
    ConnectionBroken,
    ConnectTimeout,
    H1Error,
    H1Pool,
    H1Response,
    TooLarge,
)
from gateway.metrics import status_class
from gateway.secret import redact

__all__ = [
    "HOP_BY_HOP", "Observe", "Upstream", "hide_failed_answer", "hide_failure",
    "read_capped", "response_headers",
]


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """An upstream body the gateway must rewrite, refused (502) past `limit` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise UpstreamUnavailable(f"the storage LRS's answer is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise UpstreamUnavailable(f"the storage LRS's answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Never sent upstream: ours to handle (auth), recomputed by aiohttp (length, host), or ours
# to decide (encoding).
_REQUEST_DROP = HOP_BY_HOP | {"host", "authorization", "content-length", "expect", "cookie"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "server", "date"}
log = logging.getLogger(__name__)
_LOGGED_BODY = 2000
Observe: TypeAlias = Callable[[str, str, float], None]  # (target, outcome, seconds)


def request_headers(incoming: Mapping[str, str], *, extra: Mapping[str, str]) -> CIMultiDict[str]:
    """Client headers fit to send upstream, plus `extra`."""
    connection_tokens = {
        token.strip().lower() for token in incoming.get("Connection", "").split(",") if token
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lowered = name.lower()
        if lowered not in _REQUEST_DROP and lowered not in connection_tokens:
            out.add(name, value)
    out.update(extra)
    return out


def response_headers(upstream: CIMultiDictProxy[str], *, decoded: bool) -> CIMultiDict[str]:
    """Upstream answer headers fit to pass to the client."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lowered = name.lower()
        if lowered in _RESPONSE_DROP or (decoded and lowered == "content-encoding"):
            continue
        out.add(name, value)
    return out


async def hide_failure(response: aiohttp.ClientResponse, upstream: Upstream,
                       request_id: str) -> None:
    """Keep an upstream 5xx's body from the client: log it, raise our own error instead.

    Such bodies may hold stack traces and internal host names.
    """
    if response.status < 500:
        return
    _report_failure(response.status, await response.content.read(_LOGGED_BODY), upstream,
                    request_id)


def hide_failed_answer(response: H1Response, upstream: Upstream, request_id: str) -> None:
    """`hide_failure` for a whole answer of the lean client."""
    if response.status >= 500:
        _report_failure(response.status, response.body[:_LOGGED_BODY], upstream, request_id)


def _report_failure(status: int, body: bytes, upstream: Upstream, request_id: str) -> None:
    said = body.decode("utf-8", "replace")
    log.warning("%s answered HTTP %d (request %s): %s", upstream.name, status, request_id,
                redact(said, upstream.secrets))
    raise UpstreamFailed(status)


class Upstream:
    """An upstream LRS at `base` (ending with `/`); answers are the caller's to release."""

    def __init__(self, session: aiohttp.ClientSession, config: StorageConfig, *,
                 name: str = "storage", observe: Observe | None = None,
                 queue_timeout: float = 5.0) -> None:
        self._session = session
        self.name = name
        self._observe = observe
        # A slot per connection: past them, wait a little, then a clean 503.
        self._slots = asyncio.Semaphore(config.max_connections)
        self._queue_timeout = queue_timeout
        self.base = URL(config.url if config.url.endswith("/") else config.url + "/")
        self.base_path = self.base.raw_path
        self._auth: dict[str, str] = {}
        self.secrets: tuple[str, ...] = ()  # what to mask in its answers before logging them
        if config.basic_username is not None and config.basic_password is not None:
            token = f"{config.basic_username}:{config.basic_password.reveal()}"
            self._auth["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
            self.secrets = (token, config.basic_password.reveal())
        self._timeout = aiohttp.ClientTimeout(
            total=config.timeout, sock_connect=config.connect_timeout
        )
        self._total_timeout = config.timeout
        # Statement writes take the lean client (bench/: the ClientSession path is the
        # largest cost of a proxied write); everything streamed stays on the session.
        self._lean = H1Pool(self.base.origin(), connect_timeout=config.connect_timeout,
                            max_idle=config.max_connections)

    def close(self) -> None:
        """Close the lean client's idle connections (the session is its owner's to close)."""
        self._lean.close()

    async def _slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: no need for a timer
            return
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise StorageUnavailable("the storage LRS is saturated; try again shortly") from None

    async def exchange(self, method: str, raw_tail: str, *, raw_query: str = "",
                       headers: Mapping[str, str], body: bytes, limit: int) -> H1Response:
        """Send a buffered request, read the whole answer (at most `limit` bytes).

        For requests that may be sent twice (see gateway.h1client): statement writes.
        Connection errors become 502 and timeouts 504, as for `request`.
        """
        sent = CIMultiDict(headers)
        sent.update(self._auth)
        target = self.base_path + raw_tail + (f"?{raw_query}" if raw_query else "")
        await self._slot()
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self._lean.request(method, target, sent, body, limit=limit,
                                                within=self._total_timeout)
            outcome = status_class(response.status)
            return response
        except (AnswerTimeout, ConnectTimeout):
            outcome = "timeout"
            raise UpstreamTimeout("the storage LRS did not answer in time") from None
        except TooLarge as exc:
            outcome = "2xx"  # it answered; the answer is ours to refuse
            raise UpstreamUnavailable(str(exc)) from None
        except ConnectionBroken:
            raise UpstreamUnavailable("the storage LRS sent a broken answer") from None
        except H1Error as exc:
            raise UpstreamUnavailable(str(exc)) from None
        except ValueError as exc:  # a client's header we cannot send on
            raise BadRequest(str(exc)) from None
        finally:
            self._slots.release()
            if self._observe is not None:
                self._observe(self.name, outcome, time.perf_counter() - started)

    def url(self, raw_tail: str, raw_query: str = "") -> URL:
        """The upstream URL for a path relative to the xAPI base (still encoded)."""
        target = str(self.base) + raw_tail + (f"?{raw_query}" if raw_query else "")
        return URL(target, encoded=True)

    @asynccontextmanager
    async def request(
        self,
        method: str,
        raw_tail: str,
        *,
        raw_query: str = "",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        decompress: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; connection errors become 502 and timeouts 504, in here only."""
        sent = CIMultiDict(headers or {})
        sent.update(self._auth)
        await self._slot()
        try:
            async with self._exchange(method, raw_tail, raw_query, sent, data,
                                      decompress) as response:
                yield response
        finally:
            self._slots.release()

    @asynccontextmanager
    async def _exchange(self, method: str, raw_tail: str, raw_query: str,
                        sent: CIMultiDict[str], data: Any,
                        decompress: bool) -> AsyncIterator[aiohttp.ClientResponse]:
        started = time.perf_counter()
        answered = False
        try:
            async with self._session.request(
                method,
                self.url(raw_tail, raw_query),
                headers=sent,
                data=data,
                timeout=self._timeout,
                allow_redirects=False,
                auto_decompress=decompress,
            ) as response:
                answered = True
                if self._observe is not None:
                    self._observe(self.name, status_class(response.status),
                                  time.perf_counter() - started)
                yield response
        except TimeoutError:
            if not answered and self._observe is not None:
                self._observe(self.name, "timeout", time.perf_counter() - started)
            raise UpstreamTimeout("the storage LRS did not answer in time") from None
        except aiohttp.ClientPayloadError:
            raise UpstreamUnavailable("the storage LRS sent a broken answer") from None
        except aiohttp.ClientError as exc:
            if not answered and self._observe is not None:
                self._observe(self.name, "error", time.perf_counter() - started)
            raise UpstreamUnavailable(
                f"the storage LRS cannot be reached ({type(exc).__name__})"
            ) from None
