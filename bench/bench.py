"""Benchmarks of lrs-gateway (issue 8); run through `bash bench/run.sh`.

    .venv/bin/python bench/bench.py [--duration 10] [--warmup 2] [--connections 16]
                                    [--rounds 1] [--no-batch] [--loadgen auto|wrk|asyncio]
                                    [--no-pin] [--profile --py-spy PATH]
                                    [--no-token] [--no-workers] [--no-forwarding] [--no-lag]
                                    [--no-flood]
                                    [--no-rss] [--rss-statements 100000] ...

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
  while (c) has CPU 1 to itself); and, started for their run only,
  the bcrypt-flood gateways (lockout off, then on) and a fresh forwarding gateway for the
  memory run.

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
  statements; the slope (MB per 100k statements) says whether it grows.

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
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
USERNAME = "bench"
PASSWORD = "bench-password-1"
ADMIN_USERNAME = "bench-admin"
ADMIN_PASSWORD = "bench-admin-password-1"
AGENT = {"objectType": "Agent", "name": "Bench client", "mbox": "mailto:bench@example.com"}
XAPI_VERSION = "1.0.3"
BATCH_SIZE = 100
DISTURBED = 0.25  # other load above this share of a core marks a run as disturbed
PLACEHOLDER = "@ID@"  # bench/loadgen.py --unique-ids puts a fresh UUID there
TARGETS = ("target-1", "target-2", "target-3")
FLOOD_USERS = 50  # existing usernames the flood guesses passwords for (per variant)
FLOOD_VARIANTS = {
    # key: (label, lockout on, flood from the valid client's own address)
    "flood": ("bcrypt flood, lockout off", False, False),
    "flood_lockout": ("bcrypt flood, lockout on, flood from 127.0.0.2", True, False),
    "flood_lockout_same_addr": ("bcrypt flood, lockout on, flood from 127.0.0.1", True, True),
}
# One client from one address is the whole load here: the rate limits stay on (their check
# is part of the hot path measured) but set so high that they never trip.
NO_RATE_LIMITS = {"per_ip_rate": 1e9, "per_ip_burst": 10**9,
                  "per_principal_rate": 1e9, "per_principal_burst": 10**9}
TARGETS_OF_ISSUE = {
    "c/b": ">= 1.0 (goal 1.8)",
    "d/c": ">= 0.90",
    "e/c": ">= 0.75",
    "flood/c": ">= 0.80",
    "f/c": ">= 1.6",
    "lag_p99_s": "<= 1 s",
    "rss_growth": "<= 10% (100k -> 1M)",
}

NOT_MEASURED = {
    "added_p99_at_50pct_load": "off by default (--half-load)",
}


def statement(index: int = 0) -> dict[str, Any]:
    """A realistic ~1 KB xAPI statement, with the id and timestamp a good client sets."""
    return {
        "id": str(uuid.UUID(int=0x5EED0000_0000_4000_8000_000000000000 + index)),
        "timestamp": "2024-05-02T10:15:30.123Z",
        "actor": {"objectType": "Agent", "name": "Ada Lovelace",
                  "mbox": "mailto:ada.lovelace@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed",
                 "display": {"en-US": "completed", "fr-FR": "a terminé"}},
        "object": {
            "objectType": "Activity",
            "id": "https://courses.example.com/xapi/activities/analytical-engine/module-3",
            "definition": {
                "type": "http://adlnet.gov/expapi/activities/module",
                "name": {"en-US": "The Analytical Engine, module 3: loops and cards"},
            },
        },
        "result": {"score": {"scaled": 0.92, "raw": 92, "min": 0, "max": 100},
                   "success": True, "completion": True, "duration": "PT42M17S",
                   "response": "loop-cards-ok"},
        "context": {
            "registration": "0f5a9a9e-1b7e-4a52-9d7e-6c3a1f2b8d41",
            "platform": "Example LMS 4.2",
            "language": "en-US",
            "contextActivities": {
                "parent": [{"objectType": "Activity",
                            "id": "https://courses.example.com/xapi/activities/analytical-engine"}],
                "category": [{"objectType": "Activity",
                              "id": "https://w3id.org/xapi/cmi5/context/categories/moveon"}],
            },
            "extensions": {"https://courses.example.com/xapi/ext/attempt": 3},
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    return {line.split()[0]: [int(x) for x in line.split()[1:]]
            for line in lines if line.startswith("cpu") and line[3:4].isdigit()}


def cpu_usage(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, Any]:
    """Busy and steal shares per CPU between two snapshots."""
    usage = {}
    for cpu, end in after.items():
        delta = [b - a for a, b in zip(before.get(cpu, end), end, strict=False)]
        total = sum(delta[:8]) or 1
        idle = delta[3] + delta[4]
        usage[cpu] = {"busy": (total - idle - delta[7]) / total, "steal": delta[7] / total,
                      "seconds": (total - idle - delta[7]) / os.sysconf("SC_CLK_TCK")}
    return usage


def process_times() -> dict[tuple[int, str], float]:
    """CPU seconds of every process on the machine, keyed by (pid, name)."""
    ticks = os.sysconf("SC_CLK_TCK")
    times = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.find("(") + 1:text.rfind(")")]
        fields = text.rpartition(")")[2].split()
        times[(int(entry.name), name)] = (int(fields[11]) + int(fields[12])) / ticks
    return times


def children_by_parent() -> dict[int, list[int]]:
    """Every process's children (pids), from /proc: a `--workers` gateway's workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def busiest_others(before: dict[tuple[int, str], float], after: dict[tuple[int, str], float],
                   ours: set[int], seconds: float) -> list[tuple[str, float]]:
    """The processes, not the bench's, that used the most CPU between two snapshots."""
    used = [(f"{name}[{pid}]", (end - before.get((pid, name), 0.0)) / seconds)
            for (pid, name), end in after.items() if pid not in ours]
    return sorted((u for u in used if u[1] >= 0.02), key=lambda u: -u[1])[:5]


def basic(username: str, password: str) -> str:
    """An `Authorization: Basic` value."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def statement_template(batch: int = 0) -> bytes:
    """The bench statement (a batch of `batch` when > 0) with the id left for the loadgen."""
    def one(index: int) -> dict[str, Any]:
        return {**statement(index), "id": PLACEHOLDER}
    data: Any = [one(i) for i in range(1, batch + 1)] if batch else one(0)
    return json.dumps(data, ensure_ascii=False).encode()


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process, by thread id (the main thread's is `pid`)."""
    ticks = os.sysconf("SC_CLK_TCK")
    times = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return times


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    figures = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                figures[key] = int(value.split()[0])
    except OSError:
        pass
    return figures


def http_get(url: str, authorization: str | None = None, timeout: float = 10) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": authorization}
                                     if authorization else {})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        body: bytes = answer.read()
        return body


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(server: Server) -> list[tuple[str, dict[str, str], float]]:
    """The gateway's Prometheus samples: (name, labels, value)."""
    text = http_get(server.base + "metrics").decode()
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples.append((match.group(1), dict(_LABEL.findall(match.group(2) or "")),
                            float(match.group(3))))
    return samples


