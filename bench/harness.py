"""The bench's processes: start and stop servers, run the load generator, measure one setup."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from configs import write_gateway_config
from procstats import DISTURBED, Watch, cpu_times, cpu_usage
from workload import BENCH, REPO, request_headers

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"connect_errors":%.0f,"read_errors":%.0f,"write_errors":%.0f,"status_errors":%.0f,' ..
    '"timeout_errors":%.0f,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f,' ..
    '"mean_us":%.1f,"max_us":%.0f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""
ERROR_KINDS = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeout_errors")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pick_loadgen(choice: str) -> str:
    """wrk when wanted and installed, else the asyncio generator (bench/loadgen.py)."""
    if choice in ("auto", "wrk") and shutil.which("wrk"):
        return "wrk"
    if choice == "wrk":
        sys.exit("bench: --loadgen wrk but wrk is not installed")
    return "asyncio"


def loadgen_result(stdout: str, stderr: str, returncode: int | None) -> dict[str, Any]:
    """The figures of a load generator's `BENCHJSON` line (exit when it printed none)."""
    for line in stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
            return result
    sys.exit(
        f"bench: the load generator failed ({returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}"
    )


def raw_errors(raw: dict[str, Any]) -> int:
    """Every kind of error a load generator counted, summed."""
    return int(sum(raw[k] for k in ERROR_KINDS))


@dataclass
class Server:
    """A process the bench started: a stub, the baseline proxy or a gateway."""

    name: str
    process: subprocess.Popen[bytes]
    url: str  # the xAPI base, ending in /xAPI/
    log: Path

    @property
    def base(self) -> str:
        """http://host:port/"""
        return self.url.removesuffix("xAPI/")


