"""The setups (a)-(i): how each is started, checked and measured; the latency at half load."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs import filtered_overrides, forwarding_overrides, issue_token, postgres_overrides
from harness import Bench, Server, free_port, loadgen_result
from pgserver import Postgres, start_postgres
from probes import forwarding_probe, post_once, stub_ids, wait_drained
from procstats import DISTURBED
from report import fmt_s, median_result
from workload import AGENT, BENCH, PASSWORD, TARGETS, USERNAME, Bodies

# (key, label, server, body file): one throughput run of the plan.
REDIS_SERVER = "/usr/bin/redis-server"  # Debian's redis-server (tests/run's bootstrap)
SCALE_OUT = 3  # (i): separate `serve` processes sharing one PostgreSQL outbox
Step = tuple[str, str, Server, Path]


@dataclass(frozen=True)
class Parts:
    """Which parts this run measures: the flags, and what the gateway under test supports."""

    token: bool
    forwarding: bool
    lag: bool
    workers: bool
    redis: bool  # (g): rate limits and lockouts shared through a Redis of its own
    rss: bool
    postgres: bool  # (h) and (i): the outbox in a PostgreSQL of its own
    filters: bool  # (j): (e) with a filter on each target
    batch: bool
    half_load: bool
    flood_keys: list[str]
    skipped: dict[str, str]  # part -> "skipped (why)", for the report's "not measured"
    rss_stores: tuple[str, ...] = ("sqlite",)  # the memory run's outboxes: sqlite, postgresql

    @property
    def needs_postgres(self) -> bool:
        """Whether any part needs the bench's PostgreSQL."""
        return self.postgres or (self.rss and "postgresql" in self.rss_stores)


@dataclass
class Setups:
    """The servers the throughput runs measure, and the credential each gateway takes."""

    stub: Server
    baseline: Server
    gateways: dict[str, Server]
    target_ports: list[int]
    targets: Server | None = None
    auth_of: dict[str, str | None] = field(default_factory=dict)
    postgres: Postgres | None = None
    # A server whose runs spread the load over several (it first among them): (i).
    spread: dict[str, list[Server]] = field(default_factory=dict)
    database_of: dict[str, str] = field(default_factory=dict)  # (h), (i): their database

    @property
    def forwarding(self) -> list[Server]:
        """The forwarding gateways measured for throughput (one per outbox): (e), (h), (i)."""
        names = ("gateway-fwd", "gateway-pg", "gateway-pg-1", "gateway-filtered")
        return [self.gateways[name] for name in names if name in self.gateways]


def start_stubs(bench: Bench, parts: Parts) -> tuple[Server, Server | None, list[int]]:
    """The stub LRS on CPU 0 and, for forwarding, one more stub process serving 3 targets."""
    py = sys.executable
    stub_port = free_port()
    stub = bench.start(
        "stub",
        [py, str(BENCH / "stub_lrs.py"), "--port", str(stub_port)],
        0,
        f"http://127.0.0.1:{stub_port}/xAPI/",
        f"http://127.0.0.1:{stub_port}/_bench/count",
    )
    target_ports = [free_port() for _ in TARGETS]
    targets = None
    if parts.forwarding or parts.rss or parts.postgres:
        targets = bench.start(
            "targets",
            [
                py,
                str(BENCH / "stub_lrs.py"),
                *(a for p in target_ports for a in ("--port", str(p))),
            ],
            0,
            f"http://127.0.0.1:{target_ports[0]}/xAPI/",
            f"http://127.0.0.1:{target_ports[-1]}/_bench/count",
        )
    return stub, targets, target_ports


