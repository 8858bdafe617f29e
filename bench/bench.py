"""Benchmarks of lrs-gateway (issue 8); run through `bash bench/run.sh`.

    .venv/bin/python bench/bench.py [--duration 10] [--warmup 2] [--connections 16]
                                    [--rounds 1] [--no-batch] [--loadgen auto|wrk|asyncio]
                                    [--no-pin] [--profile --py-spy PATH]
                                    [--no-token] [--no-workers] [--no-redis] [--no-forwarding]
                                    [--no-postgres] [--no-lag] [--no-flood]
                                    [--no-rss] [--rss-statements 100000]
                                    [--rss-store sqlite|postgresql|both] ...

e.g. the outbox in PostgreSQL against SQLite, and 3 processes against 1 (about 6 minutes):

    .venv/bin/python bench/bench.py --no-token --no-workers --no-redis --no-lag --no-flood \
        --no-batch --no-rss --duration 8 --rounds 3

and the memory of a gateway whose outbox is in PostgreSQL over 1M statements:

    .venv/bin/python bench/bench.py --no-token --no-workers --no-redis --no-forwarding \
        --no-flood --no-batch --duration 2 --rss-store postgresql --rss-statements 1000000

On loopback only, with bounded durations, it starts:
- the stub LRS (bench/stub_lrs.py), and a second stub process serving three forwarding
  targets on three ports (each its own LRS, counting the statement ids it receives);
- the baseline proxy (bench/baseline_proxy.py: one ClientSession, parse, set authority);
- the gateway (`python -m gateway serve`) in several configurations, all with storage.url ->
  stub, a Basic credential (bcrypt cost 10, scope `all`), the rate limits set so high they
  never trip (one client from one address is the whole load) and log level INFO (one access
  log line per request, to a file) unless said otherwise:
  (c) cached Basic; (c_quiet) the same at log level WARNING; (d) auth.backends [basic, token]
  with a bearer gateway token (`python -m gateway token issue`); (e) three forwarding
  targets, outbox on (data_dir in the temporary directory); (f) `serve --workers 2`, its two
  workers allowed on both CPUs (so they share CPU 0 with the load generator and the stub,
  while (c) has CPU 1 to itself); (g) rate limits and lockouts counted in a Redis of its own
  (Debian's redis-server, on CPU 0: limits.shared_url); (h) forwarding exactly like (e) but
  the outbox (and the credential database) in PostgreSQL (store.url; a cluster of its own,
  bench/pgserver.py: Debian's binaries, fsync/synchronous_commit/full_page_writes on, on
  CPU 0 like Redis), the gateway on CPU 1 like (e); (i) three separate `serve` processes
  (not --workers), each on its own port, sharing one PostgreSQL outbox (another database
  than (h)'s), allowed on both CPUs like (f)'s workers: the load generator spreads its
  connections over the three (wrk: one thread per process; loadgen.py: connections take
  the URLs in turn), a third each; and, started for their run only, the bcrypt-flood
  gateways (lockout off, then on) and a fresh forwarding gateway per outbox store for the
  memory run. (h) and (i) are skipped with --no-postgres or --no-forwarding, or (with the
  reason in the report) when the PostgreSQL binaries or asyncpg are missing. (j) is (e)
  with a `filter` on each target (bench/configs.py FILTERS: verb and activity prefix;
  registration and platform; another course's prefix, which keeps every statement from
  its target): what judging statements on the request path costs (--no-filters skips it).

Then, with one load generator (wrk if found, else bench/loadgen.py) and the same ~1 KB
statement (and a 100-statement batch), it measures each setup for --duration seconds after
a warm-up (which also puts the credential in the gateway's cache), and prints requests/s,
p50, p99, the CPU each server used, the ratios against the baseline and (c), and the latency
added over direct. After a forwarding run it waits until every target's backlog is 0 (and
says how long that took), so the next run starts on an idle gateway.

Then the runs that are not plain throughput:
- forwarding lag (--lag-duration s): an open-loop constant rate (bench/loadgen.py --rate) at
  --lag-fraction of (e)'s measured maximum, each statement with its own id; GET
  /admin/forwarding (an admin credential) every 0.5 s gives each target's backlog and the
  age of its oldest undelivered statement (the metric lrs_gateway_forwarding_lag_seconds is
  refreshed only every 2 s, too coarse here); after the load, the time until every backlog
  is 0; then every stub's ids are checked: each statement the client got a 2xx for reached
  storage and every target exactly once;
- bcrypt flood: (c)'s valid cached requests (wrk) while bench/loadgen.py floods wrong
  passwords (existing and unknown usernames, --flood-connections connections, closed loop)
  from another loopback address; variants: lockout off (every guess reaches bcrypt), lockout
  on at its defaults, and lockout on with the flood from the valid client's own address.
  Reported: valid throughput as a ratio to (c), bcrypt checks/s (the gateway's metric), and
  the flood's answers by status (401 checked, 503 bcrypt queue full, 429 locked out);
- memory: a fresh forwarding gateway (3 targets), --rss-statements statements in batches of
  100 (closed loop, 8 connections, unique ids), VmRSS from /proc every --rss-sample-every
  statements; the slope (MB per 100k statements) says whether it grows; VmRSS at the start,
  middle and end. Once per --rss-store: sqlite (the outbox in data_dir), postgresql (in a
  fresh database of the bench's PostgreSQL), or both (the default; sqlite only with
  --no-postgres or without PostgreSQL).

JSON goes to bench/results/<commit>-<UTC time>.json (with --profile, py-spy's raw stacks
beside it).

This machine is shared and noisy: each run also reports the CPU that processes other than
the bench's used meanwhile ("other load", with the busiest of them) and the hypervisor's
steal; a run with other load above 25% of a core is marked (!). Ratios measured in one run
mean more than absolute figures. Before each run it waits (--quiet-wait, 10 s at most; 30 s
in all, --quiet-budget) for the machine to be nearly idle; --rounds N interleaves N rounds
of the throughput runs and keeps, per setup, the median of its undisturbed rounds.

Pinning (when taskset exists and there are >= 2 CPUs), as in the issue's own figures: the
load generators (wrk, the flood, the open-loop generator) and the stubs share CPU 0, the
proxy under test has CPU 1 (all its threads: the bcrypt pool and the outbox thread too).

Layout (each module imports only those above it):
- workload.py: the statement, the batch, credentials, target names, flood variants;
- procstats.py: CPU per process, thread and core, memory, other load (/proc);
- configs.py: the gateway's config files, what the gateway under test supports, a token;
- harness.py: start and stop servers, run the load generator, measure one setup;
- pgserver.py: the bench's throwaway PostgreSQL cluster (durable settings);
- probes.py: HTTP to the servers: metrics, /admin/forwarding, the stubs' counts;
- report.py: tables, ratios, the issue's targets, the results JSON;
- scenarios.py: the setups (a)-(i) and their throughput runs, the latency at half load;
- lag.py, flood.py, rss.py: the forwarding lag, the bcrypt flood, memory;
- profiling.py: --profile (py-spy);
- bench.py (this file): the options and a main that runs the chosen parts in order.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from configs import event_loop_of, has_workers_option, supports
from flood import run_floods
from harness import Bench, pick_loadgen, running
from lag import run_lag
from pgserver import SETTINGS as PG_SETTINGS
from pgserver import postgres_missing
from profiling import run_profiles
from report import Measured, RunInfo, filesystem_of, write_report
from rss import run_rss
from scenarios import (
    REDIS_SERVER,
    SCALE_OUT,
    Parts,
    Setups,
    check_setups,
    run_half_load,
    run_throughput,
    start_setups,
    throughput_plan,
)
from workload import BENCH, FLOOD_VARIANTS, REPO, Bodies, write_bodies


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """How each run measures: duration, load generator, pinning, rounds, quiet waits."""
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "asyncio"], default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--no-batch", action="store_true", help="skip the 100-statement runs")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the throughput runs, interleaved; report each setup's "
        "median over its undisturbed rounds",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine's other "
        "load to drop under 25%% of a core (0: do not wait)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="at most this long in all for those waits (beyond it, 1 s each), "
        "so a busy machine does not double the bench's time",
    )


def add_part_options(parser: argparse.ArgumentParser) -> None:
    """Which parts run: token, workers, forwarding, lag, flood, half load."""
    parser.add_argument("--no-token", action="store_true", help="skip (d), the bearer token")
    parser.add_argument(
        "--no-workers", action="store_true", help="skip (f), the gateway with 2 worker processes"
    )
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="skip (g), the gateway whose rate limits and lockouts are counted in Redis",
    )
    parser.add_argument(
        "--no-forwarding",
        action="store_true",
        help="skip the forwarding setups (e), (h), (i) and the forwarding lag run",
    )
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="skip (h) and (i), the outbox in PostgreSQL, and the PostgreSQL memory run",
    )
    parser.add_argument(
        "--no-filters",
        action="store_true",
        help="skip (j), (e) with a filter on each forwarding target",
    )
    parser.add_argument("--no-lag", action="store_true", help="skip the forwarding lag run")
    parser.add_argument("--lag-duration", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument(
        "--lag-fraction",
        type=float,
        default=0.6,
        help="the lag run's constant rate, as a share of (e)'s max req/s",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for forwarding backlogs to reach 0",
    )
    parser.add_argument("--no-flood", action="store_true", help="skip the bcrypt-flood runs")
    parser.add_argument(
        "--flood-variants",
        default=",".join(FLOOD_VARIANTS),
        help=f"comma-separated, among {', '.join(FLOOD_VARIANTS)}",
    )
    parser.add_argument(
        "--flood-connections",
        type=int,
        default=128,
        help="the flood's connections (the bcrypt queue admits 64)",
    )
    parser.add_argument(
        "--half-load",
        action="store_true",
        help="also measure the latency added over direct at 50%% of (c)'s "
        "peak (open loop; 2 more runs)",
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """The memory run, profiling, where results go, which gateway is measured."""
    parser.add_argument("--no-rss", action="store_true", help="skip the memory run")
    parser.add_argument(
        "--rss-statements",
        type=int,
        default=100_000,
        help="statements through the gateway in the memory run (issue: 1M)",
    )
    parser.add_argument("--rss-sample-every", type=int, default=10_000, metavar="STATEMENTS")
    parser.add_argument(
        "--rss-store",
        choices=["sqlite", "postgresql", "both"],
        default="both",
        help="the memory run's outbox: SQLite in data_dir, PostgreSQL, or one run of each "
        "(PostgreSQL only when available and not --no-postgres)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the gateway's POST path with py-spy (after the runs)",
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    parser.add_argument(
        "--gateway-commit",
        metavar="REV",
        help="run the gateway of this commit (git archive into a temporary "
        "directory) instead of the work tree's",
    )


def parse_args() -> argparse.Namespace:
    """The bench's options (`--help` lists them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_options(parser)
    add_part_options(parser)
    add_output_options(parser)
    args = parser.parse_args()
    unknown = set(args.flood_variants.split(",")) - set(FLOOD_VARIANTS) - {""}
    if unknown:
        parser.error(f"--flood-variants: unknown {', '.join(sorted(unknown))}")
    return args


