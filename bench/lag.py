"""Forwarding lag at sustained load: per target lag and backlog, drain time, exactly once."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from harness import Bench, Server, loadgen_result, raw_errors
from probes import forwarding_status, stub_ids, stub_reset, wait_drained
from report import print_lag
from workload import TARGETS

Status = dict[str, dict[str, Any]]


class Sampler(threading.Thread):
    """GET /admin/forwarding every `interval` s until stopped: (t, per-target status)."""

    def __init__(self, server: Server, interval: float) -> None:
        """A daemon thread sampling `server`; `origin` is its time 0."""
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, Status]] = []
        self.errors = 0
        self.halt = threading.Event()
        self.origin = time.monotonic()

    def run(self) -> None:
        """Sample until halted, counting the samples that failed."""
        next_at = time.monotonic()
        while not self.halt.is_set():
            try:
                status = forwarding_status(self.server)
            except (OSError, ValueError):
                self.errors += 1
            else:
                self.samples.append((time.monotonic() - self.origin, status))
            next_at += self.interval
            self.halt.wait(max(0.0, next_at - time.monotonic()))


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank below), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def sample_until_drained(sampler: Sampler, load_end: float, timeout: float) -> float | None:
    """Sample faster after the load until every backlog is 0: when it was (sampler time)."""
    sampler.interval = 0.1
    deadline = time.monotonic() + timeout
    drained_at = None
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if (
            sampler.samples
            and sampler.samples[-1][0] > load_end
            and all(t["backlog"] == 0 for t in sampler.samples[-1][1].values())
        ):
            drained_at = sampler.samples[-1][0]
            break
    sampler.halt.set()
    sampler.join()
    return drained_at


def lag_by_target(during: list[Status]) -> dict[str, Any]:
    """Per target: lag (oldest undelivered statement's age) percentiles and max backlog."""
    per_target: dict[str, Any] = {}
    for name in TARGETS:
        lags = [s[name]["oldest_age"] or 0.0 for s in during if name in s]
        backlogs = [s[name]["backlog"] for s in during if name in s]
        per_target[name] = {
            "lag_max_s": max(lags, default=None),
            "lag_p95_s": percentile(lags, 95),
            "lag_p99_s": percentile(lags, 99),
            "lag_mean_s": sum(lags) / len(lags) if lags else None,
            "backlog_max": max(backlogs, default=None),
        }
    return per_target


def delivery_of(bases: list[tuple[str, str]], acked: set[str]) -> dict[str, Any]:
    """Per receiver (storage, each target): counts, missing, unexpected, exactly once."""
    delivery: dict[str, Any] = {}
    for name, base in bases:
        got = stub_ids(base, full=True)
        seen = set(got.pop("ids"))
        delivery[name] = {
            **got,
            "missing": len(acked - seen),
            "unexpected": len(seen - acked),
            "exactly_once": not (acked - seen) and got["duplicates"] == 0,
        }
    return delivery


def client_side(raw: dict[str, Any], acked: int) -> dict[str, Any]:
    """What the open-loop client saw: answers, errors, statuses and latencies."""
    return {
        "scheduled": raw.get("scheduled"),
        "answered": raw["requests"],
        "errors": raw_errors(raw),
        "statuses": raw.get("statuses"),
        "acked_statements": acked,
        "achieved_rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "client_p50_ms": raw["p50_us"] / 1000,
        "client_p99_ms": raw["p99_us"] / 1000,
        "client_max_ms": raw["max_us"] / 1000,
        "client_late_p99_ms": raw.get("late_p99_us", 0.0) / 1000,
    }


def target_side(
    per_target: dict[str, Any], delivery: dict[str, Any], drained_at: float | None, load_end: float
) -> dict[str, Any]:
    """What the targets saw: worst lag and backlog, drain time, exactly-once delivery."""
    return {
        "lag_max_s": max((t["lag_max_s"] or 0.0 for t in per_target.values()), default=None),
        "backlog_max": max((t["backlog_max"] or 0 for t in per_target.values()), default=None),
        "drain_after_load_s": None if drained_at is None else max(0.0, drained_at - load_end),
        "targets": per_target,
        "storage_delivery": delivery["storage"],
        "exactly_once": all(d["exactly_once"] for d in delivery.values()),
    }


def run_lag(
    bench: Bench,
    gateway: Server,
    stub: Server,
    target_ports: list[int],
    max_rps: float,
    template: Path,
) -> dict[str, Any]:
    """An open-loop constant rate at --lag-fraction of (e)'s peak, sampled and then checked."""
    args = bench.args
    rate = max(1.0, round(args.lag_fraction * max_rps))
    print(
        f"\nforwarding lag: {rate:.0f} statements/s (open loop, {args.lag_fraction:.0%} of "
        f"(e)'s {max_rps:.0f} req/s) for {args.lag_duration:g} s, 3 targets, "
        "GET /admin/forwarding every 0.5 s",
        flush=True,
    )
    settle = wait_drained(gateway, args.drain_timeout)
    receivers = [
        ("storage", stub.base),
        *((n, f"http://127.0.0.1:{p}/") for n, p in zip(TARGETS, target_ports, strict=True)),
    ]
    for _, base in receivers:
        stub_reset(base, "ids")
    ids_file = bench.tmp / "lag-ids.txt"
    bench.quiet()
    command = bench.loadgen_command(
        gateway.url + "statements",
        template,
        connections=64,
        duration=args.lag_duration,
        extra=["--rate", str(rate), "--unique-ids", "--ids-out", str(ids_file)],
    )
    sampler = Sampler(gateway, 0.5)
    watch = bench.watch()
    sampler.start()
    load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = load.communicate(timeout=args.lag_duration + 120)
    load_end = time.monotonic() - sampler.origin
    raw = loadgen_result(out, err, load.returncode)
    drained_at = sample_until_drained(sampler, load_end, args.drain_timeout)
    cpu = watch.stop()
    acked = [line for line in ids_file.read_text().splitlines() if line]
    during = [s for t, s in sampler.samples if t <= load_end]
    per_target = lag_by_target(during)
    delivery = delivery_of(receivers, set(acked))
    for name in TARGETS:
        per_target[name]["delivery"] = delivery[name]
    for _, base in receivers:
        stub_reset(base, "off")
    result = {
        "rate": rate,
        "fraction_of_e": args.lag_fraction,
        "e_rps": max_rps,
        "duration_s": args.lag_duration,
        "settle_before_s": settle,
        **client_side(raw, len(acked)),
        "samples": len(during),
        "sample_errors": sampler.errors,
        **target_side(per_target, delivery, drained_at, load_end),
        "gateway_cpu": cpu["servers"].get(gateway.name, 0.0),
        "other_cpu": cpu["other"],
        "other_processes": cpu["others"],
        "timeline": [
            (round(t, 2), {n: (s["backlog"], s["oldest_age"]) for n, s in st.items()})
            for t, st in sampler.samples
        ],
    }
    print_lag(result)
    return result