@dataclass
class Bench:
    """One bench run: its options, temporary directory, pinning and the servers it started."""

    args: argparse.Namespace
    tmp: Path
    pin: bool
    loadgen: str
    src: Path = REPO
    servers: dict[str, Server] = field(default_factory=dict)
    quiet_left: float = 0.0  # seconds of --quiet-budget not spent yet

    def pinned(self, cpu: int | str, command: list[str]) -> list[str]:
        """`command` run on `cpu` (taskset) when pinning."""
        return ["taskset", "-c", str(cpu), *command] if self.pin else command

    def env(self) -> dict[str, str]:
        """The environment of a gateway process: no LRS_GATEWAY_*, the source under test."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LRS_GATEWAY")}
        env["PYTHONPATH"] = str(self.src)
        return env

    def start(
        self,
        name: str,
        command: list[str],
        cpu: int | str,
        url: str,
        ready: str,
        src: Path = REPO,
        *,
        run_as: tuple[int, int] | None = None,
        cwd: Path | None = None,
    ) -> Server:
        """Start a server (the gateway's package taken from `src`) and wait until it answers.

        `run_as` (uid, gid): run it as that user (PostgreSQL refuses root); `cwd`: run it
        there instead of in `src`.
        """
        log = self.tmp / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LRS_GATEWAY")}
        env["PYTHONPATH"] = str(src)
        with log.open("wb") as handle:
            process = subprocess.Popen(
                self.pinned(cpu, command),
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=cwd or src,
                env=env,
                user=None if run_as is None else run_as[0],
                group=None if run_as is None else run_as[1],
                extra_groups=None if run_as is None else [],
            )
        server = Server(name, process, url, log)
        self.servers[name] = server
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                sys.exit(f"bench: {name} exited early:\n{log.read_text()[-3000:]}")
            try:
                if ready.startswith("tcp://"):  # not HTTP (Redis, PostgreSQL): accepting
                    host, _, port = ready.removeprefix("tcp://").rpartition(":")
                    socket.create_connection((host, int(port)), timeout=1).close()
                    break
                with urllib.request.urlopen(ready, timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # it answers HTTP: ready
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"bench: {name} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
        return server

    def start_gateway(
        self,
        name: str,
        stub: Server,
        *,
        level: str = "INFO",
        overrides: dict[str, Any] | None = None,
        users: list[dict[str, Any]] | None = None,
        workers: int = 1,
        cpu: int | str | None = None,
    ) -> tuple[Server, Path]:
        """A gateway on CPU 1 (or `cpu`); with `workers` > 1, its workers get CPUs 0 and 1."""
        port = free_port()
        config = write_gateway_config(
            self.tmp, name, port, stub.url, self.src, overrides=overrides, users=users
        )
        extra = ["--workers", str(workers)] if workers > 1 else []
        server = self.start(
            name,
            [
                sys.executable,
                "-m",
                "gateway",
                "--log-level",
                level,
                "serve",
                "--config",
                str(config),
                *extra,
            ],
            cpu if cpu is not None else "0,1" if workers > 1 else 1,
            f"http://127.0.0.1:{port}/xAPI/",
            f"http://127.0.0.1:{port}/__lbheartbeat__",
            src=self.src,
        )
        return server, config

    def stop(self, name: str) -> None:
        """Terminate one server (kill it after 10 s)."""
        server = self.servers.pop(name)
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()

    def stop_all(self) -> None:
        """Terminate every server still running (kill those that take over 10 s)."""
        for server in self.servers.values():
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers.values():
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()

    def watch(self, companions: dict[str, int] | None = None) -> Watch:
        """Start watching the CPU of the bench's servers, `companions` and everything else."""
        return Watch({name: s.process.pid for name, s in self.servers.items()}, companions)

    def loadgen_command(
        self,
        url: str | list[str],
        body_file: Path,
        *,
        connections: int,
        duration: float,
        authorization: str | None = None,
        extra: list[str] | None = None,
    ) -> list[str]:
        """bench/loadgen.py with the bench's headers (no Authorization with --auth-file).

        Several URLs: its connections take them in turn (a third each for three).
        """
        urls = [url] if isinstance(url, str) else url
        command = [
            sys.executable,
            str(BENCH / "loadgen.py"),
            *(arg for one in urls for arg in ("--url", one)),
            "--body",
            str(body_file),
            "--connections",
            str(connections),
            "--duration",
            str(duration),
            *(extra or []),
        ]
        headers = request_headers(authorization)
        if extra and "--auth-file" in extra:
            del headers["Authorization"]
        command += [arg for k, v in headers.items() for arg in ("--header", f"{k}: {v}")]
        return self.pinned(0, command)

    def wrk_command(
        self,
        url: str,
        body_file: Path,
        duration: float,
        authorization: str | None = None,
        spread: list[str] | None = None,
    ) -> list[str]:
        """wrk with a Lua script that posts `body_file` and prints a `BENCHJSON` line.

        `spread` (URLs of servers on 127.0.0.1): one wrk thread per server, each with a
        share of the connections (wrk.lookup in setup(): its latencies stay one histogram).
        """
        headers = request_headers(authorization)
        ports = [urlsplit(one).port for one in spread or []]
        tag = uuid.uuid5(uuid.NAMESPACE_OID, json.dumps([headers, ports])).hex[:8]
        script = self.tmp / f"{body_file.stem}-{tag}.lua"
        lines = [
            f"local f = io.open({json.dumps(str(body_file))}, 'rb')",
            "wrk.method = 'POST'",
            "wrk.body = f:read('*a')",
            "f:close()",
        ]
        lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
        threads, connections = self.args.threads, self.args.connections
        if ports:
            threads = len(ports)
            connections = self.spread_connections(len(ports)) * len(ports)
            lines += [
                f"local ports = {{{', '.join(json.dumps(str(p)) for p in ports)}}}",
                "local started = 0",
                "function setup(thread)",
                "  started = started + 1",
                "  local port = ports[(started - 1) % #ports + 1]",
                "  thread.addr = wrk.lookup('127.0.0.1', port)[1]",
                "end",
            ]
        lines.append(WRK_DONE)
        script.write_text("\n".join(lines) + "\n")
        return self.pinned(
            0,
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
        )

    def spread_connections(self, servers: int) -> int:
        """Connections to each of `servers` when the load is spread: a share of the total."""
        connections: int = self.args.connections
        return max(1, round(connections / servers))

    def load(
        self,
        url: str,
        body_file: Path,
        duration: float,
        authorization: str | None = None,
        spread: list[str] | None = None,
    ) -> dict[str, Any]:
        """One closed-loop run of the load generator (over the `spread` URLs); its figures."""
        if self.loadgen == "wrk":
            command = self.wrk_command(url, body_file, duration, authorization, spread)
        else:
            command = self.loadgen_command(
                spread or url,
                body_file,
                connections=self.spread_connections(len(spread)) * len(spread)
                if spread
                else self.args.connections,
                duration=duration,
                authorization=authorization,
            )
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + 60, check=False
        )
        return loadgen_result(done.stdout, done.stderr, done.returncode)

    def wait_for_quiet(self) -> float:
        """Wait (--quiet-wait, within --quiet-budget) for a nearly idle machine; the load left."""
        started = time.monotonic()
        deadline = started + min(self.args.quiet_wait, max(1.0, self.quiet_left))
        try:
            while True:
                before = cpu_times()
                time.sleep(1)
                usage = cpu_usage(before, cpu_times())
                busy: float = sum(u["busy"] for u in usage.values())
                if busy <= DISTURBED or time.monotonic() >= deadline:
                    return busy
        finally:
            self.quiet_left -= time.monotonic() - started

    def quiet(self) -> None:
        """Wait for the machine to be nearly idle (unless --quiet-wait 0); say if it is not."""
        if self.args.quiet_wait > 0:
            idle_load = self.wait_for_quiet()
            if idle_load > DISTURBED:
                print(
                    f"  (machine still busy: {idle_load * 100:.0f}% of a core in use by "
                    "others; measuring anyway)",
                    flush=True,
                )

    def measure(
        self,
        label: str,
        server: Server,
        body_file: Path,
        stub: Server,
        *,
        authorization: str | None = None,
        quiet: bool = True,
        companions: dict[str, int] | None = None,
        before_run: Callable[[], Any] | None = None,
        after_run: Callable[[Any], dict[str, Any]] | None = None,
        spread: list[Server] | None = None,
    ) -> dict[str, Any]:
        """Warm-up, then one measured run; `after_run(before_run())` adds to the result.

        `spread`: servers (`server` among them) that share the load, connections taking
        them in turn; the server CPU is theirs added up.
        """
        # `companions` (name -> pid) are the bench's own processes running alongside (a
        # flood): their CPU is theirs, not other load. before_run and after_run take their
        # figures around the measured run only.
        url = server.url + "statements"
        urls = [s.url + "statements" for s in spread] if spread else None
        if quiet:
            self.quiet()
        self.load(url, body_file, self.args.warmup, authorization, urls)
        probe = before_run() if before_run is not None else None
        watch = self.watch(companions)
        raw = self.load(url, body_file, self.args.duration, authorization, urls)
        cpu = watch.stop()
        extra = after_run(probe) if after_run is not None else {}
        errors = raw_errors(raw)
        if errors:
            print_errors(label, errors, raw, server)
        result = {**run_figures(label, server, stub, body_file, raw, cpu, errors), **extra}
        if spread:
            result["server_cpu"] = sum(cpu["servers"].get(s.name, 0.0) for s in spread)
            result["servers"] = [s.name for s in spread]
            result["connections"] = self.spread_connections(len(spread)) * len(spread)
        print_run(label, result, cpu)
        return result


