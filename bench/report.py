"""The report: tables, ratios against the baseline of the same run, targets, the results JSON."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from procstats import DISTURBED
from workload import BATCH_SIZE, FLOOD_VARIANTS, NO_RATE_LIMITS, REPO

TARGETS_OF_ISSUE = {
    "c/b": ">= 1.0 (goal 1.8)",
    "d/c": ">= 0.90",
    "e/c": ">= 0.75",
    "flood/c": ">= 0.80",
    "f/c": ">= 1.6",
    "lag_p99_s": "<= 1 s",
    "rss_growth": "<= 10% (100k -> 1M)",
}

# What each ratio compares, printed beside it (the issue set no target for these).
RATIO_NOTES = {
    "g/c": "rate limits and lockouts counted in Redis vs in memory",
    "h/e": "outbox in PostgreSQL vs SQLite, both durable (fsync per commit), same run",
    "i/h": "3 `serve` processes vs 1, both on PostgreSQL; on 2 CPUs expect well under 3x",
}

NOT_MEASURED = {
    "added_p99_at_50pct_load": "off by default (--half-load)",
}


@dataclass
class RunInfo:
    """What the report says about the run itself: the gateway's commit, machine, settings."""

    commit: str
    dirty: list[str]
    source: str  # "work tree", or "git archive REV"
    started_at: datetime
    wall_start: float
    cpus: int
    loadgen: str
    pin: bool
    loop_kind: str = "asyncio"
    data_fs: str = "?"

    @property
    def stem(self) -> str:
        """The results file's name without its suffix: <commit>-<UTC time>."""
        return f"{self.commit}-{self.started_at.strftime('%Y%m%dT%H%M%SZ')}"


@dataclass
class Measured:
    """Everything a run measured: throughput results by setup key, and the other parts."""

    results: dict[str, dict[str, Any]]
    half: dict[str, Any] | None = None
    lag: dict[str, Any] | None = None
    rss: dict[str, Any] | None = None
    rss_postgres: dict[str, Any] | None = None
    postgres: dict[str, Any] | None = None  # the bench's cluster: version, settings
    profiles: dict[str, Any] = field(default_factory=dict)


def fmt_s(value: float | None) -> str:
    """Seconds, or "not within the timeout" for None."""
    return "not within the timeout" if value is None else f"{value:.2f} s"


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median-throughput run of the undisturbed rounds (of all when none is), with all."""
    calm = [r for r in runs if r["other_cpu"] <= DISTURBED] or runs
    chosen = dict(sorted(calm, key=lambda r: r["rps"])[(len(calm) - 1) // 2])
    if len(runs) > 1:
        chosen["rounds"] = [
            {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "other_cpu")} for r in runs
        ]
    return chosen


def compute_ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Throughput (and some p99) ratios between setups, and the latency added over direct."""
    ratios: dict[str, Any] = {}

    def ratio(name: str, top: str, bottom: str, figure: str = "rps") -> None:
        if top in results and bottom in results and results[bottom][figure]:
            ratios[name] = results[top][figure] / results[bottom][figure]

    ratio("c/b", "c", "b")
    ratio("c_quiet/b", "c_quiet", "b")
    ratio("c_quiet/c", "c_quiet", "c")
    ratio("c_batch/b_batch", "c_batch", "b_batch")
    ratio("b/a", "b", "a")
    ratio("c/a", "c", "a")
    ratio("d/c", "d", "c")
    ratio("d/c p99", "d", "c", "p99_ms")
    ratio("e/c", "e", "c")
    ratio("e/c p99", "e", "c", "p99_ms")
    ratio("e_batch/c_batch", "e_batch", "c_batch")
    ratio("e_batch/c_batch p99", "e_batch", "c_batch", "p99_ms")
    ratio("f/c", "f", "c")
    ratio("g/c", "g", "c")  # what counting the limits in Redis costs
    ratio("g/c p99", "g", "c", "p99_ms")
    ratio("j/e", "j", "e")  # a filter on each target vs none
    ratio("j/e p99", "j", "e", "p99_ms")
    ratio("h/e", "h", "e")  # the outbox in PostgreSQL vs in SQLite
    ratio("h/e p99", "h", "e", "p99_ms")
    ratio("i/h", "i", "h")  # 3 processes on one PostgreSQL vs 1
    ratio("i/h p99", "i", "h", "p99_ms")
    ratio("h_batch/e_batch", "h_batch", "e_batch")
    ratio("i_batch/h_batch", "i_batch", "h_batch")
    ratio("f_batch/c_batch", "f_batch", "c_batch")
    for key in FLOOD_VARIANTS:
        ratio(f"{key}/c", key, "c")
    for key in ("b", "c", "c_quiet", "d", "e", "h", "i", "b_batch", "c_batch", "e_batch"):
        direct = "a_batch" if key.endswith("batch") else "a"
        if key in results and direct in results:
            ratios[f"added_over_{direct}[{key}]"] = {
                "p50_ms": results[key]["p50_ms"] - results[direct]["p50_ms"],
                "p99_ms": results[key]["p99_ms"] - results[direct]["p99_ms"],
            }
    return ratios


