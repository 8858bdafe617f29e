"""The bcrypt flood: (c)'s valid requests while another client floods wrong passwords."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configs import bcrypt_hash
from harness import Bench, Server, loadgen_result
from probes import Samples, metric, post_once, scrape
from procstats import thread_cpu
from report import print_flood
from workload import FLOOD_USERS, FLOOD_VARIANTS, basic, statement

# Before the measured run: the gateway's metrics, its threads' CPU, the time.
Before = tuple[Samples, dict[int, float], float]


def flood_users(key: str) -> list[dict[str, Any]]:
    """FLOOD_USERS existing users (scope all) whose passwords the flood guesses."""
    return [
        {
            "username": f"{key}-user-{i}",
            "hash": bcrypt_hash(f"{key}-secret-{i}"),
            "scopes": ["all"],
            "agent": {"objectType": "Agent", "mbox": f"mailto:{key}-{i}@example.com"},
        }
        for i in range(FLOOD_USERS)
    ]


def write_auth_file(bench: Bench, key: str) -> Path:
    """4000 distinct wrong credentials, half for existing usernames, half for unknown ones."""
    # Unknown usernames pay the same bcrypt time; every value is distinct, so nothing is
    # ever cached.
    lines = [
        basic(f"{key}-user-{i % FLOOD_USERS}", f"wrong-{i}")
        if i % 2 == 0
        else basic(f"{key}-nobody-{i}", f"wrong-{i}")
        for i in range(4000)
    ]
    auth_file = bench.tmp / f"{key}-auth.txt"
    auth_file.write_text("\n".join(lines) + "\n")
    return auth_file


def window_probe(
    gateway: Server,
) -> tuple[Callable[[], Before], Callable[[Before], dict[str, Any]]]:
    """before_run and after_run: bcrypt checks, auth results, answers, CPU by thread."""
    pid = gateway.process.pid

    def before() -> Before:
        return scrape(gateway), thread_cpu(pid), time.perf_counter()

    def after(first: Before) -> dict[str, Any]:
        last = scrape(gateway)
        threads = thread_cpu(pid)
        seconds = time.perf_counter() - first[2]
        used = {tid: (end - first[1].get(tid, 0.0)) / seconds for tid, end in threads.items()}

        def delta(name: str, **labels: str) -> float:
            return metric(last, name, **labels) - metric(first[0], name, **labels)

        checks = delta("lrs_gateway_bcrypt_duration_seconds_count")
        return {
            "flood_window": {
                "seconds": seconds,
                # The gateway's threads: the event loop (main) and the others (the bcrypt
                # pool's worker, mostly), in shares of a core.
                "loop_thread_cpu": used.get(pid, 0.0),
                "other_threads_cpu": sum(v for tid, v in used.items() if tid != pid),
                "bcrypt_checks": checks,
                "bcrypt_checks_per_s": checks / seconds,
                "bcrypt_mean_s": (
                    delta("lrs_gateway_bcrypt_duration_seconds_sum") / checks if checks else None
                ),
                "auth_bad_credentials": delta(
                    "lrs_gateway_auth_attempts_total", result="bad_credentials"
                ),
                "auth_error_503": delta("lrs_gateway_auth_attempts_total", result="error"),
                "answers_by_class": {
                    cls: delta("lrs_gateway_requests_total", status_class=cls)
                    for cls in ("2xx", "4xx", "5xx")
                },
            }
        }

    return before, after


def flood_figures(raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The flood's answers over its whole life, by status, and its errors."""
    statuses = {int(k): v for k, v in raw.get("statuses", {}).items()}
    total = sum(statuses.values())
    return {
        "seconds": seconds,
        "answers": total,
        "answers_per_s": total / seconds,
        "401": statuses.get(401, 0),
        "503": statuses.get(503, 0),
        "429": statuses.get(429, 0),
        "other": {k: v for k, v in statuses.items() if k not in (401, 503, 429)},
        "timed_out_10s": raw["timeout_errors"],
        "errors": sum(raw[k] for k in ("connect_errors", "read_errors", "timeout_errors")),
    }


def run_flood(
    bench: Bench, key: str, stub: Server, one_file: Path, undisturbed: dict[str, Any] | None
) -> dict[str, Any]:
    """(c)'s valid cached requests while a flood of wrong passwords runs alongside."""
    args = bench.args
    label, lockout, same_address = FLOOD_VARIANTS[key]
    overrides: dict[str, Any] = {} if lockout else {"lockout": {"enabled": False}}
    gateway, _ = bench.start_gateway(
        f"gateway-{key}".replace("_", "-"), stub, overrides=overrides, users=flood_users(key)
    )
    try:
        auth_file = write_auth_file(bench, key)
        source = "127.0.0.1" if same_address else "127.0.0.2"
        post_once(gateway, stub, one_file.read_bytes(), [statement()["id"]])
        bench.quiet()
        flood = subprocess.Popen(
            bench.loadgen_command(
                gateway.url + "statements",
                one_file,
                connections=args.flood_connections,
                duration=args.warmup + args.duration + 30,
                extra=["--auth-file", str(auth_file), "--source-address", source],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        flood_started = time.monotonic()
        time.sleep(1.0)  # the bcrypt queue fills at once; give the flood a second anyway
        before, after = window_probe(gateway)
        result = bench.measure(
            f"({key}) {label}",
            gateway,
            one_file,
            stub,
            quiet=False,
            companions={"flood": flood.pid},
            before_run=before,
            after_run=after,
        )
        flood.terminate()
        out, err = flood.communicate(timeout=30)
        flood_seconds = time.monotonic() - flood_started
        figures = flood_figures(loadgen_result(out, err, flood.returncode), flood_seconds)
        result["flood"] = {
            "connections": args.flood_connections,
            "source_address": source,
            "lockout": lockout,
            **figures,
            "cpu": result["companions_cpu"].get("flood"),
        }
        if undisturbed:
            result["ratio_to_c"] = result["rps"] / undisturbed["rps"]
        return result
    finally:
        bench.stop(gateway.name)


def run_floods(
    bench: Bench, stub: Server, one_file: Path, keys: list[str], results: dict[str, dict[str, Any]]
) -> None:
    """Each flood variant in turn, into `results` (ratios against its (c)), then the table."""
    print(
        "\nbcrypt flood (valid cached Basic, as (c), while another client "
        f"floods wrong passwords with {bench.args.flood_connections} connections):",
        flush=True,
    )
    for key in keys:
        results[key] = run_flood(bench, key, stub, one_file, results.get("c"))
    print_flood(results, keys)
