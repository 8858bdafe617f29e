"""The bench's own load generator: asyncio, HTTP/1.1 keep-alive, closed or open loop.

    python bench/loadgen.py --url http://127.0.0.1:8100/xAPI/statements --body body.json \
        --header 'Content-Type: application/json' --connections 16 --duration 10

Closed loop (the default) like wrk: each connection sends the next request when the previous
answer is read; the fallback when `wrk` cannot be had. It is much slower than wrk; its
ceiling is the direct-to-stub figure (a), which the bench prints beside the others, so a
proxy figure near that ceiling means the generator, not the proxy, limits it.

Open loop (`--rate R`): requests are scheduled at a constant R per second whatever the
server does, sent on the first free connection of a pool of --connections; the latency is
measured from the scheduled time (no coordinated omission: a stalled server makes the
queue, and so the latency, grow). `late_*` say how long requests waited for a connection.

Options for the bench's other runs:
- `--unique-ids`: every `@ID@` in the body becomes a fresh UUID in each request (one per
  statement of a batch); `--ids-out FILE` writes the ids of the statements answered 2xx,
  one a line, to check delivery exactly once.
- `--requests N`: stop after N requests (closed loop); `--progress-every K`: print
  `PROGRESS <statements answered 2xx>` each K statements (the bench samples memory then).
- `--auth-file FILE`: one `Authorization` value a line, used in turn (a password flood).
- `--source-address ADDR`: connect from this local address (e.g. 127.0.0.2: another client).
- `--url` more than once: the connections take the URLs in turn (connection i the i-th
  modulo their number): one generator spreads its load over several servers, and its
  latencies stay one distribution.
- SIGTERM ends a run early (answers still in flight get half a second) and prints its figures.

Prints one JSON line (`BENCHJSON {...}`) with the keys bench.py reads from wrk, plus
`statuses` (answers by status code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PLACEHOLDER = b"@ID@"


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    index = lowered.find(b"\r\ncontent-length:")
    body = b""
    if index >= 0:
        end = lowered.find(b"\r\n", index + 2)
        body = await reader.readexactly(int(lowered[index + 17 : end].strip()))
    elif b"\r\ntransfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
    return status, body


class Requests:
    """Builds each request: its bytes and the statement ids it carries."""

    def __init__(
        self, url: str, body: bytes, headers: list[str], auth_values: list[str], unique_ids: bool
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._pieces = body.split(PLACEHOLDER) if unique_ids else [body]
        length = len(body) + (len(self._pieces) - 1) * (36 - len(PLACEHOLDER))
        head = [
            f"POST {target} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {length}",
            *headers,
        ]
        heads = [
            ("\r\n".join([*head, f"Authorization: {value}"]) + "\r\n\r\n").encode()
            for value in auth_values
        ] or [("\r\n".join(head) + "\r\n\r\n").encode()]
        self._heads = itertools.cycle(heads)
        # Ids unique across runs too: a random prefix per process, a counter after it.
        prefix = secrets.token_hex(9)
        self._prefix = f"{prefix[:8]}-{prefix[8:12]}-4{prefix[12:15]}-8{prefix[15:18]}-"
        self._counter = itertools.count()
        self.statements = max(1, len(self._pieces) - 1)

    def next(self) -> tuple[bytes, list[str]]:
        head = next(self._heads)
        if len(self._pieces) == 1:
            return head + self._pieces[0], []
        ids = [f"{self._prefix}{next(self._counter):012x}" for _ in self._pieces[1:]]
        out = [self._pieces[0]]
        for one, piece in zip(ids, self._pieces[1:], strict=True):
            out += [one.encode(), piece]
        return head + b"".join(out), ids


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    counts: dict[str, Any] = field(
        default_factory=lambda: {
            "connect_errors": 0,
            "read_errors": 0,
            "write_errors": 0,
            "status_errors": 0,
            "timeout_errors": 0,
            "statuses": {},
        }
    )
    acked_ids: list[str] = field(default_factory=list)
    acked_statements: int = 0
    progress_every: int = 0
    next_progress: int = 0
    keep_ids: bool = False

    def answer(self, status: int, body: bytes, ids: list[str], statements: int) -> None:
        statuses = self.counts["statuses"]
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if 200 <= status < 300:
            self.acked_statements += statements
            if self.keep_ids:
                self.acked_ids.extend(ids)
            if self.progress_every and self.acked_statements >= self.next_progress:
                print(f"PROGRESS {self.acked_statements}", flush=True)
                while self.next_progress <= self.acked_statements:
                    self.next_progress += self.progress_every
        elif status >= 400:
            self.counts["status_errors"] += 1
            self.counts.setdefault("first_error", f"{status} {body[:300]!r}")


class Connection:
    def __init__(self, requests: Requests, source: str | None, tally: Tally) -> None:
        self._requests = requests
        self._source = source
        self._tally = tally
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> bool:
        try:
            self._reader, self._writer = await asyncio.open_connection(
                self._requests.host,
                self._requests.port,
                local_addr=(self._source, 0) if self._source else None,
            )
        except OSError:
            self._tally.counts["connect_errors"] += 1
            return False
        return True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def exchange(self, started: float | None = None) -> bool:
        """One request and its answer; False when the connection failed (it is closed)."""
        if self._writer is None and not await self._connect():
            await asyncio.sleep(0.01)
            return False
        assert self._reader is not None
        assert self._writer is not None
        request, ids = self._requests.next()
        sent = time.perf_counter()
        if started is not None:
            self._tally.late.append(sent - started)
        try:
            self._writer.write(request)
            status, body = await asyncio.wait_for(_read_response(self._reader), 10)
        except TimeoutError:
            self._tally.counts["timeout_errors"] += 1
            self.close()
            return False
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self._tally.counts["read_errors"] += 1
            self.close()
            return False
        self._tally.latencies.append(time.perf_counter() - (started or sent))
        self._tally.answer(status, body, ids, len(ids) or self._requests.statements)
        return True


async def closed_loop(
    requests: list[Requests],
    tally: Tally,
    connections: int,
    duration: float,
    limit: int | None,
    source: str | None,
    stop: asyncio.Event,
) -> None:
    deadline = time.perf_counter() + duration
    tickets: Iterator[int] = itertools.count() if limit is None else iter(range(limit))

    async def one(index: int) -> None:
        connection = Connection(requests[index % len(requests)], source, tally)
        try:
            while (
                time.perf_counter() < deadline
                and not stop.is_set()
                and next(tickets, None) is not None
            ):
                await connection.exchange()
        finally:
            connection.close()

    tasks = [asyncio.create_task(one(index)) for index in range(connections)]
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():  # SIGTERM: a moment for the answers in flight, then give up on them
        await asyncio.wait(tasks, timeout=0.5)
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopped.cancel()


async def open_loop(
    requests: list[Requests],
    tally: Tally,
    connections: int,
    duration: float,
    rate: float,
    source: str | None,
    stop: asyncio.Event,
) -> None:
    queue: asyncio.Queue[float | None] = asyncio.Queue()

    async def worker(index: int) -> None:
        connection = Connection(requests[index % len(requests)], source, tally)
        try:
            while (scheduled := await queue.get()) is not None:
                await connection.exchange(scheduled)
        finally:
            connection.close()

    workers = [asyncio.create_task(worker(index)) for index in range(connections)]
    start = time.perf_counter()
    total = int(duration * rate)
    for index in range(total):
        if stop.is_set():
            break
        scheduled = start + index / rate
        wait = scheduled - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        queue.put_nowait(scheduled)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)


async def run(
    args: argparse.Namespace, body: bytes, auth_values: list[str]
) -> tuple[dict[str, Any], list[str]]:
    requests = [Requests(url, body, args.header, auth_values, args.unique_ids) for url in args.url]
    tally = Tally(
        progress_every=args.progress_every,
        next_progress=args.progress_every,
        keep_ids=args.ids_out is not None,
    )
    stop = asyncio.Event()  # SIGTERM ends the run early, with its figures
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started = time.perf_counter()
    if args.rate:
        await open_loop(
            requests, tally, args.connections, args.duration, args.rate, args.source_address, stop
        )
    else:
        await closed_loop(
            requests,
            tally,
            args.connections,
            args.duration,
            args.requests,
            args.source_address,
            stop,
        )
    elapsed = time.perf_counter() - started
    latencies = sorted(tally.latencies)
    late = sorted(tally.late)

    def pct(values: list[float], p: float) -> float:
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(len(values) * p / 100))] * 1e6

    result: dict[str, Any] = {
        "requests": len(latencies),
        "duration_us": elapsed * 1e6,
        **tally.counts,
        "p50_us": pct(latencies, 50),
        "p90_us": pct(latencies, 90),
        "p99_us": pct(latencies, 99),
        "p999_us": pct(latencies, 99.9),
        "mean_us": (sum(latencies) / len(latencies) * 1e6) if latencies else 0.0,
        "max_us": latencies[-1] * 1e6 if latencies else 0.0,
        "acked_statements": tally.acked_statements,
    }
    if args.rate:
        result.update(
            {
                "rate": args.rate,
                "scheduled": int(args.duration * args.rate),
                "late_p50_us": pct(late, 50),
                "late_p99_us": pct(late, 99),
                "late_max_us": late[-1] * 1e6 if late else 0.0,
            }
        )
    return result, tally.acked_ids


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", required=True, action="append", help="more than once: connections take turns"
    )
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open loop: requests per second (0: closed loop)"
    )
    parser.add_argument("--requests", type=int, help="closed loop: stop after this many")
    parser.add_argument(
        "--unique-ids",
        action="store_true",
        help=f"replace each {PLACEHOLDER.decode()} in the body with a fresh UUID",
    )
    parser.add_argument("--ids-out", help="write the ids of statements answered 2xx here")
    parser.add_argument("--progress-every", type=int, default=0, metavar="STATEMENTS")
    parser.add_argument("--auth-file", help="Authorization values, one a line, used in turn")
    parser.add_argument("--source-address", help="local address to connect from")
    args = parser.parse_args()
    with open(args.body, "rb") as handle:
        body = handle.read()
    auth_values: list[str] = []
    if args.auth_file:
        with open(args.auth_file) as handle:
            auth_values = [line.strip() for line in handle if line.strip()]
    factory = _loop_factory()
    if factory is not None:
        with asyncio.Runner(loop_factory=factory) as runner:
            result, acked = runner.run(run(args, body, auth_values))
    else:
        result, acked = asyncio.run(run(args, body, auth_values))
    if args.ids_out:
        Path(args.ids_out).write_text("".join(f"{one}\n" for one in acked))
    print("BENCHJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