def start_baseline(bench: Bench, stub: Server) -> Server:
    """(b) the baseline proxy (bench/baseline_proxy.py) on CPU 1, in front of the stub."""
    port = free_port()
    return bench.start(
        "baseline",
        [
            sys.executable,
            str(BENCH / "baseline_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            stub.url,
            "--username",
            USERNAME,
            "--password",
            PASSWORD,
            "--agent",
            json.dumps(AGENT),
        ],
        1,
        f"http://127.0.0.1:{port}/xAPI/",
        f"http://127.0.0.1:{port}/",
    )


def start_gateways(
    bench: Bench, stub: Server, parts: Parts, target_ports: list[int]
) -> tuple[dict[str, Server], str | None]:
    """The gateways of (c), (c_quiet), (d), (e) and (f); the bearer token for (d)."""
    gateways = {}
    for name, level in (("gateway", "INFO"), ("gateway-quiet", "WARNING")):
        gateways[name], _ = bench.start_gateway(name, stub, level=level)
    token = None
    if parts.token:
        secret = secrets.token_urlsafe(48)  # 64 characters, HS256
        gateways["gateway-token"], token_config = bench.start_gateway(
            "gateway-token",
            stub,
            overrides={"auth": {"backends": ["basic", "token"], "tokens": {"secret": secret}}},
        )
        token = "Bearer " + issue_token(bench.src, bench.env(), token_config)
    if parts.workers:
        gateways["gateway-2w"], _ = bench.start_gateway("gateway-2w", stub, workers=2)
    if parts.forwarding:
        gateways["gateway-fwd"], _ = bench.start_gateway(
            "gateway-fwd", stub, overrides=forwarding_overrides(target_ports)
        )
    if parts.filters:
        gateways["gateway-filtered"], _ = bench.start_gateway(
            "gateway-filtered", stub, overrides=filtered_overrides(target_ports)
        )
    if parts.redis:
        port = free_port()
        # On CPU 0, with the stub and the load generator: the gateway keeps CPU 1 alone.
        redis = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"]
        bench.start(
            "redis",
            [*redis, "--save", "", "--appendonly", "no"],
            0,
            f"redis://127.0.0.1:{port}/0",
            f"tcp://127.0.0.1:{port}",
        )
        gateways["gateway-redis"], _ = bench.start_gateway(
            "gateway-redis",
            stub,
            overrides={"limits": {"shared_url": f"redis://127.0.0.1:{port}/0"}},
        )
    return gateways, token


def start_postgres_gateways(
    bench: Bench, stub: Server, pg: Postgres, target_ports: list[int]
) -> tuple[dict[str, Server], list[Server]]:
    """(h): one gateway like (e), outbox in PostgreSQL; (i): SCALE_OUT `serve` processes.

    (h) has CPU 1 alone, as (e); (i)'s processes (each its own port, one database shared,
    not (h)'s) may run on both CPUs, like (f)'s workers: on 2 cores they share CPU 0 with
    the load generator, the stubs and PostgreSQL.
    """
    gateways = {}
    gateways["gateway-pg"], _ = bench.start_gateway(
        "gateway-pg",
        stub,
        overrides=postgres_overrides(target_ports, pg.create_database("bench_h")),
    )
    dsn = pg.create_database("bench_i")
    replicas = []
    for number in range(1, SCALE_OUT + 1):
        name = f"gateway-pg-{number}"
        gateways[name], _ = bench.start_gateway(
            name, stub, overrides=postgres_overrides(target_ports, dsn), cpu="0,1"
        )
        replicas.append(gateways[name])
    return gateways, replicas


def start_setups(bench: Bench, parts: Parts) -> Setups:
    """Start every server of the throughput runs, waiting until each answers."""
    stub, targets, target_ports = start_stubs(bench, parts)
    baseline = start_baseline(bench, stub)
    gateways, token = start_gateways(bench, stub, parts, target_ports)
    setups = Setups(stub, baseline, gateways, target_ports, targets, {"gateway-token": token})
    if parts.needs_postgres:
        setups.postgres = start_postgres(bench)
    if parts.postgres:
        assert setups.postgres is not None
        more, replicas = start_postgres_gateways(bench, stub, setups.postgres, target_ports)
        gateways.update(more)
        setups.spread[replicas[0].name] = replicas
        setups.database_of = {"gateway-pg": "bench_h", replicas[0].name: "bench_i"}
    return setups


def check_setups(setups: Setups, bodies: Bodies, parts: Parts) -> None:
    """One statement and one batch through each server; forwarding reaches every target."""
    stub = setups.stub
    ids_one = [bodies.single["id"]]
    ids_batch = [s["id"] for s in bodies.batch]
    for server in (stub, setups.baseline, *setups.gateways.values()):
        authorization = setups.auth_of.get(server.name)
        post_once(server, stub, bodies.one_file.read_bytes(), ids_one, authorization)
        post_once(server, stub, bodies.batch_file.read_bytes(), ids_batch, authorization)
    for gateway in setups.forwarding:
        if wait_drained(gateway, 30) is None:
            sys.exit(f"bench: {gateway.name} did not forward the first statements")
    if setups.forwarding:
        for port in setups.target_ports:
            got = stub_ids(f"http://127.0.0.1:{port}/")
            if got["writes"] < 1:
                sys.exit(f"bench: the target on port {port} received nothing")


def throughput_plan(setups: Setups, bodies: Bodies, parts: Parts) -> list[Step]:
    """The throughput runs, in order: single statements (a)-(f), then batches of 100."""
    gateways, one, batch = setups.gateways, bodies.one_file, bodies.batch_file
    plan: list[Step] = [
        ("a", "direct to stub", setups.stub, one),
        ("b", "baseline proxy", setups.baseline, one),
        ("c", "gateway, cached Basic", gateways["gateway"], one),
        ("c_quiet", "gateway, cached Basic, log WARNING", gateways["gateway-quiet"], one),
    ]
    if parts.token:
        plan.append(("d", "gateway, bearer gateway token", gateways["gateway-token"], one))
    if parts.forwarding:
        plan.append(("e", "gateway, 3 forwarding targets", gateways["gateway-fwd"], one))
    if parts.filters:
        plan.append(
            ("j", "gateway, 3 forwarding targets, each filtered", gateways["gateway-filtered"], one)
        )
    if parts.workers:
        plan.append(("f", "gateway, 2 worker processes", gateways["gateway-2w"], one))
    if parts.redis:
        plan.append(("g", "gateway, limits shared in Redis", gateways["gateway-redis"], one))
    if parts.postgres:
        plan += [
            ("h", "gateway, 3 forwarding targets, PostgreSQL outbox", gateways["gateway-pg"], one),
            (
                "i",
                f"{SCALE_OUT} gateway processes, PostgreSQL outbox",
                gateways["gateway-pg-1"],
                one,
            ),
        ]
    if not parts.batch:
        return plan
    plan += [
        ("a_batch", "direct to stub, batch 100", setups.stub, batch),
        ("b_batch", "baseline proxy, batch 100", setups.baseline, batch),
        ("c_batch", "gateway, batch 100", gateways["gateway"], batch),
    ]
    if parts.forwarding:
        plan.append(
            ("e_batch", "gateway, 3 forwarding targets, batch 100", gateways["gateway-fwd"], batch)
        )
    if parts.workers:
        plan.append(
            ("f_batch", "gateway, 2 worker processes, batch 100", gateways["gateway-2w"], batch)
        )
    if parts.postgres:
        plan += [
            ("h_batch", "gateway, PostgreSQL outbox, batch 100", gateways["gateway-pg"], batch),
            (
                "i_batch",
                f"{SCALE_OUT} gateway processes, PostgreSQL outbox, batch 100",
                gateways["gateway-pg-1"],
                batch,
            ),
        ]
    return plan


def measure_step(bench: Bench, setups: Setups, step: Step) -> dict[str, Any]:
    """One throughput run; after a forwarding one, wait until every backlog is 0."""
    key, label, server, body = step
    forwarding = server in setups.forwarding
    spread = setups.spread.get(server.name)
    pg, database = setups.postgres, setups.database_of.get(server.name)
    before_run, after_run = None, forwarding_probe(server) if forwarding else None
    if pg is not None and database is not None and after_run is not None:
        # PostgreSQL's own count of the transactions committed during the measured run.
        probe, started = after_run, [0.0]

        def before() -> int:
            started[0] = time.monotonic()
            return pg.commits(database)

        def after(commits_before: int) -> dict[str, Any]:
            seconds = time.monotonic() - started[0]
            return {
                **probe(None),
                "postgres_commits_per_s": (pg.commits(database) - commits_before) / seconds,
            }

        before_run, after_run = before, after
    result = bench.measure(
        f"({key}) {label}",
        server,
        body,
        setups.stub,
        authorization=setups.auth_of.get(server.name),
        before_run=before_run,
        after_run=after_run,
        spread=spread,
    )
    if pg is not None and database is not None:
        result["postgres_cpu"] = result["bench_servers_cpu"].get(pg.server.name)
    if forwarding:
        # The next run must find an idle gateway: wait for the backlog.
        result["drain_after_load_s"] = wait_drained(server, bench.args.drain_timeout)
        print(
            f"    backlog at the end {result['backlog_at_end']}, drained "
            f"in {fmt_s(result['drain_after_load_s'])}",
            flush=True,
        )
    return result


def run_throughput(bench: Bench, setups: Setups, plan: list[Step]) -> dict[str, dict[str, Any]]:
    """--rounds interleaved rounds of the plan; per setup, its median undisturbed round."""
    print("\nmeasuring (each: warm-up, then the measured run):", flush=True)
    rounds: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in plan}
    for number in range(bench.args.rounds):
        if bench.args.rounds > 1:
            print(f" round {number + 1} of {bench.args.rounds}", flush=True)
        for step in plan:
            rounds[step[0]].append(measure_step(bench, setups, step))
    return {key: median_result(runs) for key, runs in rounds.items()}