def target_checks(
    results: dict[str, dict[str, Any]],
    ratios: dict[str, Any],
    lag: dict[str, Any] | None,
    rss: dict[str, Any] | None,
    half: dict[str, Any] | None = None,
    rss_postgres: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The issue's targets, with the figure this run measured and whether it is met."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, met: bool | None, note: str = "") -> None:
        checks.append({"name": name, "value": value, "target": target, "met": met, "note": note})

    for name, key, limit in (
        ("c/b", "c/b", 1.0),
        ("d/c", "d/c", 0.9),
        ("e/c", "e/c", 0.75),
        ("f/c", "f/c", 1.6),
    ):
        if key in ratios:
            note = (
                "workers on CPUs 0-1, sharing CPU 0 with the load generator and the stub; "
                "(c) has CPU 1 alone"
                if key == "f/c"
                else ""
            )
            add(name, ratios[key], TARGETS_OF_ISSUE[name], ratios[key] >= limit, note)
    for key in FLOOD_VARIANTS:
        if f"{key}/c" in ratios:
            add(
                f"{key}/c",
                ratios[f"{key}/c"],
                TARGETS_OF_ISSUE["flood/c"],
                ratios[f"{key}/c"] >= 0.8,
            )
    if half is not None:
        add(
            "added p99 at 50% load",
            half["added_p99_ms"],
            "<= 2 ms",
            half["added_p99_ms"] <= 2.0,
            f"at {half['rate']:.0f}/s, open loop",
        )
    if lag is not None:
        worst = max((t["lag_p99_s"] or 0.0 for t in lag["targets"].values()), default=None)
        add(
            "lag p99 (worst target)",
            worst,
            TARGETS_OF_ISSUE["lag_p99_s"],
            None if worst is None else worst <= 1.0,
            f"at {lag['rate']:.0f}/s, {lag['fraction_of_e']:.0%} of (e); sampled every 0.5 s",
        )
        add(
            "forwarded exactly once",
            None,
            "every acked statement, once, everywhere",
            lag["exactly_once"],
        )
    for label, figures in (("", rss), (", PostgreSQL", rss_postgres)):
        if figures is None:
            continue
        growth = figures["growth_from_10pct_to_last"]
        add(
            f"RSS growth (10% of N -> N){label}",
            growth,
            TARGETS_OF_ISSUE["rss_growth"],
            None if growth is None else growth <= 0.10,
            f"N = {figures['statements']}",
        )
    return checks


def print_table(
    results: dict[str, dict[str, Any]], ratios: dict[str, Any], not_measured: dict[str, str]
) -> None:
    """The throughput table, the ratios, the latency added over direct, what was skipped."""
    print(
        "\n| setup | req/s | statements/s | p50 ms | p99 ms | server CPU | stub CPU "
        "| loadgen CPU | other load | steal CPU0 / CPU1 | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for result in results.values():
        per = BATCH_SIZE if "batch" in result["setup"] else 1
        stub_cpu = "" if result["stub_cpu"] is None else f"{result['stub_cpu'] * 100:.0f}%"
        steal = " / ".join(f"{u['steal'] * 100:.0f}%" for u in result["machine_cpu"].values())
        loadgen_cpu = result["loadgen_cpu"] + sum(result.get("companions_cpu", {}).values())
        print(
            f"| {result['setup']} | {result['rps']:.0f} | {result['rps'] * per:.0f} "
            f"| {result['p50_ms']:.2f} | {result['p99_ms']:.2f} "
            f"| {result['server_cpu'] * 100:.0f}% | {stub_cpu} "
            f"| {loadgen_cpu * 100:.0f}% | {result['other_cpu'] * 100:.0f}%"
            f"{' (!)' if result['other_cpu'] > DISTURBED else ''} | {steal} "
            f"| {result['errors']} |"
        )
    print(
        "(CPU: share of one core during the run; loadgen CPU includes the flood's; "
        "'other load': CPU used on the machine by anything but the bench's processes: when "
        "high, the run was disturbed; steal: time the hypervisor took from each vCPU; (!) "
        f"marks other load > {DISTURBED * 100:.0f}%)"
    )
    if any(r["errors"] for r in results.values()):
        print(
            "WARNING: some runs had errors (see above): their req/s count good answers only,"
            " and their latencies include the errors"
        )
    print_ratios(ratios)
    print("not measured:")
    for key, why in not_measured.items():
        print(f"  ({key}) {why}")


def print_ratios(ratios: dict[str, Any]) -> None:
    """The ratios (with the issue's target beside them) and the latency added over direct."""
    print("\nratios (throughput, or p99 where it says so):")
    targets = {
        "c/b": TARGETS_OF_ISSUE["c/b"],
        "d/c": TARGETS_OF_ISSUE["d/c"],
        "e/c": TARGETS_OF_ISSUE["e/c"],
        **{f"{k}/c": TARGETS_OF_ISSUE["flood/c"] for k in FLOOD_VARIANTS},
    }
    for name, value in ratios.items():
        if isinstance(value, float):
            note = f"   (target {targets[name]})" if name in targets else ""
            note += f"   ({RATIO_NOTES[name]})" if name in RATIO_NOTES else ""
            print(f"  {name:<30} {value:5.2f}x{note}")
    print("latency added over direct (a), at saturation (closed loop, all connections busy):")
    for name, value in ratios.items():
        if isinstance(value, dict):
            print(f"  {name:<26} p50 +{value['p50_ms']:.2f} ms   p99 +{value['p99_ms']:.2f} ms")


def print_lag(lag: dict[str, Any]) -> None:
    """The forwarding lag run: the client's side, then per target lag and delivery."""
    print(
        f"  open loop: {lag['answered']} of {lag['scheduled']} scheduled answered "
        f"({lag['achieved_rps']:.0f}/s), errors {lag['errors']}, client p50 "
        f"{lag['client_p50_ms']:.2f} ms, p99 {lag['client_p99_ms']:.2f} ms (from the "
        f"scheduled time); other load {lag['other_cpu'] * 100:.0f}%"
        f"{' (!)' if lag['other_cpu'] > DISTURBED else ''}; gateway CPU "
        f"{lag['gateway_cpu'] * 100:.0f}%"
    )
    print(
        "\n| target | lag p95 s | lag p99 s | lag max s | backlog max | received "
        "| distinct | duplicates | missing | exactly once |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for name, figures in lag["targets"].items():
        d = figures["delivery"]
        print(
            f"| {name} | {fmt(figures['lag_p95_s'])} | {fmt(figures['lag_p99_s'])} "
            f"| {fmt(figures['lag_max_s'])} | {figures['backlog_max']} | {d['statements']} "
            f"| {d['distinct']} | {d['duplicates']} | {d['missing']} "
            f"| {'yes' if d['exactly_once'] else 'NO'} |"
        )
    d = lag["storage_delivery"]
    print(
        f"| (storage) | | | | | {d['statements']} | {d['distinct']} | {d['duplicates']} "
        f"| {d['missing']} | {'yes' if d['exactly_once'] else 'NO'} |"
    )
    print(
        f"  {lag['acked_statements']} statements acked to the client; every backlog 0 "
        f"{fmt_s(lag['drain_after_load_s'])} after the load stopped; {lag['samples']} "
        f"samples during the load ({lag['sample_errors']} failed)"
    )


def print_flood(results: dict[str, dict[str, Any]], keys: list[str]) -> None:
    """The bcrypt flood variants: valid throughput, bcrypt checks, the flood's answers."""
    print(
        "\n| flood variant | valid req/s | / (c) | valid p99 ms | bcrypt checks/s "
        "| flood answers/s | 401 | 503 | 429 | timed out | flood CPU | gateway loop / "
        "other threads CPU | CPU0 busy | other load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in keys:
        r = results[key]
        flood, window = r["flood"], r["flood_window"]
        ratio = r.get("ratio_to_c")
        cpu0 = r["machine_cpu"].get("cpu0", {}).get("busy")
        print(
            f"| {key} | {r['rps']:.0f} | {'-' if ratio is None else f'{ratio:.2f}'} "
            f"| {r['p99_ms']:.2f} | {window['bcrypt_checks_per_s']:.1f} "
            f"| {flood['answers_per_s']:.0f} | {flood['401']} | {flood['503']} "
            f"| {flood['429']} | {flood['timed_out_10s']} | {(flood['cpu'] or 0) * 100:.0f}% "
            f"| {window['loop_thread_cpu'] * 100:.0f}% / "
            f"{window['other_threads_cpu'] * 100:.0f}% "
            f"| {'-' if cpu0 is None else f'{cpu0 * 100:.0f}%'} "
            f"| {r['other_cpu'] * 100:.0f}%{' (!)' if r['other_cpu'] > DISTURBED else ''} |"
        )
    print(
        "(401/503/429/timed out (no answer within 10 s): the flood's requests over its whole "
        "life; bcrypt checks/s: the gateway's lrs_gateway_bcrypt_duration_seconds_count over "
        "the measured window; gateway CPU by thread: the event loop's, and the others' (the "
        "bcrypt pool), over the same window, in shares of a core: all on CPU 1 when pinned)"
    )


def print_postgres(results: dict[str, dict[str, Any]], postgres: dict[str, Any]) -> None:
    """What the PostgreSQL setups compare, how durable each outbox is, PostgreSQL's CPU."""
    print(
        f"\nPostgreSQL outbox: PostgreSQL {postgres['version']}, "
        + ", ".join(f"{k}={v}" for k, v in postgres["settings"].items())
        + " (each commit waits for its WAL flush), on CPU 0 with the load generator and the "
        "stubs; the SQLite outbox of (e): WAL mode, synchronous=FULL (an fsync per group "
        "commit), in data_dir on the same filesystem."
    )
    for key, what in (
        ("h", "1 gateway, CPU 1 alone, as (e)"),
        ("i", f"{postgres['scale_out']} `serve` processes on CPUs 0-1, one database"),
    ):
        for suffix in ("", "_batch"):
            r = results.get(key + suffix)
            if r is None:
                continue
            pg = r.get("postgres_cpu")
            commits = r.get("postgres_commits_per_s")
            per = BATCH_SIZE if suffix else 1
            print(
                f"  ({key}{suffix}) {what}: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms; "
                f"gateway CPU {r['server_cpu'] * 100:.0f}%, PostgreSQL CPU "
                + ("-" if pg is None else f"{pg * 100:.0f}%")
                + (
                    f"; {commits:.0f} commits/s in its database, "
                    f"{r['rps'] * per / commits:.1f} statements per commit"
                    if commits
                    else ""
                )
                + (
                    f"; {r['connections']} connections spread over them"
                    if "connections" in r
                    else ""
                )
            )
    if "i" in results:
        print(
            f"  (i)'s load generator gives each process a share of the connections; on 2 CPUs "
            f"the {postgres['scale_out']} processes share CPU 0 with it, the stubs and "
            "PostgreSQL, so i/h stays well under 3x: it says what a second core adds, not "
            "how replicas on their own machines scale."
        )


def print_rss(rss: dict[str, Any]) -> None:
    """The memory run: VmRSS by statements sent, then slope, growth and delivery."""
    store = rss.get("store", "sqlite")
    print(f"\nmemory, outbox in {'PostgreSQL' if store == 'postgresql' else 'SQLite'}:")
    print("\n| statements | seconds | VmRSS MB | backlog |")
    print("|---:|---:|---:|---:|")
    print(f"| 0 (before) | 0 | {(rss['rss_before_kb'] or 0) / 1024:.1f} | 0 |")
    for s in rss["samples"]:
        print(
            f"| {s['statements']} | {s['seconds']:.1f} | {s.get('VmRSS', 0) / 1024:.1f} "
            f"| {s['backlog']} |"
        )
    dead = rss.get("dead_letters_after_drain", 0)
    print(
        f"| after the drain wait | | {(rss['rss_after_drain_kb'] or 0) / 1024:.1f} "
        f"| {rss.get('backlog_after_drain', 0)}"
        f"{f' (+{dead} dead letters: backlog cap, re-queued as it drains)' if dead else ''} |"
    )

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:+.1f}%"

    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:+.2f}"

    received = ", ".join(f"{n} {r['statements']}" for n, r in rss["received"].items())
    print(
        f"  slope {mb(rss['slope_mb_per_100k'])} MB per 100k statements (second half "
        f"{mb(rss['slope_second_half_mb_per_100k'])}); growth first -> last sample "
        f"{pct(rss['growth_first_to_last'])}, 10% of N -> N "
        f"{pct(rss['growth_from_10pct_to_last'])}"
        f"; {rss['statements_per_s']:.0f} statements/s with forwarding; drained "
        f"{fmt_s(rss['drain_after_load_s'])} after; errors {rss['errors']}; every target got "
        f"every statement: {'yes' if rss['every_target_got_all'] else 'NO'} "
        f"({received}); "
        f"other load {rss['other_cpu'] * 100:.0f}%"
        f"{' (!)' if rss['other_cpu'] > DISTURBED else ''}"
    )
    marks = [(k, rss.get(f"rss_{k}")) for k in ("start", "middle", "end")]
    if all(point is not None for _, point in marks):
        print(
            "  VmRSS "
            + ", ".join(
                f"{k} {p['VmRSS_kb'] / 1024:.1f} MB (at {p['statements']})"
                for k, p in marks
                if p is not None
            )
            + f", after the drain {(rss['rss_after_drain_kb'] or 0) / 1024:.1f} MB; outbox "
            f"{rss['outbox_bytes_after'] / 1e6:.1f} MB on disk after"
            + (
                f"; gateway CPU {rss['gateway_cpu'] * 100:.0f}%, PostgreSQL CPU "
                f"{rss['postgres_cpu'] * 100:.0f}%"
                if rss.get("postgres_cpu") is not None
                else ""
            )
        )


def print_targets(checks: list[dict[str, Any]]) -> None:
    """The issue's targets: the figure measured, the target, met or MISSED."""
    if not checks:
        return
    print("\nthe issue's targets:")
    for check in checks:
        value = check["value"]
        shown = (
            ""
            if value is None
            else (f"{value * 100:+.1f}%" if "growth" in check["name"] else f"{value:.3f}")
        )
        met = {True: "met", False: "MISSED", None: "?"}[check["met"]]
        print(
            f"  {check['name']:<34} {shown:>8}  target {check['target']:<28} {met}"
            + (f"  ({check['note']})" if check["note"] else "")
        )


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on (df), "?" when unknown."""
    done = subprocess.run(
        ["df", "--output=fstype", str(path)], capture_output=True, text=True, check=False
    )
    lines = done.stdout.split()
    return lines[-1] if done.returncode == 0 and lines else "?"


def _version(module: str) -> str:
    """The installed version of a distribution, "?" when unknown."""
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "?"


def settings(
    args: argparse.Namespace, info: RunInfo, flood_keys: list[str], single: dict[str, Any]
) -> dict[str, Any]:
    """The results JSON's "settings": how this run measured."""
    return {
        "loadgen": info.loadgen,
        "wrk_threads": args.threads,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "quiet_wait_s": args.quiet_wait,
        "quiet_budget_s": args.quiet_budget,
        "pinned": info.pin,
        "pinning": "loadgens+stubs CPU 0, proxy CPU 1" if info.pin else None,
        "statement_bytes": len(json.dumps(single, ensure_ascii=False).encode()),
        "batch_size": BATCH_SIZE,
        "gateway_event_loop": info.loop_kind,
        "data_dir_filesystem": info.data_fs,
        "lag_fraction": args.lag_fraction,
        "lag_duration_s": args.lag_duration,
        "flood_connections": args.flood_connections,
        "flood_variants": flood_keys,
        "rss_statements": args.rss_statements,
        "rss_store": args.rss_store,
        "half_load": args.half_load,
        "rss_sample_every": args.rss_sample_every,
        "rate_limits": NO_RATE_LIMITS,
    }


def write_report(
    args: argparse.Namespace,
    info: RunInfo,
    measured: Measured,
    skipped: dict[str, str],
    flood_keys: list[str],
    single: dict[str, Any],
) -> None:
    """Print the tables and targets, then write bench/results/<commit>-<time>.json."""
    results = measured.results
    ratios = compute_ratios(results)
    not_measured = {**NOT_MEASURED, **skipped}
    if measured.half is not None:
        del not_measured["added_p99_at_50pct_load"]
    checks = target_checks(
        results, ratios, measured.lag, measured.rss, measured.half, measured.rss_postgres
    )
    print_table(results, ratios, not_measured)
    if measured.postgres is not None and any(k in results for k in ("h", "i")):
        print_postgres(results, measured.postgres)
    print_targets(checks)
    data = {
        "commit": info.commit,
        "gateway_source": info.source,
        "local_changes": info.dirty,
        "started_at": info.started_at.isoformat(timespec="seconds"),
        "wall_seconds": time.monotonic() - info.wall_start,
        "machine": {
            "cpus": info.cpus,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "aiohttp": _version("aiohttp"),
        },
        "settings": settings(args, info, flood_keys, single),
        "results": results,
        "ratios": ratios,
        "targets": checks,
        "forwarding_lag": measured.lag,
        "half_load": measured.half,
        "rss": measured.rss,
        "rss_postgres": measured.rss_postgres,
        "postgres": measured.postgres,
        "not_measured": not_measured,
        "profiles": measured.profiles,
    }
    out = Path(args.results_dir) / f"{info.stem}.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(
        f"\nwritten: {out.relative_to(REPO) if out.is_relative_to(REPO) else out} "
        f"(the whole bench took {data['wall_seconds']:.0f} s)"
    )