def metric(samples: list[tuple[str, dict[str, str], float]], name: str,
           **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(value for n, have, value in samples
               if n == name and all(have.get(k) == v for k, v in labels.items()))


def forwarding_status(server: Server) -> dict[str, dict[str, Any]]:
    """GET /admin/forwarding (admin credential): per target backlog, oldest_age, ..."""
    body = json.loads(http_get(server.base + "admin/forwarding",
                               basic(ADMIN_USERNAME, ADMIN_PASSWORD)))
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


def stub_ids(stub_base: str, *, full: bool = False) -> dict[str, Any]:
    """What a stub counted since its last reset (bench/stub_lrs.py /_bench/ids)."""
    answer: dict[str, Any] = json.loads(http_get(stub_base + "_bench/ids"
                                                 + ("?full=1" if full else ""), timeout=60))
    return answer


def stub_reset(stub_base: str, track: str) -> None:
    http_get(stub_base + f"_bench/reset?track={track}")


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


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


OUTER_FRAMES = ("_run_code ", "_run_module_as_main ", "<module> ", "main ", "_serve ",
                "run_app ", "BaseEventLoop.run", "Handle._run ", "Thread.")
# Where the loop thread's Python stack ends when it is inside the event loop's own code:
# asyncio's selector wait, or (uvloop) anything in the loop's C code, idle wait included.
LOOP_ENTRY_FRAMES = ("run_app ", "BaseEventLoop.run_until_complete ",
                     "BaseEventLoop.run_forever ", "Runner.run ", "run ",
                     "EpollSelector.select ", "select ")


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str  # the xAPI base, ending in /xAPI/
    log: Path

    @property
    def base(self) -> str:
        """http://host:port/"""
        return self.url.removesuffix("xAPI/")


class Watch:
    """CPU used between start and stop: the bench's processes, and everything else."""

    def __init__(self, bench: Bench, companions: dict[str, int] | None = None) -> None:
        self._bench = bench
        self._companions = companions or {}
        self._started = time.perf_counter()
        self._machine = cpu_times()
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._processes = process_times()

    def stop(self) -> dict[str, Any]:
        processes = process_times()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine = cpu_usage(self._machine, cpu_times())
        seconds = max(1e-6, time.perf_counter() - self._started)
        by_pid = {pid: end - self._processes.get((pid, name), end)
                  for (pid, name), end in processes.items()}
        kids = children_by_parent()
        family = {name: [s.process.pid, *kids.get(s.process.pid, [])]
                  for name, s in self._bench.servers.items()}
        servers = {name: sum(by_pid.get(pid, 0.0) for pid in pids) / seconds
                   for name, pids in family.items()}
        companions = {name: by_pid.get(pid, 0.0) / seconds
                      for name, pid in self._companions.items()}
        # Load generators run to completion inside the window: their CPU is the children's.
        reaped = (children.ru_utime + children.ru_stime - self._children.ru_utime
                  - self._children.ru_stime) / seconds
        mine = {os.getpid(), *(pid for pids in family.values() for pid in pids),
                *self._companions.values()}
        ours = (sum(servers.values()) + sum(companions.values()) + reaped
                + by_pid.get(os.getpid(), 0.0) / seconds)
        # CPU used on the machine by anything but the bench's processes (other sessions'
        # test runs, say): when it is high, the run was disturbed.
        other = max(0.0, sum(u["seconds"] for u in machine.values()) / seconds - ours)
        return {"seconds": seconds, "servers": servers, "companions": companions,
                "loadgen": reaped, "other": other,
                "others": busiest_others(self._processes, processes, mine, seconds),
                "machine": machine}


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    pin: bool
    loadgen: str
    src: Path = REPO
    servers: dict[str, Server] = field(default_factory=dict)
    quiet_left: float = 0.0  # seconds of --quiet-budget not spent yet

    def pinned(self, cpu: int | str, command: list[str]) -> list[str]:
        return ["taskset", "-c", str(cpu), *command] if self.pin else command

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LRS_GATEWAY")}
        env["PYTHONPATH"] = str(self.src)
        return env

    def start(self, name: str, command: list[str], cpu: int | str, url: str, ready: str,
              src: Path = REPO) -> Server:
        """Start a server (the gateway's package taken from `src`) and wait until it answers."""
        log = self.tmp / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LRS_GATEWAY")}
        env["PYTHONPATH"] = str(src)
        with log.open("wb") as handle:
            process = subprocess.Popen(self.pinned(cpu, command), stdout=handle,
                                       stderr=subprocess.STDOUT, cwd=src, env=env)
        server = Server(name, process, url, log)
        self.servers[name] = server
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                sys.exit(f"bench: {name} exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready, timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # it answers HTTP: ready
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"bench: {name} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
        return server

    def start_gateway(self, name: str, stub: Server, *, level: str = "INFO",
                      overrides: dict[str, Any] | None = None,
                      users: list[dict[str, Any]] | None = None,
                      workers: int = 1) -> tuple[Server, Path]:
        """A gateway on CPU 1; with `workers` > 1, its workers get CPUs 0 and 1."""
        port = free_port()
        config = write_gateway_config(self.tmp, name, port, stub.url, self.src,
                                      overrides=overrides, users=users)
        extra = ["--workers", str(workers)] if workers > 1 else []
        server = self.start(name, [sys.executable, "-m", "gateway", "--log-level", level,
                                   "serve", "--config", str(config), *extra],
                            "0,1" if workers > 1 else 1, f"http://127.0.0.1:{port}/xAPI/",
                            f"http://127.0.0.1:{port}/__lbheartbeat__", src=self.src)
        return server, config

    def stop(self, name: str) -> None:
        server = self.servers.pop(name)
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()

    def stop_all(self) -> None:
        for server in self.servers.values():
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers.values():
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()

    def headers(self, authorization: str | None = None) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Experience-API-Version": XAPI_VERSION,
                "Authorization": authorization or basic(USERNAME, PASSWORD)}

    def loadgen_command(self, url: str, body_file: Path, *, connections: int,
                        duration: float, authorization: str | None = None,
                        extra: list[str] | None = None) -> list[str]:
        """bench/loadgen.py with the bench's headers (Authorization left out when the extra
        arguments bring their own, with --auth-file)."""
        command = [sys.executable, str(BENCH / "loadgen.py"), "--url", url, "--body",
                   str(body_file), "--connections", str(connections), "--duration",
                   str(duration), *(extra or [])]
        headers = self.headers(authorization)
        if extra and "--auth-file" in extra:
            del headers["Authorization"]
        command += [arg for k, v in headers.items() for arg in ("--header", f"{k}: {v}")]
        return self.pinned(0, command)

    def load(self, url: str, body_file: Path, duration: float,
             authorization: str | None = None) -> dict[str, Any]:
        """One closed-loop run of the load generator; its raw figures."""
        if self.loadgen == "wrk":
            headers = self.headers(authorization)
            tag = uuid.uuid5(uuid.NAMESPACE_OID, json.dumps(headers)).hex[:8]
            script = self.tmp / f"{body_file.stem}-{tag}.lua"
            lines = [f"local f = io.open({json.dumps(str(body_file))}, 'rb')",
                     "wrk.method = 'POST'", "wrk.body = f:read('*a')", "f:close()"]
            lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                      for k, v in headers.items()]
            lines.append(WRK_DONE)
            script.write_text("\n".join(lines) + "\n")
            command = self.pinned(0, [
                "wrk", f"-t{self.args.threads}", f"-c{self.args.connections}",
                f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script), url])
        else:
            command = self.loadgen_command(url, body_file, connections=self.args.connections,
                                           duration=duration, authorization=authorization)
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=duration + 60, check=False)
        return loadgen_result(done.stdout, done.stderr, done.returncode)

    def wait_for_quiet(self) -> float:
        """Wait (up to --quiet-wait s, and within what is left of --quiet-budget) until the
        machine is nearly idle; the load left."""
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
        if self.args.quiet_wait > 0:
            idle_load = self.wait_for_quiet()
            if idle_load > DISTURBED:
                print(f"  (machine still busy: {idle_load * 100:.0f}% of a core in use by "
                      "others; measuring anyway)", flush=True)

    def measure(self, label: str, server: Server, body_file: Path, stub: Server, *,
                authorization: str | None = None, quiet: bool = True,
                companions: dict[str, int] | None = None,
                before_run: Callable[[], Any] | None = None,
                after_run: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Warm-up, then one measured run. `companions` (name -> pid) are the bench's own
        processes running alongside (a flood): their CPU is theirs, not other load.
        `after_run(before_run())` adds fields to the result (figures taken around the
        measured run only)."""
        url = server.url + "statements"
        if quiet:
            self.quiet()
        self.load(url, body_file, self.args.warmup, authorization)
        probe = before_run() if before_run is not None else None
        watch = Watch(self, companions)
        raw = self.load(url, body_file, self.args.duration, authorization)
        cpu = watch.stop()
        extra = after_run(probe) if after_run is not None else {}
        seconds = raw["duration_us"] / 1e6
        other = cpu["other"]
        errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors",
                                      "status_errors", "timeout_errors"))
        if errors:
            print(f"  {label}: {errors} errors; "
                  + (f"first: {raw['first_error']}; " if "first_error" in raw else "")
                  + "the server's log ends with:\n    "
                  + "\n    ".join(server.log.read_text(errors="replace").splitlines()[-5:]),
                  flush=True)
        result = {
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
            "other_cpu": other,
            "other_processes": cpu["others"],
            "machine_cpu": cpu["machine"],
            "raw": raw,
            **extra,
        }
        print(f"  {label:<52} {result['rps']:>9.0f} req/s  p50 {result['p50_ms']:6.2f} ms"
              f"  p99 {result['p99_ms']:6.2f} ms  errors {errors}"
              + (f"  (other load {other * 100:.0f}%: "
                 + ", ".join(f"{n} {c * 100:.0f}%" for n, c in cpu["others"]) + ")"
                 if other > 0.1 else ""), flush=True)
        return result


def loadgen_result(stdout: str, stderr: str, returncode: int | None) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result: dict[str, Any] = json.loads(line[len("BENCHJSON "):])
            return result
    sys.exit(f"bench: the load generator failed ({returncode}):\n"
             f"{stdout[-2000:]}\n{stderr[-2000:]}")


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


def _merge(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


_HASHES: dict[str, str] = {}


def bcrypt_hash(password: str) -> str:
    import bcrypt  # the gateway's own dependency, in its venv

    if password not in _HASHES:
        _HASHES[password] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
    return _HASHES[password]


def write_gateway_config(tmp: Path, name: str, port: int, stub_url: str,
                         src: Path = REPO, *, overrides: dict[str, Any] | None = None,
                         users: list[dict[str, Any]] | None = None) -> Path:
    """A gateway's config.yaml and auth.json: the bench user (scope all), an admin (for
    GET /admin/forwarding), `users`; storage -> the stub; rate limits out of the way."""
    directory = tmp / name
    directory.mkdir()
    (directory / "auth.json").write_text(json.dumps([
        {"username": USERNAME, "hash": bcrypt_hash(PASSWORD), "scopes": ["all"],
         "agent": AGENT},
        {"username": ADMIN_USERNAME, "hash": bcrypt_hash(ADMIN_PASSWORD), "scopes": ["admin"],
         "agent": {"objectType": "Agent", "mbox": "mailto:bench-admin@example.com"}},
        *(users or []),
    ]))
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"backends": ["basic"], "basic": {"credentials_file": "auth.json"}},
        "storage": {"url": stub_url, "timeout": 10},
        "data_dir": str(directory / "data"),
    }
    if "class RateLimitConfig" in (src / "gateway" / "config.py").read_text():
        config["rate_limit"] = dict(NO_RATE_LIMITS)
    _merge(config, overrides or {})
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def supports(src: Path) -> dict[str, bool]:
    """What the gateway under test can be configured with."""
    config = (src / "gateway" / "config.py").read_text()
    return {"token": "class TokensConfig" in config,
            "forwarding": "class ForwardingTarget" in config,
            "lockout": "class LockoutConfig" in config}


def forwarding_overrides(target_ports: list[int]) -> dict[str, Any]:
    return {"forwardings": [
        {"name": name, "is_active": True, "url": f"http://127.0.0.1:{port}/xAPI/statements",
         "basic_username": None, "basic_password": None, "max_retries": 5, "timeout": 5}
        for name, port in zip(TARGETS, target_ports, strict=True)]}


def issue_token(bench: Bench, config: Path) -> str:
    """A bearer gateway token for the bench user, from `lrs-gateway token issue`."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--log-level", "WARNING", "token", "issue",
         "--config", str(config), "--username", USERNAME, "--scope", "all",
         "--expires-in", "3600"],
        cwd=bench.src, env=bench.env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench: token issue failed:\n{done.stdout}\n{done.stderr}")
    token: str = json.loads(done.stdout)["token"]
    return token