def open_loop_latency(bench: Bench, server: Server, one_file: Path, rate: float) -> dict[str, Any]:
    """Latencies of `server` at a constant `rate` (open loop), for --duration seconds."""
    bench.quiet()
    watch = bench.watch()
    done = subprocess.run(
        bench.loadgen_command(
            server.url + "statements",
            one_file,
            connections=64,
            duration=bench.args.duration,
            extra=["--rate", str(rate)],
        ),
        capture_output=True,
        text=True,
        timeout=bench.args.duration + 60,
        check=False,
    )
    cpu = watch.stop()
    raw = loadgen_result(done.stdout, done.stderr, done.returncode)
    return {
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "answered": raw["requests"],
        "errors": raw["status_errors"] + raw["timeout_errors"],
        "other_cpu": cpu["other"],
    }


def run_half_load(
    bench: Bench,
    stub: Server,
    gateway: Server,
    one_file: Path,
    max_rps: float,
    baseline: Server | None = None,
) -> dict[str, Any]:
    """The latency the gateway adds at 50% of its peak: (a), (b) and (c) at one rate."""
    # The baseline proxy at the same rate tells what any aiohttp proxy adds on this machine.
    rate = max(1.0, round(0.5 * max_rps))
    print(
        f"\nadded latency at 50% load: {rate:.0f} req/s open loop, {bench.args.duration} s, "
        "direct (a), the baseline proxy (b), then the gateway (c)",
        flush=True,
    )
    figures: dict[str, Any] = {"rate": rate}
    runs = [("a", stub), *([("b", baseline)] if baseline is not None else []), ("c", gateway)]
    for key, server in runs:
        figures[key] = open_loop_latency(bench, server, one_file, rate)
        other = figures[key]["other_cpu"]
        print(
            f"  ({key}) p50 {figures[key]['p50_ms']:.2f} ms  p99 {figures[key]['p99_ms']:.2f} ms"
            f"  (other load {other * 100:.0f}%"
            f"{' (!)' if other > DISTURBED else ''})",
            flush=True,
        )
    figures["added_p99_ms"] = figures["c"]["p99_ms"] - figures["a"]["p99_ms"]
    figures["added_p50_ms"] = figures["c"]["p50_ms"] - figures["a"]["p50_ms"]
    if "b" in figures:
        figures["baseline_added_p99_ms"] = figures["b"]["p99_ms"] - figures["a"]["p99_ms"]
        print(
            f"  added by the baseline proxy at the same rate: p99 "
            f"+{figures['baseline_added_p99_ms']:.2f} ms",
            flush=True,
        )
    print(
        f"  added by the gateway at 50% load: p50 +{figures['added_p50_ms']:.2f} ms, "
        f"p99 +{figures['added_p99_ms']:.2f} ms (target <= 2 ms)",
        flush=True,
    )
    return figures