def git(*args: str) -> str:
    """A git command's output in the repository ("" when it fails)."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def start_run(args: argparse.Namespace) -> RunInfo:
    """The gateway's commit, the load generator and pinning; says them in one line."""
    loadgen = pick_loadgen(args.loadgen)
    cpus = len(os.sched_getaffinity(0))
    pin = not args.no_pin and shutil.which("taskset") is not None and cpus >= 2
    started_at = datetime.now(UTC)
    wall_start = time.monotonic()
    if args.gateway_commit:
        commit = git("rev-parse", "--short", args.gateway_commit)
        if not commit:
            sys.exit(f"bench: no such commit: {args.gateway_commit}")
        dirty: list[str] = []
    else:
        commit = git("rev-parse", "--short", "HEAD") or "worktree"
        dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    fallback = " (wrk not found: asyncio fallback, bench/loadgen.py)" if loadgen != "wrk" else ""
    print(
        f"bench: gateway of {commit}{' (work tree, with local changes)' if dirty else ''}; "
        "load generator "
        f"{loadgen}{fallback};"
        f" {args.connections} connections; {args.duration:g} s per run after "
        f"{args.warmup:g} s warm-up; "
        + (
            "pinned: load generators + stubs on CPU 0, proxy on CPU 1"
            if pin
            else "NOT pinned (no taskset or < 2 CPUs)"
        ),
        flush=True,
    )
    source = f"git archive {args.gateway_commit}" if args.gateway_commit else "work tree"
    return RunInfo(commit, dirty, source, started_at, wall_start, cpus, loadgen, pin)