def post_once(bench: Bench, server: Server, stub: Server, body: bytes, ids: list[str],
              authorization: str | None = None) -> None:
    """One request through `server`; the stub must have received our authority on each."""
    request = urllib.request.Request(server.url + "statements", data=body, method="POST",
                                     headers=bench.headers(authorization))
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


def forwarding_probe(server: Server) -> Callable[[Any], dict[str, Any]]:
    """after_run for a forwarding gateway: backlog and lag the moment the load stopped."""
    def after(_: Any) -> dict[str, Any]:
        status = forwarding_status(server)
        return {"backlog_at_end": {n: t["backlog"] for n, t in status.items()},
                "lag_at_end_s": {n: t["oldest_age"] for n, t in status.items()}}
    return after


# -- forwarding lag at sustained load ---------------------------------------------------


class Sampler(threading.Thread):
    """GET /admin/forwarding every `interval` s until stopped: (t, per-target status)."""

    def __init__(self, server: Server, interval: float) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, dict[str, dict[str, Any]]]] = []
        self.errors = 0
        self.halt = threading.Event()
        self.origin = time.monotonic()

    def run(self) -> None:
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


def run_lag(bench: Bench, gateway: Server, stub: Server, targets: Server,
            target_ports: list[int], max_rps: float, template: Path) -> dict[str, Any]:
    args = bench.args
    rate = max(1.0, round(args.lag_fraction * max_rps))
    print(f"\nforwarding lag: {rate:.0f} statements/s (open loop, {args.lag_fraction:.0%} of "
          f"(e)'s {max_rps:.0f} req/s) for {args.lag_duration:g} s, 3 targets, "
          "GET /admin/forwarding every 0.5 s", flush=True)
    settle = wait_drained(gateway, args.drain_timeout)
    target_bases = [f"http://127.0.0.1:{port}/" for port in target_ports]
    for base in (stub.base, *target_bases):
        stub_reset(base, "ids")
    ids_file = bench.tmp / "lag-ids.txt"
    bench.quiet()
    command = bench.loadgen_command(
        gateway.url + "statements", template, connections=64, duration=args.lag_duration,
        extra=["--rate", str(rate), "--unique-ids", "--ids-out", str(ids_file)])
    sampler = Sampler(gateway, 0.5)
    watch = Watch(bench)
    sampler.start()
    load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = load.communicate(timeout=args.lag_duration + 120)
    load_end = time.monotonic() - sampler.origin
    raw = loadgen_result(out, err, load.returncode)
    # After the load: faster samples, until every backlog is 0.
    sampler.interval = 0.1
    deadline = time.monotonic() + args.drain_timeout
    drained_at = None
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if sampler.samples and sampler.samples[-1][0] > load_end and all(
                t["backlog"] == 0 for t in sampler.samples[-1][1].values()):
            drained_at = sampler.samples[-1][0]
            break
    sampler.halt.set()
    sampler.join()
    cpu = watch.stop()
    acked = [line for line in ids_file.read_text().splitlines() if line]
    acked_set = set(acked)
    during = [s for t, s in sampler.samples if t <= load_end]
    per_target: dict[str, Any] = {}
    for name in TARGETS:
        lags = [s[name]["oldest_age"] or 0.0 for s in during if name in s]
        backlogs = [s[name]["backlog"] for s in during if name in s]
        per_target[name] = {"lag_max_s": max(lags, default=None),
                            "lag_p95_s": percentile(lags, 95),
                            "lag_p99_s": percentile(lags, 99),
                            "lag_mean_s": sum(lags) / len(lags) if lags else None,
                            "backlog_max": max(backlogs, default=None)}
    delivery: dict[str, Any] = {}
    for name, base in (("storage", stub.base), *zip(TARGETS, target_bases, strict=True)):
        got = stub_ids(base, full=True)
        seen = set(got.pop("ids"))
        delivery[name] = {**got, "missing": len(acked_set - seen),
                          "unexpected": len(seen - acked_set),
                          "exactly_once": not (acked_set - seen) and got["duplicates"] == 0}
        if name != "storage":
            per_target[name]["delivery"] = delivery[name]
    for base in (stub.base, *target_bases):
        stub_reset(base, "off")
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors",
                                  "status_errors", "timeout_errors"))
    result = {
        "rate": rate, "fraction_of_e": args.lag_fraction, "e_rps": max_rps,
        "duration_s": args.lag_duration, "settle_before_s": settle,
        "scheduled": raw.get("scheduled"), "answered": raw["requests"], "errors": errors,
        "statuses": raw.get("statuses"), "acked_statements": len(acked),
        "achieved_rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "client_p50_ms": raw["p50_us"] / 1000, "client_p99_ms": raw["p99_us"] / 1000,
        "client_max_ms": raw["max_us"] / 1000,
        "client_late_p99_ms": raw.get("late_p99_us", 0.0) / 1000,
        "samples": len(during), "sample_errors": sampler.errors,
        "lag_max_s": max((t["lag_max_s"] or 0.0 for t in per_target.values()), default=None),
        "backlog_max": max((t["backlog_max"] or 0 for t in per_target.values()), default=None),
        "drain_after_load_s": None if drained_at is None else max(0.0, drained_at - load_end),
        "targets": per_target,
        "storage_delivery": delivery["storage"],
        "exactly_once": all(d["exactly_once"] for d in delivery.values()),
        "gateway_cpu": cpu["servers"].get(gateway.name, 0.0),
        "other_cpu": cpu["other"], "other_processes": cpu["others"],
        "timeline": [(round(t, 2), {n: (s["backlog"], s["oldest_age"]) for n, s in st.items()})
                     for t, st in sampler.samples],
    }
    print_lag(result)
    return result


