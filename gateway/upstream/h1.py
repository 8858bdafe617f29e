"""A lean HTTP/1.1 client for buffered exchanges with one origin: the statement write path.

aiohttp's ClientSession costs more than half of a proxied request (measured in bench/):
request and response objects, cookie jar, tracing, stream readers. A statement write needs
none of it: the body is in memory, the answer is small and read whole. Here one protocol
object per connection feeds bytes to httptools (llhttp, the parser Node uses) and a pool
keeps connections alive between requests.

HTTP/1.1 as a client must do it: Content-Length, chunked and close-delimited answers,
interim 1xx answers skipped, keep-alive honoured both ways (the server's `Connection: close`
and `Keep-Alive: timeout=N`), idle connections expired before the server drops them, and a
request that finds its reused connection already closed by the server (nothing received)
sent again once on a new connection. Callers send only requests whose repetition is
harmless: statement writes carry their ids.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from dataclasses import dataclass
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.headers import RESERVED_HEADERS

__all__ = [
    "AnswerTimeout",
    "ConnectTimeout",
    "ConnectionBroken",
    "H1Error",
    "H1Pool",
    "H1Response",
    "NothingReceived",
    "TooLarge",
]

IDLE_TIMEOUT = 15.0  # seconds a connection may stay idle in the pool (aiohttp's default)
KEEP_ALIVE_MARGIN = 1.0  # seconds before the server's announced keep-alive timeout
MAX_HEAD = 64 * 1024  # bytes of status line and headers one answer may have
MAX_INTERIM = 10  # 1xx answers before the real one, at most


class H1Error(Exception):
    """An exchange failed; the message says how (no secrets, no bodies)."""


class ConnectTimeout(H1Error):
    """No connection within the connect timeout."""


class AnswerTimeout(H1Error):
    """No whole answer within the request's timeout."""


class NothingReceived(H1Error):
    """The connection closed before any byte of an answer came."""


class ConnectionBroken(H1Error):
    """The connection closed, or the answer was not HTTP, part way through."""


class TooLarge(H1Error):
    """The answer's body is larger than the caller allows."""