def gateway_source(args: argparse.Namespace, tmp: Path) -> Path:
    """Where the gateway under test comes from: the work tree, or --gateway-commit's tree."""
    if not args.gateway_commit:
        return REPO
    src = tmp / "src"
    src.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.gateway_commit, "gateway"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return src


def choose_parts(args: argparse.Namespace, src: Path) -> Parts:
    """The parts the flags ask for and the gateway under test can do; why others are not."""
    workers = not args.no_workers and has_workers_option(src)
    can = supports(src)
    redis = not args.no_redis and can["shared_limits"] and Path(REDIS_SERVER).is_file()
    token = not args.no_token and can["token"]
    forwarding = not args.no_forwarding and can["forwarding"]
    lag = forwarding and not args.no_lag
    rss = not args.no_rss and can["forwarding"]
    pg_why = (
        "--no-postgres"
        if args.no_postgres
        else "no store.url postgresql:// in this gateway"
        if not can["postgres_store"] or not can["forwarding"]
        else postgres_missing()
    )
    postgres = forwarding and pg_why is None
    wanted_stores = ("sqlite", "postgresql") if args.rss_store == "both" else (args.rss_store,)
    rss_stores = tuple(s for s in wanted_stores if s == "sqlite" or pg_why is None)
    flood_keys = [] if args.no_flood else [k for k in args.flood_variants.split(",") if k]
    if not can["lockout"]:
        flood_keys = []  # the flood gateways are configured through `lockout`
    skipped = {
        key: f"skipped ({why})"
        for key, wanted, why in (
            ("d", token, "--no-token" if args.no_token else "no token backend"),
            ("e", forwarding, "--no-forwarding" if args.no_forwarding else "no forwarding"),
            (
                "j",
                forwarding and can["filters"] and not args.no_filters,
                "--no-filters / --no-forwarding, or no forwarding filters in this gateway",
            ),
            ("forwarding_lag", lag, "--no-lag / --no-forwarding"),
            ("f", workers, "--no-workers" if args.no_workers else "this gateway has no --workers"),
            (
                "g",
                redis,
                "--no-redis"
                if args.no_redis
                else f"no limits.shared_url in this gateway, or no {REDIS_SERVER}",
            ),
            (
                "rss",
                rss and "sqlite" in rss_stores,
                "--no-rss"
                if args.no_rss
                else "no forwarding"
                if not rss
                else f"--rss-store {args.rss_store}",
            ),
            (
                "rss_postgres",
                rss and "postgresql" in rss_stores,
                "--no-rss"
                if args.no_rss
                else "no forwarding"
                if not rss
                else pg_why or f"--rss-store {args.rss_store}",
            ),
            (
                "h",
                postgres,
                "--no-forwarding" if args.no_forwarding and pg_why is None else pg_why,
            ),
            (
                "i",
                postgres,
                "--no-forwarding" if args.no_forwarding and pg_why is None else pg_why,
            ),
            (
                "bcrypt_flood",
                bool(flood_keys),
                "--no-flood" if args.no_flood else "no lockout settings in this gateway",
            ),
        )
        if not wanted
    }
    return Parts(
        token=token,
        forwarding=forwarding,
        lag=lag,
        workers=workers,
        redis=redis,
        rss=rss and bool(rss_stores),
        postgres=postgres,
        filters=forwarding and can["filters"] and not args.no_filters,
        rss_stores=rss_stores,
        batch=not args.no_batch,
        half_load=args.half_load,
        flood_keys=flood_keys,
        skipped=skipped,
    )