def run_half_load(bench: Bench, stub: Server, gateway: Server, one_file: Path,
                  max_rps: float, baseline: Server | None = None) -> dict[str, Any]:
    """The latency the gateway adds at 50% of its peak: (a), (b) and (c) at one rate.

    The baseline proxy at the same rate tells what any aiohttp proxy adds on this machine.
    """
    rate = max(1.0, round(0.5 * max_rps))
    print(f"\nadded latency at 50% load: {rate:.0f} req/s open loop, {bench.args.duration} s, "
          "direct (a), the baseline proxy (b), then the gateway (c)", flush=True)
    figures: dict[str, Any] = {"rate": rate}
    runs = [("a", stub), *([("b", baseline)] if baseline is not None else []), ("c", gateway)]
    for key, server in runs:
        bench.quiet()
        watch = Watch(bench)
        done = subprocess.run(
            bench.loadgen_command(server.url + "statements", one_file, connections=64,
                                  duration=bench.args.duration, extra=["--rate", str(rate)]),
            capture_output=True, text=True, timeout=bench.args.duration + 60, check=False)
        cpu = watch.stop()
        raw = loadgen_result(done.stdout, done.stderr, done.returncode)
        figures[key] = {"p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
                        "max_ms": raw["max_us"] / 1000, "answered": raw["requests"],
                        "errors": raw["status_errors"] + raw["timeout_errors"],
                        "other_cpu": cpu["other"]}
        print(f"  ({key}) p50 {figures[key]['p50_ms']:.2f} ms  p99 {figures[key]['p99_ms']:.2f} ms"
              f"  (other load {cpu['other'] * 100:.0f}%"
              f"{' (!)' if cpu['other'] > DISTURBED else ''})", flush=True)
    figures["added_p99_ms"] = figures["c"]["p99_ms"] - figures["a"]["p99_ms"]
    figures["added_p50_ms"] = figures["c"]["p50_ms"] - figures["a"]["p50_ms"]
    if "b" in figures:
        figures["baseline_added_p99_ms"] = figures["b"]["p99_ms"] - figures["a"]["p99_ms"]
        print(f"  added by the baseline proxy at the same rate: p99 "
              f"+{figures['baseline_added_p99_ms']:.2f} ms", flush=True)
    print(f"  added by the gateway at 50% load: p50 +{figures['added_p50_ms']:.2f} ms, "
          f"p99 +{figures['added_p99_ms']:.2f} ms (target <= 2 ms)", flush=True)
    return figures


# -- bcrypt flood ------------------------------------------------------------------------