@dataclass(frozen=True, slots=True)
class H1Response:
    """A whole answer."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


def _keep_alive_timeout(value: str) -> float | None:
    for part in value.split(","):
        name, _, number = part.strip().partition("=")
        if name.strip().lower() == "timeout":
            try:
                return float(number.strip())
            except ValueError:
                return None
    return None


class _Connection(asyncio.Protocol):
    """One connection: at most one exchange at a time, answers parsed as they arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, peer: str) -> None:
        self._loop = loop
        self._peer = peer  # how messages name the server: "the storage LRS", ...
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.expires_at = float("inf")
        self._waiter: asyncio.Future[H1Response] | None = None
        self._limit = 0
        # One parser for the connection's life: llhttp reads answer after answer.
        self._parser = httptools.HttpResponseParser(self)
        self._received = False
        self._interim = 0
        self._reset()

    def _reset(self) -> None:
        self._head_size = 0
        self._final = False  # a final (not 1xx) answer came: nothing may follow it
        self._headers_done = False
        self._status = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._delimited = False  # by Content-Length or chunked (else by the close)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not registered as an asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._close()  # bytes nobody asked for: the connection is not trustworthy
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionBroken(f"{self._peer} switched protocols"))
        except httptools.HttpParserError as exc:
            # A callback's own error (TooLarge) comes wrapped in the parser's.
            cause = exc.__context__
            self._fail(
                cause
                if isinstance(cause, H1Error)
                else ConnectionBroken(f"{self._peer} sent a broken answer")
            )

    def eof_received(self) -> bool:
        self.closed = True  # never taken from the pool again
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._delimited and exc is None:
            self.on_message_complete()  # a body delimited by a clean close: it is whole
        elif not self._received:
            waiter.set_exception(NothingReceived(f"{self._peer} closed the connection"))
        else:
            waiter.set_exception(
                ConnectionBroken(f"{self._peer} closed the connection part way through its answer")
            )

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._final:  # bytes after the whole answer: this connection is not in step
            raise ConnectionBroken(f"{self._peer} sent more than one answer")

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            raise TooLarge(f"{self._peer}'s answer has over {MAX_HEAD} bytes of headers")

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        names = {name.lower(): value for name, value in self._headers}
        length = names.get("content-length")
        self._delimited = (
            length is not None
            or "chunked" in names.get("transfer-encoding", "").lower()
            or self._status in (204, 304)
        )
        if length is not None and length.strip().isdigit() and int(length) > self._limit:
            raise TooLarge(f"{self._peer}'s answer is larger than {self._limit} bytes")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limit:
            raise TooLarge(f"{self._peer}'s answer is larger than {self._limit} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if 100 <= self._status < 200:  # an interim answer: the real one follows
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise ConnectionBroken(f"{self._peer} sent interim answers without end")
            self._reset()
            return
        self._final = True
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        keep = self._delimited and not self.closed and self._parser.should_keep_alive()
        if keep:
            announced = _keep_alive_timeout(headers.get("Keep-Alive", ""))
            if announced is not None:
                self.expires_at = time.monotonic() + announced - KEEP_ALIVE_MARGIN
        else:
            self._close()
        waiter.set_result(H1Response(self._status, self._reason, headers, b"".join(self._body)))

    # -- exchanges ----------------------------------------------------------------------

    def _fail(self, error: H1Error) -> None:
        waiter = self._waiter
        self._close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (an exchange given up half way)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _expire(self) -> None:
        self._fail(AnswerTimeout(f"{self._peer} did not answer in time"))

    async def exchange(self, request: bytes, limit: int, within: float) -> H1Response:
        """Send `request` whole, return the answer to it within `within` seconds."""
        assert self.transport is not None
        if self.closed:
            raise NothingReceived("the connection is closed")
        self._reset()
        self._received = False
        self._interim = 0
        self._limit = limit
        self._waiter = self._loop.create_future()
        # A timer, not asyncio.timeout(): the same deadline for a fraction of the cost.
        timer = self._loop.call_later(within, self._expire)
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            timer.cancel()
            self._waiter = None


class H1Pool:
    """Keep-alive connections to one origin; each request takes one or opens one."""

    def __init__(
        self,
        origin: URL,
        *,
        connect_timeout: float,
        idle_timeout: float = IDLE_TIMEOUT,
        max_idle: int = 100,
        peer: str = "the upstream LRS",
    ) -> None:
        if origin.scheme not in ("http", "https") or not origin.host:
            raise ValueError(f"not an http(s) origin: {origin}")
        self._host = origin.raw_host or origin.host
        self._port = origin.port or (443 if origin.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if origin.scheme == "https" else None
        default = self._port == (443 if origin.scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if default else f"{host}:{self._port}"
        self._peer = peer
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle
        self._idle: collections.deque[_Connection] = collections.deque()
        self._closed = False
        self.opened = 0  # connections ever opened (for tests and curiosity)

    def encode(self, method: str, target: str, headers: CIMultiDict[str], body: bytes) -> bytes:
        """The request's bytes. Header names and values must not hold CR, LF or NUL."""
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {self._host_header}\r\n"]
        for name, value in headers.items():
            if not _LINE_BREAKS.isdisjoint(name) or not _LINE_BREAKS.isdisjoint(value):
                raise ValueError(f"header {name[:40]!r} holds a line break")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name[:40]!r} is the client's to set")
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape") + body

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes,
        *,
        limit: int,
        within: float,
    ) -> H1Response:
        """One exchange, whole within `within` s (connecting included); H1Error when not."""
        if method == "HEAD":
            raise ValueError("HEAD answers have no body to read: not for this client")
        request = self.encode(method, target, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        connection = self._take_idle()
        if connection is not None:
            try:
                return await self._exchange(connection, request, limit, within)
            except NothingReceived:
                pass  # the server had closed it while idle: once more, on a new one
        fresh = await self._open(min(self._connect_timeout, deadline - loop.time()))
        return await self._exchange(fresh, request, limit, deadline - loop.time())

    async def _exchange(
        self, connection: _Connection, request: bytes, limit: int, within: float
    ) -> H1Response:
        if within <= 0:
            connection.abort()
            raise AnswerTimeout(f"{self._peer} did not answer in time")
        try:
            response = await connection.exchange(request, limit, within)
        except BaseException:
            connection.abort()  # cancelled or failed half way: never reused
            raise
        if not connection.closed and not self._closed and len(self._idle) < self._max_idle:
            now = time.monotonic()
            connection.idle_since = now
            connection.expires_at = min(connection.expires_at, now + self._idle_timeout)
            self._idle.append(connection)
        elif not connection.closed:
            connection.abort()
        return response

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recent: the least likely to be stale
            if not connection.closed and now < connection.expires_at:
                connection.expires_at = float("inf")
                return connection
            connection.abort()
        return None

    async def _open(self, within: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(within, 0.0)):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._peer),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {self._peer} timed out") from None
        except OSError as exc:
            raise H1Error(f"{self._peer} cannot be reached ({type(exc).__name__})") from None
        self.opened += 1
        return connection

    def close(self) -> None:
        """Close every idle connection; ones in use close when their exchange ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().abort()


_LINE_BREAKS = frozenset("\r\n\0")