def run_parts(bench: Bench, parts: Parts, setups: Setups, bodies: Bodies) -> Measured:
    """The chosen parts in order: throughput (a)-(i), half load, lag, flood, memory."""
    check_setups(setups, bodies, parts)
    results = run_throughput(bench, setups, throughput_plan(setups, bodies, parts))
    measured = Measured(results)
    stub, gateways = setups.stub, setups.gateways
    if parts.half_load and "c" in results:
        measured.half = run_half_load(
            bench, stub, gateways["gateway"], bodies.one_file, results["c"]["rps"], setups.baseline
        )
    if parts.lag and setups.targets is not None:
        measured.lag = run_lag(
            bench,
            gateways["gateway-fwd"],
            stub,
            setups.target_ports,
            results["e"]["rps"],
            bodies.one_template,
        )
    if parts.flood_keys:
        run_floods(bench, stub, bodies.one_file, parts.flood_keys, results)
    if setups.postgres is not None:
        measured.postgres = {
            "version": setups.postgres.version,
            "settings": dict(PG_SETTINGS),
            "scale_out": SCALE_OUT,
        }
    if parts.rss and setups.targets is not None:
        for store in parts.rss_stores:
            figures = run_rss(
                bench, stub, setups.target_ports, bodies.batch_template, store, setups.postgres
            )
            if store == "sqlite":
                measured.rss = figures
            else:
                measured.rss_postgres = figures
    return measured


def main() -> None:
    """Run the chosen parts in order, then print the report and write the results JSON."""
    args = parse_args()
    info = start_run(args)
    with tempfile.TemporaryDirectory(prefix="lrs-gateway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = write_bodies(tmp)
        src = gateway_source(args, tmp)
        bench = Bench(args, tmp, info.pin, info.loadgen, src, quiet_left=args.quiet_budget)
        parts = choose_parts(args, src)
        info.loop_kind = event_loop_of(src)
        with running(bench):
            setups = start_setups(bench, parts)
            measured = run_parts(bench, parts, setups, bodies)
            results_dir = Path(args.results_dir)
            results_dir.mkdir(parents=True, exist_ok=True)
            if args.profile:
                measured.profiles = run_profiles(
                    bench, setups, bodies, parts, results_dir, info.stem
                )
            info.data_fs = filesystem_of(tmp)
    write_report(args, info, measured, parts.skipped, parts.flood_keys, bodies.single)


if __name__ == "__main__":
    main()