def run_flood(bench: Bench, key: str, stub: Server, one_file: Path,
              undisturbed: dict[str, Any] | None) -> dict[str, Any]:
    """(c)'s valid cached requests while a flood of wrong passwords runs alongside."""
    args = bench.args
    label, lockout, same_address = FLOOD_VARIANTS[key]
    users = [{"username": f"{key}-user-{i}", "hash": bcrypt_hash(f"{key}-secret-{i}"),
              "scopes": ["all"],
              "agent": {"objectType": "Agent", "mbox": f"mailto:{key}-{i}@example.com"}}
             for i in range(FLOOD_USERS)]
    overrides: dict[str, Any] = {} if lockout else {"lockout": {"enabled": False}}
    gateway, _ = bench.start_gateway(f"gateway-{key}".replace("_", "-"), stub,
                                     overrides=overrides, users=users)
    try:
        # Wrong passwords: half for usernames that exist, half for unknown ones (those pay
        # the same bcrypt time); every value distinct, so nothing is ever cached.
        lines = [basic(f"{key}-user-{i % FLOOD_USERS}", f"wrong-{i}") if i % 2 == 0
                 else basic(f"{key}-nobody-{i}", f"wrong-{i}") for i in range(4000)]
        auth_file = bench.tmp / f"{key}-auth.txt"
        auth_file.write_text("\n".join(lines) + "\n")
        source = "127.0.0.1" if same_address else "127.0.0.2"
        post_once(bench, gateway, stub, one_file.read_bytes(), [statement()["id"]])
        bench.quiet()
        flood = subprocess.Popen(
            bench.loadgen_command(gateway.url + "statements", one_file,
                                  connections=args.flood_connections,
                                  duration=args.warmup + args.duration + 30,
                                  extra=["--auth-file", str(auth_file),
                                         "--source-address", source]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        flood_started = time.monotonic()
        time.sleep(1.0)  # the bcrypt queue fills at once; give the flood a second anyway

        pid = gateway.process.pid

        def before() -> tuple[list[tuple[str, dict[str, str], float]], dict[int, float], float]:
            return scrape(gateway), thread_cpu(pid), time.perf_counter()

        def after(first: tuple[list[tuple[str, dict[str, str], float]], dict[int, float],
                               float]) -> dict[str, Any]:
            last = scrape(gateway)
            threads = thread_cpu(pid)
            seconds = time.perf_counter() - first[2]
            used = {tid: (end - first[1].get(tid, 0.0)) / seconds
                    for tid, end in threads.items()}

            def delta(name: str, **labels: str) -> float:
                return metric(last, name, **labels) - metric(first[0], name, **labels)
            checks = delta("lrs_gateway_bcrypt_duration_seconds_count")
            return {"flood_window": {
                "seconds": seconds,
                # The gateway's threads: the event loop (main) and the others (the bcrypt
                # pool's worker, mostly), in shares of a core.
                "loop_thread_cpu": used.get(pid, 0.0),
                "other_threads_cpu": sum(v for tid, v in used.items() if tid != pid),
                "bcrypt_checks": checks, "bcrypt_checks_per_s": checks / seconds,
                "bcrypt_mean_s": (delta("lrs_gateway_bcrypt_duration_seconds_sum") / checks
                                  if checks else None),
                "auth_bad_credentials": delta("lrs_gateway_auth_attempts_total",
                                              result="bad_credentials"),
                "auth_error_503": delta("lrs_gateway_auth_attempts_total", result="error"),
                "answers_by_class": {
                    cls: delta("lrs_gateway_requests_total", status_class=cls)
                    for cls in ("2xx", "4xx", "5xx")},
            }}

        result = bench.measure(f"({key}) {label}", gateway, one_file, stub, quiet=False,
                               companions={"flood": flood.pid}, before_run=before,
                               after_run=after)
        flood.terminate()
        out, err = flood.communicate(timeout=30)
        flood_seconds = time.monotonic() - flood_started
        raw = loadgen_result(out, err, flood.returncode)
        statuses = {int(k): v for k, v in raw.get("statuses", {}).items()}
        total = sum(statuses.values())
        result["flood"] = {
            "connections": args.flood_connections, "source_address": source,
            "lockout": lockout, "seconds": flood_seconds, "answers": total,
            "answers_per_s": total / flood_seconds,
            "401": statuses.get(401, 0), "503": statuses.get(503, 0),
            "429": statuses.get(429, 0),
            "other": {k: v for k, v in statuses.items() if k not in (401, 503, 429)},
            "timed_out_10s": raw["timeout_errors"],
            "errors": sum(raw[k] for k in ("connect_errors", "read_errors", "timeout_errors")),
            "cpu": result["companions_cpu"].get("flood"),
        }
        if undisturbed:
            result["ratio_to_c"] = result["rps"] / undisturbed["rps"]
        return result
    finally:
        bench.stop(gateway.name)


# -- memory -----------------------------------------------------------------------------


def run_rss(bench: Bench, stub: Server, targets: Server, target_ports: list[int],
            batch_template: Path) -> dict[str, Any]:
    """A fresh forwarding gateway; RSS while N statements go through it."""
    args = bench.args
    total, every = args.rss_statements, args.rss_sample_every
    requests = max(1, total // BATCH_SIZE)
    print(f"\nmemory: {requests * BATCH_SIZE} statements in batches of {BATCH_SIZE} through a "
          f"fresh gateway forwarding to 3 targets; VmRSS every {every} statements", flush=True)
    gateway, _ = bench.start_gateway("gateway-rss", stub,
                                     overrides=forwarding_overrides(target_ports))
    target_bases = [f"http://127.0.0.1:{port}/" for port in target_ports]
    try:
        forwarding_status(gateway)  # the admin credential into the cache
        for base in (stub.base, *target_bases):
            stub_reset(base, "count")
        started_rss = vm_status(gateway.process.pid)
        bench.quiet()
        command = bench.loadgen_command(
            gateway.url + "statements", batch_template, connections=8, duration=3600,
            extra=["--requests", str(requests), "--unique-ids", "--progress-every",
                   str(every)])
        samples: list[dict[str, Any]] = []
        watch = Watch(bench)
        started = time.monotonic()
        load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        assert load.stdout is not None
        out_lines = []
        for line in load.stdout:
            out_lines.append(line)
            if line.startswith("PROGRESS "):
                status = forwarding_status(gateway)
                samples.append({"statements": int(line.split()[1]),
                                "seconds": time.monotonic() - started,
                                **vm_status(gateway.process.pid),
                                "backlog": sum(t["backlog"] for t in status.values())})
        err = load.stderr.read() if load.stderr is not None else ""
        load.wait()
        load_seconds = time.monotonic() - started
        raw = loadgen_result("".join(out_lines), err, load.returncode)
        drained = wait_drained(gateway, args.drain_timeout)
        cpu = watch.stop()
        after_drain = vm_status(gateway.process.pid)
        left = forwarding_status(gateway)  # what the drain wait did not see delivered
        received = {name: stub_ids(base) for name, base in
                    (("storage", stub.base), *zip(TARGETS, target_bases, strict=True))}
        for base in (stub.base, *target_bases):
            stub_reset(base, "off")
        data_dir = bench.tmp / "gateway-rss" / "data"
        outbox_bytes = sum(p.stat().st_size for p in data_dir.glob("*") if p.is_file())
    finally:
        bench.stop(gateway.name)
    points = [(s["statements"] / 100_000, s["VmRSS"] / 1024) for s in samples if "VmRSS" in s]
    second_half = points[len(points) // 2:]
    tenth = next((p for p in points if p[0] * 100_000 >= total / 10), points[0] if points else None)
    last = points[-1] if points else None
    result = {
        "statements": raw["acked_statements"], "requests": raw["requests"],
        "errors": raw["status_errors"] + raw["read_errors"] + raw["timeout_errors"],
        "statements_per_s": raw["acked_statements"] / load_seconds,
        "rss_before_kb": started_rss.get("VmRSS"), "rss_after_drain_kb": after_drain.get("VmRSS"),
        "backlog_after_drain": sum(t["backlog"] for t in left.values()),
        "dead_letters_after_drain": sum(t["dead_letters"] for t in left.values()),
        "hwm_kb": after_drain.get("VmHWM"),
        "samples": samples,
        "slope_mb_per_100k": slope(points),
        "slope_second_half_mb_per_100k": slope(second_half),
        "growth_first_to_last": (last[1] / points[0][1] - 1) if points and last else None,
        "growth_from_10pct_to_last": (last[1] / tenth[1] - 1) if tenth and last else None,
        "backlog_max": max((s["backlog"] for s in samples), default=None),
        "drain_after_load_s": drained,
        "received": received,
        "every_target_got_all": all(r["statements"] >= raw["acked_statements"]
                                    for r in received.values()),
        "outbox_bytes_after": outbox_bytes,
        "gateway_cpu": cpu["servers"].get("gateway-rss", 0.0),
        "other_cpu": cpu["other"], "other_processes": cpu["others"],
    }
    print_rss(result)
    return result


@contextlib.contextmanager
def running(bench: Bench) -> Iterator[None]:
    try:
        yield
    finally:
        bench.stop_all()


def pick_loadgen(choice: str) -> str:
    if choice in ("auto", "wrk") and shutil.which("wrk"):
        return "wrk"
    if choice == "wrk":
        sys.exit("bench: --loadgen wrk but wrk is not installed")
    return "asyncio"


def event_loop_of(src: Path) -> str:
    """The loop the gateway's `serve` runs on: uvloop when it is installed (cli._tune_runtime)."""
    cli = (src / "gateway" / "cli.py").read_text()
    if "uvloop" not in cli:
        return "asyncio"
    done = subprocess.run([sys.executable, "-c", "import uvloop"], capture_output=True,
                          check=False)
    return "uvloop" if done.returncode == 0 else "asyncio"


def profile_stacks(raw_file: Path, top: int) -> dict[str, Any]:
    """Self and inclusive shares of the event loop's samples, by function (py-spy raw output).

    Only stacks of the event-loop thread count: the main thread's, i.e. every stack not
    rooted in threading's `Thread._bootstrap`. (In this VM py-spy's idle detection fails and
    would count the thread pools waiting for work, `_worker` blocked in queue.get, as busy;
    their samples are reported apart.) With asyncio the loop's stacks pass through
    `BaseEventLoop._run_once`; with uvloop (the gateway's loop when installed) the loop is C
    code, callbacks hang straight under `run_app`, and a sample whose innermost Python frame
    is the loop's entry (`run_app`, `run_until_complete`, a selector's `select`) was inside
    the loop itself: its C code (uvloop: socket I/O, its own scheduling) or its idle wait,
    which py-spy cannot tell apart here: `loop_internal_samples`.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = other = internal = 0
    through_run_once = False
    for line in raw_file.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        if frames[0].startswith(("Thread._bootstrap ", "_bootstrap ")):
            other += count
            continue
        total += count
        through_run_once = through_run_once or any(
            f.startswith("BaseEventLoop._run_once ") for f in frames)
        if frames[-1].startswith(LOOP_ENTRY_FRAMES):
            internal += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "loop_samples": total,
        "loop_internal_samples": internal,
        "loop_kind": "asyncio" if through_run_once else "uvloop (or another C loop)",
        "other_thread_samples": other,
        "self": [(n, c / total) for n, c in own.most_common(top)] if total else [],
        "inclusive": [(n, c / total) for n, c in inclusive.most_common(top)] if total else [],
    }


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`, so lines of one function add up."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def profile(bench: Bench, server: Server, body_file: Path, py_spy: str,
            out_dir: Path, stem: str, authorization: str | None = None) -> dict[str, Any]:
    raw_file = out_dir / f"{stem}-profile-{server.name}-{body_file.stem}.txt"
    seconds = max(3, int(bench.args.duration))
    spy = subprocess.Popen([py_spy, "record", "--pid", str(server.process.pid), "--rate", "250",
                            "--duration", str(seconds), "--format", "raw", "--output",
                            str(raw_file)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    time.sleep(0.5)
    raw = bench.load(server.url + "statements", body_file, seconds, authorization)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw_file.exists():
        print(f"bench: py-spy failed: {err.decode(errors='replace')[-500:]}")
        return {}
    stacks = profile_stacks(raw_file, bench.args.profile_top)
    print(f"\nprofile of {server.name}, {body_file.stem} body: {raw['requests']} requests under "
          f"py-spy, {stacks['loop_samples']} event-loop samples ({stacks['loop_kind']}; "
          f"{stacks['loop_internal_samples']} inside the loop's own code or idle) "
          f"(+{stacks['other_thread_samples']} in other threads, left out); raw stacks in "
          f"{raw_file.relative_to(REPO) if raw_file.is_relative_to(REPO) else raw_file}")
    for kind in ("self", "inclusive"):
        print(f"  top {kind}:")
        shown = [(n, v) for n, v in stacks[kind]
                 if kind == "self" or not n.startswith(OUTER_FRAMES)]
        for name, share in shown:
            print(f"    {share * 100:5.1f}%  {name}")
    return {"raw_file": str(raw_file.relative_to(REPO) if raw_file.is_relative_to(REPO)
                            else raw_file), **stacks}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "asyncio"], default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--no-batch", action="store_true", help="skip the 100-statement runs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the throughput runs, interleaved; report each setup's "
                             "median over its undisturbed rounds")
    parser.add_argument("--quiet-wait", type=float, default=10.0, metavar="SECONDS",
                        help="before each run, wait up to this long for the machine's other "
                             "load to drop under 25%% of a core (0: do not wait)")
    parser.add_argument("--quiet-budget", type=float, default=30.0, metavar="SECONDS",
                        help="at most this long in all for those waits (beyond it, 1 s each), "
                             "so a busy machine does not double the bench's time")
    parser.add_argument("--no-token", action="store_true", help="skip (d), the bearer token")
    parser.add_argument("--no-workers", action="store_true",
                        help="skip (f), the gateway with 2 worker processes")
    parser.add_argument("--no-forwarding", action="store_true",
                        help="skip (e) and the forwarding lag run")
    parser.add_argument("--no-lag", action="store_true", help="skip the forwarding lag run")
    parser.add_argument("--lag-duration", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--lag-fraction", type=float, default=0.6,
                        help="the lag run's constant rate, as a share of (e)'s max req/s")
    parser.add_argument("--drain-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for forwarding backlogs to reach 0")
    parser.add_argument("--no-flood", action="store_true", help="skip the bcrypt-flood runs")
    parser.add_argument("--flood-variants", default=",".join(FLOOD_VARIANTS),
                        help=f"comma-separated, among {', '.join(FLOOD_VARIANTS)}")
    parser.add_argument("--flood-connections", type=int, default=128,
                        help="the flood's connections (the bcrypt queue admits 64)")
    parser.add_argument("--half-load", action="store_true",
                        help="also measure the latency added over direct at 50%% of (c)'s "
                             "peak (open loop; 2 more runs)")
    parser.add_argument("--no-rss", action="store_true", help="skip the memory run")
    parser.add_argument("--rss-statements", type=int, default=100_000,
                        help="statements through the gateway in the memory run (issue: 1M)")
    parser.add_argument("--rss-sample-every", type=int, default=10_000, metavar="STATEMENTS")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the gateway's POST path with py-spy (after the runs)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    parser.add_argument("--gateway-commit", metavar="REV",
                        help="run the gateway of this commit (git archive into a temporary "
                             "directory) instead of the work tree's")
    args = parser.parse_args()
    unknown = set(args.flood_variants.split(",")) - set(FLOOD_VARIANTS) - {""}
    if unknown:
        parser.error(f"--flood-variants: unknown {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
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
    print(f"bench: gateway of {commit}{' (work tree, with local changes)' if dirty else ''}; "
          "load generator "
          f"{loadgen}{fallback};"
          f" {args.connections} connections; {args.duration:g} s per run after "
          f"{args.warmup:g} s warm-up; "
          + ("pinned: load generators + stubs on CPU 0, proxy on CPU 1" if pin else
             "NOT pinned (no taskset or < 2 CPUs)"), flush=True)

    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="lrs-gateway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        single = statement()
        batch = [statement(i) for i in range(1, BATCH_SIZE + 1)]
        one_file, batch_file = tmp / "one.json", tmp / "batch100.json"
        one_file.write_bytes(json.dumps(single, ensure_ascii=False).encode())
        batch_file.write_bytes(json.dumps(batch, ensure_ascii=False).encode())
        one_template, batch_template = tmp / "one-template.json", tmp / "batch-template.json"
        one_template.write_bytes(statement_template())
        batch_template.write_bytes(statement_template(BATCH_SIZE))

        src = REPO
        if args.gateway_commit:
            src = tmp / "src"
            src.mkdir()
            archive = subprocess.run(["git", "archive", args.gateway_commit, "gateway"],
                                     cwd=REPO, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        bench = Bench(args, tmp, pin, loadgen, src, quiet_left=args.quiet_budget)
        want_workers = not args.no_workers and has_workers_option(src)
        can = supports(src)
        loop_kind = event_loop_of(src)
        want_token = not args.no_token and can["token"]
        want_forwarding = not args.no_forwarding and can["forwarding"]
        want_lag = want_forwarding and not args.no_lag
        want_rss = not args.no_rss and can["forwarding"]
        flood_keys = [] if args.no_flood else [k for k in args.flood_variants.split(",") if k]
        if not can["lockout"]:
            flood_keys = []  # the flood gateways are configured through `lockout`
        for key, wanted, why in (
            ("d", want_token, "--no-token" if args.no_token else "no token backend"),
            ("e", want_forwarding,
             "--no-forwarding" if args.no_forwarding else "no forwarding"),
            ("forwarding_lag", want_lag, "--no-lag / --no-forwarding"),
            ("f", want_workers,
             "--no-workers" if args.no_workers else "this gateway has no --workers"),
            ("rss", want_rss, "--no-rss" if args.no_rss else "no forwarding"),
            ("bcrypt_flood", bool(flood_keys),
             "--no-flood" if args.no_flood else "no lockout settings in this gateway"),
        ):
            if not wanted:
                skipped[key] = f"skipped ({why})"

        with running(bench):
            py = sys.executable
            stub_port = free_port()
            stub = bench.start("stub", [py, str(BENCH / "stub_lrs.py"), "--port", str(stub_port)],
                               0, f"http://127.0.0.1:{stub_port}/xAPI/",
                               f"http://127.0.0.1:{stub_port}/_bench/count")
            target_ports = [free_port() for _ in TARGETS]
            targets = None
            if want_forwarding or want_rss:
                targets = bench.start(
                    "targets", [py, str(BENCH / "stub_lrs.py"),
                                *(a for p in target_ports for a in ("--port", str(p)))],
                    0, f"http://127.0.0.1:{target_ports[0]}/xAPI/",
                    f"http://127.0.0.1:{target_ports[-1]}/_bench/count")
            base_port = free_port()
            baseline = bench.start(
                "baseline", [py, str(BENCH / "baseline_proxy.py"), "--port", str(base_port),
                             "--upstream", stub.url, "--username", USERNAME, "--password",
                             PASSWORD, "--agent", json.dumps(AGENT)],
                1, f"http://127.0.0.1:{base_port}/xAPI/", f"http://127.0.0.1:{base_port}/")
            gateways = {}
            for name, level in (("gateway", "INFO"), ("gateway-quiet", "WARNING")):
                gateways[name], _ = bench.start_gateway(name, stub, level=level)
            token = None
            if want_token:
                secret = secrets.token_urlsafe(48)  # 64 characters, HS256
                gateways["gateway-token"], token_config = bench.start_gateway(
                    "gateway-token", stub, overrides={"auth": {
                        "backends": ["basic", "token"], "tokens": {"secret": secret}}})
                token = "Bearer " + issue_token(bench, token_config)
            if want_workers:
                gateways["gateway-2w"], _ = bench.start_gateway("gateway-2w", stub, workers=2)
            if want_forwarding:
                gateways["gateway-fwd"], _ = bench.start_gateway(
                    "gateway-fwd", stub, overrides=forwarding_overrides(target_ports))
            auth_of = {"gateway-token": token}

            ids_one = [single["id"]]
            ids_batch = [s["id"] for s in batch]
            for server in (stub, baseline, *gateways.values()):
                post_once(bench, server, stub, one_file.read_bytes(), ids_one,
                          auth_of.get(server.name))
                post_once(bench, server, stub, batch_file.read_bytes(), ids_batch,
                          auth_of.get(server.name))
            if want_forwarding:
                if wait_drained(gateways["gateway-fwd"], 30) is None:
                    sys.exit("bench: gateway-fwd did not forward the first statements")
                for port in target_ports:
                    got = stub_ids(f"http://127.0.0.1:{port}/")
                    if got["writes"] < 1:
                        sys.exit(f"bench: the target on port {port} received nothing")

            print("\nmeasuring (each: warm-up, then the measured run):", flush=True)
            plan = [
                ("a", "direct to stub", stub, one_file),
                ("b", "baseline proxy", baseline, one_file),
                ("c", "gateway, cached Basic", gateways["gateway"], one_file),
                ("c_quiet", "gateway, cached Basic, log WARNING", gateways["gateway-quiet"],
                 one_file),
            ]
            if want_token:
                plan.append(("d", "gateway, bearer gateway token", gateways["gateway-token"],
                             one_file))
            if want_forwarding:
                plan.append(("e", "gateway, 3 forwarding targets", gateways["gateway-fwd"],
                             one_file))
            if want_workers:
                plan.append(("f", "gateway, 2 worker processes", gateways["gateway-2w"],
                             one_file))
            if not args.no_batch:
                plan += [
                    ("a_batch", "direct to stub, batch 100", stub, batch_file),
                    ("b_batch", "baseline proxy, batch 100", baseline, batch_file),
                    ("c_batch", "gateway, batch 100", gateways["gateway"], batch_file),
                ]
                if want_forwarding:
                    plan.append(("e_batch", "gateway, 3 forwarding targets, batch 100",
                                 gateways["gateway-fwd"], batch_file))
                if want_workers:
                    plan.append(("f_batch", "gateway, 2 worker processes, batch 100",
                                 gateways["gateway-2w"], batch_file))
            rounds: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in plan}
            for number in range(args.rounds):
                if args.rounds > 1:
                    print(f" round {number + 1} of {args.rounds}", flush=True)
                for key, label, server, body in plan:
                    forwarding = server.name == "gateway-fwd"
                    result = bench.measure(
                        f"({key}) {label}", server, body, stub,
                        authorization=auth_of.get(server.name),
                        after_run=forwarding_probe(server) if forwarding else None)
                    if forwarding:
                        # The next run must find an idle gateway: wait for the backlog.
                        result["drain_after_load_s"] = wait_drained(server, args.drain_timeout)
                        print(f"    backlog at the end {result['backlog_at_end']}, drained "
                              f"in {fmt_s(result['drain_after_load_s'])}", flush=True)
                    rounds[key].append(result)
            results = {key: median_result(runs) for key, runs in rounds.items()}

            half: dict[str, Any] | None = None
            if args.half_load and "c" in results:
                half = run_half_load(bench, stub, gateways["gateway"], one_file,
                                     results["c"]["rps"], baseline)
            lag: dict[str, Any] | None = None
            if want_lag and targets is not None:
                lag = run_lag(bench, gateways["gateway-fwd"], stub, targets, target_ports,
                              results["e"]["rps"], one_template)
            if flood_keys:
                print("\nbcrypt flood (valid cached Basic, as (c), while another client "
                      f"floods wrong passwords with {args.flood_connections} connections):",
                      flush=True)
                for key in flood_keys:
                    results[key] = run_flood(bench, key, stub, one_file, results.get("c"))
                print_flood(results, flood_keys)
            rss: dict[str, Any] | None = None
            if want_rss and targets is not None:
                rss = run_rss(bench, stub, targets, target_ports, batch_template)

            stem = f"{commit}-{started_at.strftime('%Y%m%dT%H%M%SZ')}"
            results_dir = Path(args.results_dir)
            results_dir.mkdir(parents=True, exist_ok=True)
            profiles = {}
            if args.profile:
                if shutil.which(args.py_spy) is None and not Path(args.py_spy).exists():
                    print("bench: --profile but py-spy not found (bash bench/run.sh --profile "
                          "installs it)")
                else:
                    targets_of_profile = [(gateways["gateway"], one_file), (baseline, one_file)]
                    if not args.no_batch:
                        targets_of_profile.append((gateways["gateway"], batch_file))
                    if want_token:
                        targets_of_profile.append((gateways["gateway-token"], one_file))
                    if want_forwarding:
                        targets_of_profile.append((gateways["gateway-fwd"], one_file))
                    for server, body in targets_of_profile:
                        profiles[f"{server.name}-{body.stem}"] = profile(
                            bench, server, body, args.py_spy, results_dir, stem,
                            auth_of.get(server.name))
            data_fs = filesystem_of(tmp)

    ratios = compute_ratios(results)
    not_measured = {**NOT_MEASURED, **skipped}
    if half is not None:
        del not_measured["added_p99_at_50pct_load"]
    checks = target_checks(results, ratios, lag, rss, half)
    print_table(results, ratios, not_measured)
    print_targets(checks)
    report = {
        "commit": commit,
        "gateway_source": "work tree" if src == REPO else f"git archive {args.gateway_commit}",
        "local_changes": dirty,
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_seconds": time.monotonic() - wall_start,
        "machine": {"cpus": cpus, "python": platform.python_version(),
                    "platform": platform.platform(), "aiohttp": _version("aiohttp")},
        "settings": {"loadgen": loadgen, "wrk_threads": args.threads,
                     "connections": args.connections, "duration_s": args.duration,
                     "warmup_s": args.warmup, "rounds": args.rounds,
                     "quiet_wait_s": args.quiet_wait, "quiet_budget_s": args.quiet_budget,
                     "pinned": pin,
                     "pinning": "loadgens+stubs CPU 0, proxy CPU 1" if pin else None,
                     "statement_bytes": one_file_size(single), "batch_size": BATCH_SIZE,
                     "gateway_event_loop": loop_kind, "data_dir_filesystem": data_fs,
                     "lag_fraction": args.lag_fraction, "lag_duration_s": args.lag_duration,
                     "flood_connections": args.flood_connections,
                     "flood_variants": flood_keys, "rss_statements": args.rss_statements,
                     "half_load": args.half_load,
                     "rss_sample_every": args.rss_sample_every,
                     "rate_limits": NO_RATE_LIMITS},
        "results": results,
        "ratios": ratios,
        "targets": checks,
        "forwarding_lag": lag,
        "half_load": half,
        "rss": rss,
        "not_measured": not_measured,
        "profiles": profiles,
    }
    out = results_dir / f"{stem}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out.relative_to(REPO) if out.is_relative_to(REPO) else out} "
          f"(the whole bench took {report['wall_seconds']:.0f} s)")


def filesystem_of(path: Path) -> str:
    done = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True,
                          check=False)
    lines = done.stdout.split()
    return lines[-1] if done.returncode == 0 and lines else "?"


def fmt_s(value: float | None) -> str:
    return "not within the timeout" if value is None else f"{value:.2f} s"


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput among the undisturbed rounds (all rounds when
    every one was disturbed), with every round's figures beside it."""
    calm = [r for r in runs if r["other_cpu"] <= DISTURBED] or runs
    chosen = dict(sorted(calm, key=lambda r: r["rps"])[(len(calm) - 1) // 2])
    if len(runs) > 1:
        chosen["rounds"] = [{k: r[k] for k in ("rps", "p50_ms", "p99_ms", "other_cpu")}
                            for r in runs]
    return chosen


def one_file_size(single: dict[str, Any]) -> int:
    return len(json.dumps(single, ensure_ascii=False).encode())


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "?"


def compute_ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
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
    ratio("f_batch/c_batch", "f_batch", "c_batch")
    for key in FLOOD_VARIANTS:
        ratio(f"{key}/c", key, "c")
    for key in ("b", "c", "c_quiet", "d", "e", "b_batch", "c_batch", "e_batch"):
        direct = "a_batch" if key.endswith("batch") else "a"
        if key in results and direct in results:
            ratios[f"added_over_{direct}[{key}]"] = {
                "p50_ms": results[key]["p50_ms"] - results[direct]["p50_ms"],
                "p99_ms": results[key]["p99_ms"] - results[direct]["p99_ms"],
            }
    return ratios


def target_checks(results: dict[str, dict[str, Any]], ratios: dict[str, Any],
                  lag: dict[str, Any] | None, rss: dict[str, Any] | None,
                  half: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's targets, with the figure this run measured and whether it is met."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, met: bool | None,
            note: str = "") -> None:
        checks.append({"name": name, "value": value, "target": target, "met": met,
                       "note": note})

    for name, key, limit in (("c/b", "c/b", 1.0), ("d/c", "d/c", 0.9), ("e/c", "e/c", 0.75),
                             ("f/c", "f/c", 1.6)):
        if key in ratios:
            note = ("workers on CPUs 0-1, sharing CPU 0 with the load generator and the stub; "
                    "(c) has CPU 1 alone" if key == "f/c" else "")
            add(name, ratios[key], TARGETS_OF_ISSUE[name], ratios[key] >= limit, note)
    for key in FLOOD_VARIANTS:
        if f"{key}/c" in ratios:
            add(f"{key}/c", ratios[f"{key}/c"], TARGETS_OF_ISSUE["flood/c"],
                ratios[f"{key}/c"] >= 0.8)
    if half is not None:
        add("added p99 at 50% load", half["added_p99_ms"], "<= 2 ms",
            half["added_p99_ms"] <= 2.0, f"at {half['rate']:.0f}/s, open loop")
    if lag is not None:
        worst = max((t["lag_p99_s"] or 0.0 for t in lag["targets"].values()), default=None)
        add("lag p99 (worst target)", worst, TARGETS_OF_ISSUE["lag_p99_s"],
            None if worst is None else worst <= 1.0,
            f"at {lag['rate']:.0f}/s, {lag['fraction_of_e']:.0%} of (e); "
            "sampled every 0.5 s")
        add("forwarded exactly once", None, "every acked statement, once, everywhere",
            lag["exactly_once"])
    if rss is not None:
        growth = rss["growth_from_10pct_to_last"]
        add("RSS growth (10% of N -> N)", growth, TARGETS_OF_ISSUE["rss_growth"],
            None if growth is None else growth <= 0.10, f"N = {rss['statements']}")
    return checks


def has_workers_option(src: Path) -> bool:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--help"], cwd=src,
                          env=env, capture_output=True, text=True, check=False)
    return "--workers" in done.stdout


def print_table(results: dict[str, dict[str, Any]], ratios: dict[str, Any],
                not_measured: dict[str, str]) -> None:
    print("\n| setup | req/s | statements/s | p50 ms | p99 ms | server CPU | stub CPU "
          "| loadgen CPU | other load | steal CPU0 / CPU1 | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for result in results.values():
        per = BATCH_SIZE if "batch" in result["setup"] else 1
        stub_cpu = "" if result["stub_cpu"] is None else f"{result['stub_cpu'] * 100:.0f}%"
        steal = " / ".join(f"{u['steal'] * 100:.0f}%" for u in result["machine_cpu"].values())
        loadgen_cpu = result["loadgen_cpu"] + sum(result.get("companions_cpu", {}).values())
        print(f"| {result['setup']} | {result['rps']:.0f} | {result['rps'] * per:.0f} "
              f"| {result['p50_ms']:.2f} | {result['p99_ms']:.2f} "
              f"| {result['server_cpu'] * 100:.0f}% | {stub_cpu} "
              f"| {loadgen_cpu * 100:.0f}% | {result['other_cpu'] * 100:.0f}%"
              f"{' (!)' if result['other_cpu'] > DISTURBED else ''} | {steal} "
              f"| {result['errors']} |")
    print("(CPU: share of one core during the run; loadgen CPU includes the flood's; "
          "'other load': CPU used on the machine by anything but the bench's processes: when "
          "high, the run was disturbed; steal: time the hypervisor took from each vCPU; (!) "
          f"marks other load > {DISTURBED * 100:.0f}%)")
    if any(r["errors"] for r in results.values()):
        print("WARNING: some runs had errors (see above): their req/s count good answers only,"
              " and their latencies include the errors")
    print("\nratios (throughput, or p99 where it says so):")
    targets = {"c/b": TARGETS_OF_ISSUE["c/b"], "d/c": TARGETS_OF_ISSUE["d/c"],
               "e/c": TARGETS_OF_ISSUE["e/c"],
               **{f"{k}/c": TARGETS_OF_ISSUE["flood/c"] for k in FLOOD_VARIANTS}}
    for name, value in ratios.items():
        if isinstance(value, float):
            note = f"   (target {targets[name]})" if name in targets else ""
            print(f"  {name:<30} {value:5.2f}x{note}")
    print("latency added over direct (a), at saturation (closed loop, all connections busy):")
    for name, value in ratios.items():
        if isinstance(value, dict):
            print(f"  {name:<26} p50 +{value['p50_ms']:.2f} ms   p99 +{value['p99_ms']:.2f} ms")
    print("not measured:")
    for key, why in not_measured.items():
        print(f"  ({key}) {why}")


def print_lag(lag: dict[str, Any]) -> None:
    print(f"  open loop: {lag['answered']} of {lag['scheduled']} scheduled answered "
          f"({lag['achieved_rps']:.0f}/s), errors {lag['errors']}, client p50 "
          f"{lag['client_p50_ms']:.2f} ms, p99 {lag['client_p99_ms']:.2f} ms (from the "
          f"scheduled time); other load {lag['other_cpu'] * 100:.0f}%"
          f"{' (!)' if lag['other_cpu'] > DISTURBED else ''}; gateway CPU "
          f"{lag['gateway_cpu'] * 100:.0f}%")
    print("\n| target | lag p95 s | lag p99 s | lag max s | backlog max | received "
          "| distinct | duplicates | missing | exactly once |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"
    for name, figures in lag["targets"].items():
        d = figures["delivery"]
        print(f"| {name} | {fmt(figures['lag_p95_s'])} | {fmt(figures['lag_p99_s'])} "
              f"| {fmt(figures['lag_max_s'])} | {figures['backlog_max']} | {d['statements']} "
              f"| {d['distinct']} | {d['duplicates']} | {d['missing']} "
              f"| {'yes' if d['exactly_once'] else 'NO'} |")
    d = lag["storage_delivery"]
    print(f"| (storage) | | | | | {d['statements']} | {d['distinct']} | {d['duplicates']} "
          f"| {d['missing']} | {'yes' if d['exactly_once'] else 'NO'} |")
    print(f"  {lag['acked_statements']} statements acked to the client; every backlog 0 "
          f"{fmt_s(lag['drain_after_load_s'])} after the load stopped; {lag['samples']} "
          f"samples during the load ({lag['sample_errors']} failed)")


def print_flood(results: dict[str, dict[str, Any]], keys: list[str]) -> None:
    print("\n| flood variant | valid req/s | / (c) | valid p99 ms | bcrypt checks/s "
          "| flood answers/s | 401 | 503 | 429 | timed out | flood CPU | gateway loop / "
          "other threads CPU | CPU0 busy | other load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in keys:
        r = results[key]
        flood, window = r["flood"], r["flood_window"]
        ratio = r.get("ratio_to_c")
        cpu0 = r["machine_cpu"].get("cpu0", {}).get("busy")
        print(f"| {key} | {r['rps']:.0f} | {'-' if ratio is None else f'{ratio:.2f}'} "
              f"| {r['p99_ms']:.2f} | {window['bcrypt_checks_per_s']:.1f} "
              f"| {flood['answers_per_s']:.0f} | {flood['401']} | {flood['503']} "
              f"| {flood['429']} | {flood['timed_out_10s']} | {(flood['cpu'] or 0) * 100:.0f}% "
              f"| {window['loop_thread_cpu'] * 100:.0f}% / "
              f"{window['other_threads_cpu'] * 100:.0f}% "
              f"| {'-' if cpu0 is None else f'{cpu0 * 100:.0f}%'} "
              f"| {r['other_cpu'] * 100:.0f}%{' (!)' if r['other_cpu'] > DISTURBED else ''} |")
    print("(401/503/429/timed out (no answer within 10 s): the flood's requests over its whole "
          "life; bcrypt checks/s: the gateway's lrs_gateway_bcrypt_duration_seconds_count over "
          "the measured window; gateway CPU by thread: the event loop's, and the others' (the "
          "bcrypt pool), over the same window, in shares of a core: all on CPU 1 when pinned)")


def print_rss(rss: dict[str, Any]) -> None:
    print("\n| statements | seconds | VmRSS MB | backlog |")
    print("|---:|---:|---:|---:|")
    print(f"| 0 (before) | 0 | {(rss['rss_before_kb'] or 0) / 1024:.1f} | 0 |")
    for s in rss["samples"]:
        print(f"| {s['statements']} | {s['seconds']:.1f} | {s.get('VmRSS', 0) / 1024:.1f} "
              f"| {s['backlog']} |")
    dead = rss.get("dead_letters_after_drain", 0)
    print(f"| after the drain wait | | {(rss['rss_after_drain_kb'] or 0) / 1024:.1f} "
          f"| {rss.get('backlog_after_drain', 0)}"
          f"{f' (+{dead} dead letters: backlog cap, re-queued as it drains)' if dead else ''} |")

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:+.1f}%"

    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:+.2f}"
    received = ", ".join(f"{n} {r['statements']}" for n, r in rss["received"].items())
    print(f"  slope {mb(rss['slope_mb_per_100k'])} MB per 100k statements (second half "
          f"{mb(rss['slope_second_half_mb_per_100k'])}); growth first -> last sample "
          f"{pct(rss['growth_first_to_last'])}, 10% of N -> N "
          f"{pct(rss['growth_from_10pct_to_last'])}"
          f"; {rss['statements_per_s']:.0f} statements/s with forwarding; drained "
          f"{fmt_s(rss['drain_after_load_s'])} after; errors {rss['errors']}; every target got "
          f"every statement: {'yes' if rss['every_target_got_all'] else 'NO'} "
          f"({received}); "
          f"other load {rss['other_cpu'] * 100:.0f}%"
          f"{' (!)' if rss['other_cpu'] > DISTURBED else ''}")


def print_targets(checks: list[dict[str, Any]]) -> None:
    if not checks:
        return
    print("\nthe issue's targets:")
    for check in checks:
        value = check["value"]
        shown = "" if value is None else (f"{value * 100:+.1f}%" if "growth" in check["name"]
                                          else f"{value:.3f}")
        met = {True: "met", False: "MISSED", None: "?"}[check["met"]]
        print(f"  {check['name']:<34} {shown:>8}  target {check['target']:<28} {met}"
              + (f"  ({check['note']})" if check["note"] else ""))


if __name__ == "__main__":
    main()
