"""A fast upstream stub LRS for the benchmarks: a raw asyncio.Protocol HTTP/1.1 server.

    python bench/stub_lrs.py --port 8100 [--port 8101 ...]

With several --port, one process serves each port as a separate LRS (its own counters): the
bench uses that for the forwarding targets.

Answers, with keep-alive:
- POST/PUT /xAPI/statements: 200 with the JSON list of the statement ids found in the body
  (PUT: 204). "Parsing" is a regex for `"id": "<uuid>"`, so it returns each statement's id
  as long as nothing else in the statement carries a UUID under "id" (a StatementRef or
  SubStatement object would); the bench statements do not.
- GET /xAPI/statements (and any other GET/HEAD under /xAPI/): a small StatementResult.
- GET /_bench/last: the last statements body it received (the bench checks the authority
  the proxies set); GET /_bench/count: how many statement writes it answered.
- GET /_bench/reset?track=off|count|ids: zero the counters; then count the statements
  received (count), and also remember every statement id (ids) to check exactly-once
  delivery. GET /_bench/ids: {"writes", "statements", "distinct", "duplicates"} (distinct and
  duplicates with track=ids), and with ?full=1 the list of distinct ids.
Anything else: 404. Chunked request bodies are refused (411): neither wrk nor aiohttp's
client sends them for a bytes body.

It must be much faster than the proxies in front of it; the bench shows its direct figure.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import signal
import socket
from collections import Counter

_ID = re.compile(
    rb'"id"\s*:\s*"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-'
    rb'[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"'
)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)

_STATEMENT_RESULT = json.dumps(
    {
        "statements": [
            {
                "id": "6690e6c9-3ef0-4ed3-8b37-7f3964730bee",
                "actor": {"objectType": "Agent", "mbox": "mailto:learner@example.com"},
                "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
                "object": {"objectType": "Activity", "id": "http://example.com/activities/1"},
                "stored": "2024-01-01T00:00:00.000Z",
                "timestamp": "2024-01-01T00:00:00.000Z",
                "authority": {"objectType": "Agent", "mbox": "mailto:gateway@example.com"},
                "version": "1.0.3",
            }
        ],
        "more": "",
    },
    separators=(",", ":"),
).encode()

_REASONS = {
    200: b"OK",
    204: b"No Content",
    404: b"Not Found",
    400: b"Bad Request",
    411: b"Length Required",
}


def _response(status: int, body: bytes = b"", *, close: bool = False) -> bytes:
    head = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown"))]
    if status != 204:
        head.append(b"Content-Type: application/json")
        head.append(b"Content-Length: %d" % len(body))
    head.append(b"X-Experience-API-Version: 1.0.3")
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + (body if status != 204 else b"")


class Stats:
    """What the bench asks the stub about."""

    def __init__(self) -> None:
        self.last_body = b""
        self.writes = 0
        self.track = "off"  # off | count | ids
        self.statements = 0
        self.ids: Counter[bytes] = Counter()

    def reset(self, track: str) -> None:
        self.writes = 0
        self.statements = 0
        self.ids = Counter()
        self.track = track if track in ("off", "count", "ids") else "off"

    def record(self, found: list[bytes]) -> None:
        if self.track == "off":
            return
        self.statements += len(found)
        if self.track == "ids":
            self.ids.update(found)

    def summary(self, full: bool) -> bytes:
        distinct = len(self.ids)
        answer: dict[str, object] = {
            "track": self.track,
            "writes": self.writes,
            "statements": self.statements,
            "distinct": distinct if self.track == "ids" else None,
            "duplicates": self.statements - distinct if self.track == "ids" else None,
        }
        if full:
            answer["ids"] = [found.decode() for found in self.ids]
        return json.dumps(answer).encode()


class StubProtocol(asyncio.Protocol):
    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        out = []
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self._buffer[:end])
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if length == 0 and _CHUNKED.search(head):
                out.append(_response(411, close=True))
                self._flush(out, close=True)
                return
            total = end + 4 + length
            if len(self._buffer) < total:
                break
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            close = _CONNECTION_CLOSE.search(head) is not None
            out.append(self._answer(head, body, close))
            if close:
                self._flush(out, close=True)
                return
        self._flush(out, close=False)

    def _flush(self, out: list[bytes], *, close: bool) -> None:
        assert self._transport is not None
        if out:
            self._transport.write(b"".join(out))
        if close:
            self._transport.close()

    def _answer(self, head: bytes, body: bytes, close: bool) -> bytes:
        line_end = head.find(b"\r\n")
        request_line = head[: line_end if line_end >= 0 else len(head)]
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return _response(400, close=True)
        method = parts[0]
        target, _, query = parts[1].partition(b"?")
        if target.startswith(b"/xAPI/statements"):
            if method == b"POST":
                self._stats.last_body = body
                self._stats.writes += 1
                found = _ID.findall(body)
                self._stats.record(found)
                ids = b",".join(b'"' + one + b'"' for one in found)
                return _response(200, b"[" + ids + b"]", close=close)
            if method == b"PUT":
                self._stats.last_body = body
                self._stats.writes += 1
                self._stats.record(_ID.findall(body)[:1])
                return _response(204, close=close)
        if method in (b"GET", b"HEAD"):
            if target == b"/_bench/last":
                return _response(200, self._stats.last_body or b"null", close=close)
            if target == b"/_bench/count":
                return _response(200, b"%d" % self._stats.writes, close=close)
            if target == b"/_bench/reset":
                track = query.partition(b"track=")[2].partition(b"&")[0].decode() or "off"
                self._stats.reset(track)
                return _response(200, self._stats.summary(False), close=close)
            if target == b"/_bench/ids":
                return _response(200, self._stats.summary(b"full=1" in query), close=close)
            if target.startswith(b"/xAPI/"):
                answer = _response(200, _STATEMENT_RESULT, close=close)
                if method == b"HEAD":
                    answer = answer[: answer.index(b"\r\n\r\n") + 4]
                return answer
        return _response(404, b'{"error":"not found"}', close=close)


async def serve(host: str, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for port in ports:
        stats = Stats()  # one LRS per port
        servers.append(
            await loop.create_server(
                functools.partial(StubProtocol, stats), host, port, backlog=1024, reuse_address=True
            )
        )
        print(f"stub LRS listening on http://{host}:{port}/xAPI/", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        help="repeat for several LRSes in one process (default 8100)",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port or [8100]))


if __name__ == "__main__":
    main()
