"""The fallback load generator when `wrk` cannot be had: asyncio, HTTP/1.1 keep-alive.

    python bench/loadgen.py --url http://127.0.0.1:8100/xAPI/statements --body body.json \
        --header 'Content-Type: application/json' --connections 16 --duration 10

Closed loop like wrk: each connection sends the next request when the previous answer is
read. Prints one JSON line with the same keys bench.py reads from wrk. It is much slower
than wrk; its ceiling is the direct-to-stub figure (a), which the bench prints beside the
others, so a proxy figure near that ceiling means the generator, not the proxy, limits it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    index = lowered.find(b"\r\ncontent-length:")
    body = b""
    if index >= 0:
        end = lowered.find(b"\r\n", index + 2)
        body = await reader.readexactly(int(lowered[index + 17:end].strip()))
    elif b"\r\ntransfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
    return status, body


async def _connection(host: str, port: int, request: bytes, deadline: float,
                      latencies: list[float], counts: dict[str, Any]) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        counts["connect_errors"] += 1
        return
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            try:
                status, body = await asyncio.wait_for(_read_response(reader), 10)
            except TimeoutError:
                counts["timeout_errors"] += 1
                return
            latencies.append(time.perf_counter() - started)
            counts["statuses"][str(status)] = counts["statuses"].get(str(status), 0) + 1
            if not 200 <= status < 400:
                counts["status_errors"] += 1
                counts.setdefault("first_error", f"{status} {body[:300]!r}")
    except (OSError, asyncio.IncompleteReadError, ValueError):
        counts["read_errors"] += 1
    finally:
        writer.close()


async def run(url: str, body: bytes, headers: list[str], connections: int,
              duration: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [f"POST {target} HTTP/1.1", f"Host: {host}:{port}",
            f"Content-Length: {len(body)}", *headers]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    latencies: list[float] = []
    counts: dict[str, Any] = {"connect_errors": 0, "read_errors": 0, "write_errors": 0,
                              "status_errors": 0, "timeout_errors": 0, "statuses": {}}
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(_connection(host, port, request, deadline, latencies, counts)
                           for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1e6

    return {"requests": len(latencies), "duration_us": elapsed * 1e6, **counts,
            "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99), "p999_us": pct(99.9),
            "mean_us": (sum(latencies) / len(latencies) * 1e6) if latencies else 0.0,
            "max_us": latencies[-1] * 1e6 if latencies else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    with open(args.body, "rb") as handle:
        body = handle.read()
    result = asyncio.run(run(args.url, body, args.header, args.connections, args.duration))
    print("BENCHJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
