"""Per-call costs of the pieces on the gateway's POST path, in-process (no network).

    .venv/bin/python bench/micro_costs.py        # best of 5, microseconds per call

Not a substitute for bench.py: it tells where the CPU of one request goes, to choose levers
(parse once, a faster JSON library, logging, metrics) before measuring them end to end.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import timeit
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # for gateway

from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry
from workload import AGENT, BATCH_SIZE, statement

from gateway.http.metrics import Metrics
from gateway.upstream.storage import request_headers, response_headers
from gateway.xapi.statements import prepare_post


def cost(label: str, call: Callable[[], Any], number: int = 2000) -> None:
    per = min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6
    print(f"  {label:<58} {per:9.1f} us")


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def main() -> None:
    one = json.dumps(statement()).encode()
    batch = json.dumps([statement(i) for i in range(1, BATCH_SIZE + 1)]).encode()
    print(f"one statement ({len(one)} bytes):")
    cost("json.loads", lambda: json.loads(one))
    one_data, batch_data = json.loads(one), json.loads(batch)
    cost("json.dumps (ensure_ascii=False, compact) + encode", lambda: dumps(one_data))
    cost(
        "json.loads + prepare_post (check, complete)", lambda: prepare_post(json.loads(one), AGENT)
    )
    cost(
        "str(uuid4()) + datetime.now().isoformat() (setdefault args)",
        lambda: (str(uuid.uuid4()), datetime.now(UTC).isoformat(timespec="milliseconds")),
    )
    print(f"batch of {BATCH_SIZE} ({len(batch)} bytes):")
    cost("json.loads", lambda: json.loads(batch), 50)
    cost("json.loads + prepare_post", lambda: prepare_post(json.loads(batch), AGENT), 50)
    cost("json.dumps + encode", lambda: dumps(batch_data), 50)
    print("per request:")
    incoming = CIMultiDictProxy(
        CIMultiDict(
            {
                "Host": "127.0.0.1:8080",
                "Authorization": "Basic YmVuY2g6eA==",
                "Content-Type": "application/json",
                "X-Experience-API-Version": "1.0.3",
                "Content-Length": "1000",
                "User-Agent": "bench",
            }
        )
    )
    cost(
        "request_headers (copy, drop hop-by-hop)",
        lambda: request_headers(incoming, extra={"X-Request-ID": "abc"}),
    )
    answer = CIMultiDictProxy(
        CIMultiDict(
            {
                "Content-Type": "application/json",
                "Content-Length": "40",
                "Date": "x",
                "Server": "stub",
                "X-Experience-API-Version": "1.0.3",
            }
        )
    )
    cost("response_headers", lambda: response_headers(answer, decoded=False))
    cost("uuid4().hex (request id)", lambda: uuid.uuid4().hex)
    log = logging.getLogger("bench.micro")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    cost(
        "access log line (formatted, to memory)",
        lambda: log.info(
            "%s %s %s %d %.1fms principal=%s request_id=%s",
            "127.0.0.1",
            "POST",
            "xapi.statements",
            200,
            1.234,
            "bench",
            "abc",
        ),
    )
    metrics = Metrics(CollectorRegistry())

    def update() -> None:
        metrics.in_flight.inc()
        metrics.in_flight.dec()
        metrics.duration.labels("xapi.statements", "POST").observe(0.01)
        metrics.requests.labels("xapi.statements", "POST", "2xx").inc()
        metrics.auth.labels("basic", "ok").inc()

    cost("metrics updates of one request (5)", update)


if __name__ == "__main__":
    main()
