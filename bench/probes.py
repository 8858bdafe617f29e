"""HTTP to the servers under test: metrics, /admin/forwarding, the stubs' counts, a checked POST."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from harness import Server
from workload import ADMIN_PASSWORD, ADMIN_USERNAME, AGENT, basic, request_headers

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = list[tuple[str, dict[str, str], float]]


def http_get(url: str, authorization: str | None = None, timeout: float = 10) -> bytes:
    """The body of a GET."""
    request = urllib.request.Request(
        url, headers={"Authorization": authorization} if authorization else {}
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        body: bytes = answer.read()
        return body


def scrape(server: Server) -> Samples:
    """The gateway's Prometheus samples: (name, labels, value)."""
    text = http_get(server.base + "metrics").decode()
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples.append(
                (match.group(1), dict(_LABEL.findall(match.group(2) or "")), float(match.group(3)))
            )
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for n, have, value in samples
        if n == name and all(have.get(k) == v for k, v in labels.items())
    )


def forwarding_status(server: Server) -> dict[str, dict[str, Any]]:
    """GET /admin/forwarding (admin credential): per target backlog, oldest_age, ..."""
    body = json.loads(
        http_get(server.base + "admin/forwarding", basic(ADMIN_USERNAME, ADMIN_PASSWORD))
    )
    targets: dict[str, dict[str, Any]] = body["targets"]
    return targets


def wait_drained(server: Server, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until every target's backlog is 0 (None: not within `timeout`)."""
    started = time.monotonic()
    while True:
        status = forwarding_status(server)
        if all(t["backlog"] == 0 for t in status.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)


def forwarding_probe(server: Server) -> Callable[[Any], dict[str, Any]]:
    """after_run for a forwarding gateway: backlog and lag the moment the load stopped."""

    def after(_: Any) -> dict[str, Any]:
        status = forwarding_status(server)
        return {
            "backlog_at_end": {n: t["backlog"] for n, t in status.items()},
            "lag_at_end_s": {n: t["oldest_age"] for n, t in status.items()},
        }

    return after


def stub_ids(stub_base: str, *, full: bool = False) -> dict[str, Any]:
    """What a stub counted since its last reset (bench/stub_lrs.py /_bench/ids)."""
    answer: dict[str, Any] = json.loads(
        http_get(stub_base + "_bench/ids" + ("?full=1" if full else ""), timeout=60)
    )
    return answer


def stub_reset(stub_base: str, track: str) -> None:
    """Reset a stub's counts and have it track `track` (ids, count or off) from now on."""
    http_get(stub_base + f"_bench/reset?track={track}")


def post_once(
    server: Server, stub: Server, body: bytes, ids: list[str], authorization: str | None = None
) -> None:
    """One request through `server`; the stub must have received our authority on each."""
    request = urllib.request.Request(
        server.url + "statements", data=body, method="POST", headers=request_headers(authorization)
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        got = json.loads(answer.read())
    if got != ids:
        sys.exit(f"bench: {server.name} answered {got!r:.200}, not the statement ids")
    if server is stub:
        return
    with urllib.request.urlopen(stub.url.replace("/xAPI/", "/_bench/last"), timeout=5) as last:
        seen = json.loads(last.read())
    for one in seen if isinstance(seen, list) else [seen]:
        if one.get("authority", {}).get("mbox") != AGENT["mbox"]:
            sys.exit(f"bench: {server.name} did not set the authority: {one.get('authority')}")
