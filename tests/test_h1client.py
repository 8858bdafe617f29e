"""The lean HTTP/1.1 client against raw, scripted servers: framing, keep-alive, failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from multidict import CIMultiDict
from yarl import URL

from gateway.upstream.h1 import (
    AnswerTimeout,
    ConnectionBroken,
    H1Error,
    H1Pool,
    NothingReceived,
    TooLarge,
)

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


@dataclass
class Server:
    """A loopback TCP server: `reply` answers each request; False closes the connection."""

    reply: Reply
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.reply(reader, writer, len(self.requests)):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(reply: Reply) -> AsyncIterator[tuple[Server, H1Pool]]:
    server = Server(reply)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    pool = H1Pool(URL(f"http://127.0.0.1:{server.port}"), connect_timeout=2)
    try:
        yield server, pool
    finally:
        pool.close()
        listener.close()
        await listener.wait_closed()


def answer(writer: asyncio.StreamWriter, raw: bytes) -> None:
    writer.write(raw)


async def post(pool: H1Pool, body: bytes = b'{"a":1}', limit: int = 1 << 20) -> tuple[int, bytes]:
    headers = CIMultiDict({"Content-Type": "application/json", "X-Request-ID": "r1"})
    response = await pool.request(
        "POST", "/xAPI/statements?x=%20y", headers, body, limit=limit, within=5
    )
    return response.status, response.body


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
    answer(
        writer,
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n["id"]\n',
    )
    return True


async def test_the_request_goes_out_exactly_and_the_connection_is_reused() -> None:
    async with serving(ok) as (server, pool):
        for _ in range(3):
            assert await post(pool) == (200, b'["id"]\n')
        assert server.connections == 1
        assert pool.opened == 1
        assert server.requests[0] == (
            b"POST /xAPI/statements?x=%20y HTTP/1.1\r\n"
            + f"Host: 127.0.0.1:{server.port}\r\n".encode()
            + b"Content-Type: application/json\r\nX-Request-ID: r1\r\n"
            b'Content-Length: 7\r\n\r\n{"a":1}'
        )


async def test_answers_side_by_side_open_their_own_connections() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.1)
        return await ok(reader, writer, n)

    async with serving(slow) as (server, pool):
        results = await asyncio.gather(*(post(pool) for _ in range(4)))
        assert results == [(200, b'["id"]\n')] * 4
        assert server.connections == 4
        await asyncio.gather(*(post(pool) for _ in range(4)))
        assert server.connections == 4  # the second round reuses all four


async def test_chunked_answers_are_joined() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n["ab\r\n')
        await writer.drain()
        await asyncio.sleep(0.02)  # the rest in another packet
        writer.write(b'3;ext=1\r\n"]\n\r\n0\r\nTrailer: x\r\n\r\n')
        return True

    async with serving(chunked) as (server, pool):
        assert await post(pool) == (200, b'["ab"]\n')
        assert await post(pool) == (200, b'["ab"]\n')
        assert server.connections == 1


async def test_an_answer_delimited_by_the_close_is_whole_and_the_connection_not_kept() -> None:
    async def close_delimited(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        return False

    async with serving(close_delimited) as (server, pool):
        assert await post(pool) == (200, b"all of it")
        assert await post(pool) == (200, b"all of it")
        assert server.connections == 2


async def test_connection_close_from_the_server_is_honoured() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        answer(writer, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the client must not wait for the close to finish
        return False

    async with serving(once) as (server, pool):
        assert await post(pool) == (204, b"")
        assert await post(pool) == (204, b"")
        assert server.connections == 2


async def test_interim_answers_are_skipped() -> None:
    async def continued(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        answer(
            writer,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        )
        return True

    async with serving(continued) as (_, pool):
        assert await post(pool) == (201, b"ok")


async def test_a_connection_the_server_closed_while_idle_is_replaced_transparently() -> None:
    async def then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        await ok(reader, writer, n)
        await writer.drain()
        return False  # closes right after answering, without saying so

    async with serving(then_close) as (server, pool):
        assert await post(pool) == (200, b'["id"]\n')
        await asyncio.sleep(0.1)  # the close arrives while the connection idles
        assert await post(pool) == (200, b'["id"]\n')
        assert server.connections == 2
        assert len(server.requests) == 2  # nothing was sent twice


async def test_a_reused_connection_closed_unanswered_is_retried_once_on_a_new_one() -> None:
    async def drop_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if n == 2:
            return False  # read the request, closed without a byte: as a server timing out
        return await ok(reader, writer, n)

    async with serving(drop_second) as (server, pool):
        assert await post(pool) == (200, b'["id"]\n')
        assert await post(pool) == (200, b'["id"]\n')
        assert server.connections == 2
        assert len(server.requests) == 3


async def test_a_new_connection_closed_unanswered_is_an_error_not_a_retry() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        return False

    async with serving(drop) as (server, pool):
        with pytest.raises(NothingReceived):
            await post(pool)
        assert len(server.requests) == 1


async def test_the_servers_keep_alive_timeout_is_honoured() -> None:
    async def short_keep_alive(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        answer(writer, b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 0\r\n\r\n")
        return True

    async with serving(short_keep_alive) as (server, pool):
        await post(pool)
        await post(pool)  # within the second the server allows (less a margin of 1 s): no
        assert server.connections == 2


async def test_a_connection_lost_mid_answer_is_a_broken_answer() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        answer(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        return False

    async with serving(cut) as (_, pool):
        with pytest.raises(ConnectionBroken):
            await post(pool)


@pytest.mark.parametrize(
    "raw",
    [
        b"not http at all\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_garbage_is_a_broken_answer(raw: bytes) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        answer(writer, raw)
        return True

    async with serving(garbage) as (server, pool):
        for _ in range(2):
            with pytest.raises(ConnectionBroken):
                await post(pool)
        assert server.connections == 2  # a connection that spoke garbage is never reused


@pytest.mark.parametrize("headers", [b"Content-Length: 2000\r\n\r\n", b"\r\n"])
async def test_an_answer_over_the_limit_is_refused(headers: bytes) -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        answer(writer, b"HTTP/1.1 200 OK\r\n" + headers + b"x" * 2000)
        return False

    async with serving(big) as (_, pool):
        with pytest.raises(TooLarge):
            await post(pool, limit=1000)


async def test_a_request_given_up_closes_its_connection() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await asyncio.sleep(10)
        return await ok(reader, writer, n)

    async with serving(never) as (server, pool):
        with pytest.raises(AnswerTimeout):
            await pool.request("POST", "/", CIMultiDict(), b"", limit=10, within=0.2)
        assert await post(pool) == (200, b'["id"]\n')
        assert server.connections == 2  # the abandoned connection was not reused


async def test_nobody_listening_is_an_error() -> None:
    async with serving(ok) as (server, _):
        port = server.port
    pool = H1Pool(URL(f"http://127.0.0.1:{port}"), connect_timeout=2)
    with pytest.raises(H1Error, match="cannot be reached"):
        await post(pool)


async def test_line_breaks_in_headers_are_refused_before_sending() -> None:
    pool = H1Pool(URL("http://127.0.0.1:9"), connect_timeout=1)
    with pytest.raises(ValueError, match="line break"):
        await pool.request(
            "POST", "/", CIMultiDict({"X-Evil": "a\r\nHost: b"}), b"", limit=1, within=1
        )
    with pytest.raises(ValueError, match="HEAD"):
        await pool.request("HEAD", "/", CIMultiDict(), b"", limit=1, within=1)


def test_host_header_of_default_ports_and_ipv6() -> None:
    def host_of(origin: str) -> bytes:
        raw = H1Pool(URL(origin), connect_timeout=1).encode("GET", "/", CIMultiDict(), b"")
        return raw.split(b"\r\n")[1]

    assert host_of("http://lrs.example.org") == b"Host: lrs.example.org"
    assert host_of("https://lrs.example.org:8443") == b"Host: lrs.example.org:8443"
    assert host_of("http://[::1]:8100") == b"Host: [::1]:8100"


async def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    async def two_answers(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        answer(
            writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Le"
        )  # a stray second answer begins
        return True

    async with serving(two_answers) as (server, pool):
        assert await post(pool) == (200, b"ok")
        assert await post(pool) == (200, b"ok")
        assert server.connections == 2  # the first connection was not trusted again


async def test_endless_headers_or_interim_answers_are_refused() -> None:
    async def huge_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        answer(writer, b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n")
        return True

    async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        answer(writer, b"HTTP/1.1 102 Processing\r\n\r\n" * 20)
        return True

    async with serving(huge_head) as (_, pool):
        with pytest.raises(TooLarge, match="headers"):
            await post(pool)
    async with serving(interim) as (_, pool):
        with pytest.raises(ConnectionBroken, match="interim"):
            await post(pool)


def test_headers_the_client_sets_itself_cannot_be_given() -> None:
    pool = H1Pool(URL("http://127.0.0.1:9"), connect_timeout=1)
    for name in ("Host", "content-length", "Transfer-Encoding", "Connection"):
        with pytest.raises(ValueError, match="the client's to set"):
            pool.encode("POST", "/", CIMultiDict({name: "x"}), b"")
