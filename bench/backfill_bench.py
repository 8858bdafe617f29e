"""What the backfill engine costs on top of reading storage's pages, in the same run.

    .venv/bin/python bench/backfill_bench.py [--statements 20000] [--page-size 500]

A local storage stub serves N realistic statements (about 1 KB each) in `stored` order,
500 to a page with `more` links. Baseline: a client that pages through all of them with
the gateway's StorageClient and parses each page (what any copy must do). Measured: the
backfill engine doing the same into a SQLite outbox (synchronous=full, as deployed):
statements re-encoded, cursor and ties, one transaction per page. It prints statements per
second of each, best of 3, and their ratio; the ratio is what to compare between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

sys.path.append(str(Path(__file__).resolve().parent.parent))  # for gateway

from validation_bench import realistic_statement

from gateway import jsoncodec
from gateway.config.settings import StorageConfig
from gateway.forwarding.backfill import Backfill
from gateway.forwarding.outbox import SqliteOutbox
from gateway.upstream.storage import StorageClient
from gateway.upstream.target import storage_target
from gateway.xapi.results import upstream_tail_of_more

START = datetime(2025, 1, 1, tzinfo=UTC)


def history(count: int) -> list[bytes]:
    """The statements as storage holds them (with `stored`), encoded once."""
    statements = []
    for n in range(count):
        statement = realistic_statement(n)
        statement["stored"] = (START + timedelta(milliseconds=n)).isoformat()
        statements.append(jsoncodec.dumps(statement))
    return statements


def storage_app(encoded: list[bytes]) -> web.Application:
    """Pages of `limit` statements from `offset`, a `more` while there are more."""

    async def statements(request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", "0"))
        if "since" in request.query and offset == 0:  # stored: START + n ms (exclusive)
            since = datetime.fromisoformat(request.query["since"])
            offset = max(0, int((since - START) / timedelta(milliseconds=1)) + 1)
        limit = int(request.query["limit"])
        page = encoded[offset : offset + limit]
        more = ""
        if offset + limit < len(encoded):
            query = {k: v for k, v in request.query.items() if k != "offset"}
            more = "/xAPI/statements?" + urlencode({**query, "offset": offset + limit})
        body = b'{"statements":[' + b",".join(page) + b'],"more":' + jsoncodec.dumps(more) + b"}"
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/xAPI/statements", statements)
    return app


async def read_all(storage: StorageClient, page_size: int) -> int:
    """The baseline: every page fetched and parsed; how many statements."""
    tail = f"statements?ascending=true&limit={page_size}"
    count = 0
    while tail:
        path, _, query = tail.partition("?")
        async with storage.request("GET", path, raw_query=query) as response:
            data: Any = jsoncodec.loads(await response.read())
        count += len(data["statements"])
        more = data["more"]
        tail = (upstream_tail_of_more(more, storage.base_path) or "") if more else ""
    return count


async def backfill_all(storage: StorageClient, page_size: int, directory: Path) -> int:
    """The engine into a fresh outbox; how many statements it queued."""
    outbox = SqliteOutbox(directory / "outbox.sqlite3", synchronous="full")
    await outbox.open()
    try:
        job = Backfill(outbox, storage, "t", version="1.0.3", page_size=page_size, ahead=10**9)
        done = await job.run(None, (START + timedelta(days=1)).isoformat())
        return done.queued
    finally:
        await outbox.close()


async def main(count: int, page_size: int) -> None:
    encoded = history(count)
    runner = web.AppRunner(storage_app(encoded))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    target = storage_target(StorageConfig(url=f"http://127.0.0.1:{port}/xAPI/"))
    rates: dict[str, list[float]] = {"read": [], "backfill": []}
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            storage = StorageClient(session, target)
            for _ in range(3):  # interleaved: both see the same machine
                started = time.perf_counter()
                assert await read_all(storage, page_size) == count
                rates["read"].append(count / (time.perf_counter() - started))
                with tempfile.TemporaryDirectory() as directory:
                    started = time.perf_counter()
                    assert await backfill_all(storage, page_size, Path(directory)) == count
                    rates["backfill"].append(count / (time.perf_counter() - started))
            storage.close()
    finally:
        await runner.cleanup()
    read, backfill = max(rates["read"]), max(rates["backfill"])
    print(f"statements: {count}, {page_size} a page, best of 3")
    print(f"  reading storage's pages (baseline)   {read:9.0f} statements/s")
    print(f"  backfill into the outbox             {backfill:9.0f} statements/s")
    print(f"  backfill / baseline                  {backfill / read:9.2f}x")
    print(f"  engine cost per statement            {1e6 / backfill - 1e6 / read:9.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=20_000)
    parser.add_argument("--page-size", type=int, default=500)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.statements, arguments.page_size))