def run_figures(
    label: str,
    server: Server,
    stub: Server,
    body_file: Path,
    raw: dict[str, Any],
    cpu: dict[str, Any],
    errors: int,
) -> dict[str, Any]:
    """One measured run's result: throughput, latencies, errors, CPU by process."""
    seconds = raw["duration_us"] / 1e6
    return {
        "setup": label,
        "target": server.name,
        "body_bytes": body_file.stat().st_size,
        "requests": raw["requests"],
        # Throughput counts good answers only: an error answered fast is no throughput.
        "rps": (raw["requests"] - raw["status_errors"]) / seconds,
        "rps_including_errors": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "server_cpu": cpu["servers"].get(server.name, 0.0),
        "stub_cpu": cpu["servers"].get(stub.name) if server is not stub else None,
        "loadgen_cpu": cpu["loadgen"],
        "companions_cpu": cpu["companions"],
        "bench_servers_cpu": cpu["servers"],
        "other_cpu": cpu["other"],
        "other_processes": cpu["others"],
        "machine_cpu": cpu["machine"],
        "raw": raw,
    }


def print_errors(label: str, errors: int, raw: dict[str, Any], server: Server) -> None:
    """Say a run had errors, with the first one and the end of the server's log."""
    print(
        f"  {label}: {errors} errors; "
        + (f"first: {raw['first_error']}; " if "first_error" in raw else "")
        + "the server's log ends with:\n    "
        + "\n    ".join(server.log.read_text(errors="replace").splitlines()[-5:]),
        flush=True,
    )


def print_run(label: str, result: dict[str, Any], cpu: dict[str, Any]) -> None:
    """One line per measured run: req/s, p50, p99, errors, other load when above 10%."""
    other = cpu["other"]
    print(
        f"  {label:<52} {result['rps']:>9.0f} req/s  p50 {result['p50_ms']:6.2f} ms"
        f"  p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}"
        + (
            f"  (other load {other * 100:.0f}%: "
            + ", ".join(f"{n} {c * 100:.0f}%" for n, c in cpu["others"])
            + ")"
            if other > 0.1
            else ""
        ),
        flush=True,
    )


@contextlib.contextmanager
def running(bench: Bench) -> Iterator[None]:
    """Stop every server of `bench` on the way out."""
    try:
        yield
    finally:
        bench.stop_all()
