"""Memory: a fresh forwarding gateway's RSS while N statements go through it.

Once per outbox store asked for (--rss-store): SQLite in data_dir, or PostgreSQL (a fresh
database in the bench's cluster, bench/pgserver.py).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configs import forwarding_overrides, postgres_overrides
from harness import Bench, Server, loadgen_result
from pgserver import Postgres
from probes import forwarding_status, stub_ids, stub_reset, wait_drained
from procstats import vm_status
from report import print_rss
from workload import BATCH_SIZE, TARGETS


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if not spread:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def load_sampling(
    gateway: Server, command: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Run the loadgen; at each of its PROGRESS lines, VmRSS and the backlog: raw, samples, s."""
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert load.stdout is not None
    out_lines = []
    for line in load.stdout:
        out_lines.append(line)
        if line.startswith("PROGRESS "):
            status = forwarding_status(gateway)
            samples.append(
                {
                    "statements": int(line.split()[1]),
                    "seconds": time.monotonic() - started,
                    **vm_status(gateway.process.pid),
                    "backlog": sum(t["backlog"] for t in status.values()),
                }
            )
    err = load.stderr.read() if load.stderr is not None else ""
    load.wait()
    load_seconds = time.monotonic() - started
    return loadgen_result("".join(out_lines), err, load.returncode), samples, load_seconds


def measure_rss(
    bench: Bench,
    gateway: Server,
    stub: Server,
    target_ports: list[int],
    batch_template: Path,
    outbox_bytes: Callable[[], int],
) -> dict[str, Any]:
    """--rss-statements through `gateway` in batches, then the drain: the raw figures."""
    args = bench.args
    receivers = [
        ("storage", stub.base),
        *((n, f"http://127.0.0.1:{p}/") for n, p in zip(TARGETS, target_ports, strict=True)),
    ]
    forwarding_status(gateway)  # the admin credential into the cache
    for _, base in receivers:
        stub_reset(base, "count")
    started_rss = vm_status(gateway.process.pid)
    bench.quiet()
    command = bench.loadgen_command(
        gateway.url + "statements",
        batch_template,
        connections=8,
        duration=3600,
        extra=[
            "--requests",
            str(max(1, args.rss_statements // BATCH_SIZE)),
            "--unique-ids",
            "--progress-every",
            str(args.rss_sample_every),
        ],
    )
    watch = bench.watch()
    raw, samples, load_seconds = load_sampling(gateway, command)
    # Every 2 s, not 0.1: with a PostgreSQL outbox each status read counts the backlog's
    # rows (a full count of millions of rows after a 1M run), which would slow the drain.
    drained = wait_drained(gateway, args.drain_timeout, interval=2.0)
    cpu = watch.stop()
    after_drain = vm_status(gateway.process.pid)
    left = forwarding_status(gateway)  # what the drain wait did not see delivered
    received = {name: stub_ids(base) for name, base in receivers}
    for _, base in receivers:
        stub_reset(base, "off")
    return {
        "raw": raw,
        "samples": samples,
        "load_seconds": load_seconds,
        "drained": drained,
        "cpu": cpu,
        "started_rss": started_rss,
        "after_drain": after_drain,
        "left": left,
        "received": received,
        "outbox_bytes": outbox_bytes(),
        "gateway": gateway.name,
    }


def rss_result(m: dict[str, Any], total: int, store: str) -> dict[str, Any]:
    """The memory run's figures: RSS before and after, slopes, growth, delivery."""
    raw, samples, after_drain, left = m["raw"], m["samples"], m["after_drain"], m["left"]
    points = [(s["statements"] / 100_000, s["VmRSS"] / 1024) for s in samples if "VmRSS" in s]
    with_rss = [s for s in samples if "VmRSS" in s]
    middle = with_rss[(len(with_rss) - 1) // 2] if with_rss else None
    second_half = points[len(points) // 2 :]
    tenth = next((p for p in points if p[0] * 100_000 >= total / 10), points[0] if points else None)
    last = points[-1] if points else None
    return {
        "store": store,
        "statements": raw["acked_statements"],
        "requests": raw["requests"],
        "errors": raw["status_errors"] + raw["read_errors"] + raw["timeout_errors"],
        "statements_per_s": raw["acked_statements"] / m["load_seconds"],
        "rss_before_kb": m["started_rss"].get("VmRSS"),
        "rss_after_drain_kb": after_drain.get("VmRSS"),
        "backlog_after_drain": sum(t["backlog"] for t in left.values()),
        "dead_letters_after_drain": sum(t["dead_letters"] for t in left.values()),
        "hwm_kb": after_drain.get("VmHWM"),
        # VmRSS at the first, the middle and the last sample (kB) and how many statements in.
        "rss_start": _point(with_rss[0]) if with_rss else None,
        "rss_middle": _point(middle) if middle else None,
        "rss_end": _point(with_rss[-1]) if with_rss else None,
        "samples": samples,
        "slope_mb_per_100k": slope(points),
        "slope_second_half_mb_per_100k": slope(second_half),
        "growth_first_to_last": (last[1] / points[0][1] - 1) if points and last else None,
        "growth_from_10pct_to_last": (last[1] / tenth[1] - 1) if tenth and last else None,
        "backlog_max": max((s["backlog"] for s in samples), default=None),
        "drain_after_load_s": m["drained"],
        "received": m["received"],
        "every_target_got_all": all(
            r["statements"] >= raw["acked_statements"] for r in m["received"].values()
        ),
        "outbox_bytes_after": m["outbox_bytes"],
        "gateway_cpu": m["cpu"]["servers"].get(m["gateway"], 0.0),
        "postgres_cpu": m["cpu"]["servers"].get("postgres") if store == "postgresql" else None,
        "other_cpu": m["cpu"]["other"],
        "other_processes": m["cpu"]["others"],
    }


def _point(sample: dict[str, Any]) -> dict[str, Any]:
    return {"statements": sample["statements"], "VmRSS_kb": sample["VmRSS"]}


def run_rss(
    bench: Bench,
    stub: Server,
    target_ports: list[int],
    batch_template: Path,
    store: str = "sqlite",
    pg: Postgres | None = None,
) -> dict[str, Any]:
    """A fresh forwarding gateway (outbox in `store`); RSS while N statements go through it."""
    total, every = bench.args.rss_statements, bench.args.rss_sample_every
    requests = max(1, total // BATCH_SIZE)
    where = "SQLite in data_dir" if store == "sqlite" else "PostgreSQL"
    print(
        f"\nmemory ({store}): {requests * BATCH_SIZE} statements in batches of {BATCH_SIZE} "
        f"through a fresh gateway forwarding to 3 targets, outbox in {where}; VmRSS every "
        f"{every} statements",
        flush=True,
    )
    if store == "sqlite":
        name = "gateway-rss"
        overrides = forwarding_overrides(target_ports)
        data_dir = bench.tmp / name / "data"

        def outbox_bytes() -> int:
            return sum(p.stat().st_size for p in data_dir.glob("*") if p.is_file())

    else:
        assert pg is not None
        name = "gateway-rss-pg"
        overrides = postgres_overrides(target_ports, pg.create_database("bench_rss"))

        def outbox_bytes() -> int:
            return pg.database_bytes("bench_rss")

    gateway, _ = bench.start_gateway(name, stub, overrides=overrides)
    try:
        measured = measure_rss(bench, gateway, stub, target_ports, batch_template, outbox_bytes)
    finally:
        bench.stop(gateway.name)
    result = rss_result(measured, total, store)
    print_rss(result)
    return result
