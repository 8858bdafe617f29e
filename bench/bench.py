"""Benchmarks of lrs-gateway (issue 8), first slice; run through `bash bench/run.sh`.

    .venv/bin/python bench/bench.py [--duration 10] [--warmup 2] [--connections 16]
                                    [--rounds 1] [--no-batch] [--loadgen auto|wrk|asyncio]
                                    [--no-pin] [--profile --py-spy PATH]

On loopback only, with bounded durations, it starts:
- the stub LRS (bench/stub_lrs.py),
- the baseline proxy (bench/baseline_proxy.py: one ClientSession, parse, set authority),
- the gateway (`python -m gateway serve`), twice: as configured by default (log level INFO,
  so one access log line per request, written to a file) and with `--log-level WARNING`,
  both with one Basic credential (bcrypt cost 10, scope `all`) and storage.url -> stub;
then, with one load generator (wrk if found, else bench/loadgen.py) and the same ~1 KB
statement (and a 100-statement batch), it measures each setup for --duration seconds after
a warm-up (which also puts the Basic credential in the gateway's cache), and prints
requests/s, p50, p99, the CPU each server used, the ratios against the baseline and the
latency added over direct. JSON goes to bench/results/<commit>-<UTC time>.json (with
--profile, py-spy's raw stacks beside it).

This machine is shared and noisy: each run also reports the CPU that processes other than
the bench's used meanwhile ("other load", with the busiest of them) and the hypervisor's
steal; a run with other load above 25% of a core is marked (!). Ratios measured in one run
mean more than absolute figures. Before each run it waits (--quiet-wait, 10 s at most) for
the machine to be nearly idle; --rounds N interleaves N rounds and keeps, per setup, the
median of its undisturbed rounds.

Pinning (when taskset exists and there are >= 2 CPUs), as in the issue's own figures: the
load generator and the stub share CPU 0, the proxy under test has CPU 1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
USERNAME = "bench"
PASSWORD = "bench-password-1"
AGENT = {"objectType": "Agent", "name": "Bench client", "mbox": "mailto:bench@example.com"}
XAPI_VERSION = "1.0.3"
BATCH_SIZE = 100
DISTURBED = 0.25  # other load above this share of a core marks a run as disturbed

NOT_MEASURED = {
    "d": "bearer token (OIDC / gateway token): not in this slice",
    "e": "3 forwarding targets, outbox on: not in this slice",
    "f": "2 worker processes: the gateway has no workers option yet",
    "bcrypt_flood": "not in this slice",
    "forwarding_lag": "not in this slice",
    "rss_1m_statements": "not in this slice",
    "added_p99_at_50pct_load": "needs a constant-rate generator; wrk is closed-loop",
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


def busiest_others(before: dict[tuple[int, str], float], after: dict[tuple[int, str], float],
                   ours: set[int], seconds: float) -> list[tuple[str, float]]:
    """The processes, not the bench's, that used the most CPU between two snapshots."""
    used = [(f"{name}[{pid}]", (end - before.get((pid, name), 0.0)) / seconds)
            for (pid, name), end in after.items() if pid not in ours]
    return sorted((u for u in used if u[1] >= 0.02), key=lambda u: -u[1])[:5]


OUTER_FRAMES = ("_run_code ", "_run_module_as_main ", "<module> ", "main ", "_serve ",
                "run_app ", "BaseEventLoop.run", "Handle._run ", "Thread.")


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    pin: bool
    loadgen: str
    servers: dict[str, Server] = field(default_factory=dict)

    def pinned(self, cpu: int, command: list[str]) -> list[str]:
        return ["taskset", "-c", str(cpu), *command] if self.pin else command

    def start(self, name: str, command: list[str], cpu: int, url: str, ready: str,
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

    def headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        return {"Content-Type": "application/json", "X-Experience-API-Version": XAPI_VERSION,
                "Authorization": f"Basic {token}"}

    def load(self, url: str, body_file: Path, duration: float) -> dict[str, Any]:
        """One closed-loop run of the load generator; its raw figures."""
        if self.loadgen == "wrk":
            script = self.tmp / f"{body_file.stem}.lua"
            lines = [f"local f = io.open({json.dumps(str(body_file))}, 'rb')",
                     "wrk.method = 'POST'", "wrk.body = f:read('*a')", "f:close()"]
            lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                      for k, v in self.headers().items()]
            lines.append(WRK_DONE)
            script.write_text("\n".join(lines) + "\n")
            command = ["wrk", f"-t{self.args.threads}", f"-c{self.args.connections}",
                       f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script), url]
        else:
            command = [sys.executable, str(BENCH / "loadgen.py"), "--url", url, "--body",
                       str(body_file), "--connections", str(self.args.connections),
                       "--duration", str(duration)]
            command += [arg for k, v in self.headers().items()
                        for arg in ("--header", f"{k}: {v}")]
        done = subprocess.run(self.pinned(0, command), capture_output=True, text=True,
                              timeout=duration + 60, check=False)
        for line in done.stdout.splitlines():
            if line.startswith("BENCHJSON "):
                result: dict[str, Any] = json.loads(line[len("BENCHJSON "):])
                return result
        sys.exit(f"bench: the load generator failed ({done.returncode}):\n"
                 f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def wait_for_quiet(self) -> float:
        """Wait (up to --quiet-wait s) until the machine is nearly idle; the load left."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            before = cpu_times()
            time.sleep(1)
            usage = cpu_usage(before, cpu_times())
            busy: float = sum(u["busy"] for u in usage.values())
            if busy <= DISTURBED or time.monotonic() >= deadline:
                return busy

    def measure(self, label: str, server: Server, body_file: Path,
                stub: Server) -> dict[str, Any]:
        url = server.url + "statements"
        if self.args.quiet_wait > 0:
            idle_load = self.wait_for_quiet()
            if idle_load > DISTURBED:
                print(f"  (machine still busy: {idle_load * 100:.0f}% of a core in use by "
                      "others; measuring anyway)", flush=True)
        self.load(url, body_file, self.args.warmup)
        watched = {"server": server.process.pid, "stub": stub.process.pid}
        before = {k: cpu_seconds(pid) for k, pid in watched.items()}
        machine_before = cpu_times()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        processes_before = process_times()
        raw = self.load(url, body_file, self.args.duration)
        processes_after = process_times()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine = cpu_usage(machine_before, cpu_times())
        seconds = raw["duration_us"] / 1e6
        cpu = {k: (cpu_seconds(pid) - before[k]) / seconds for k, pid in watched.items()}
        cpu["loadgen"] = (children.ru_utime + children.ru_stime - children_before.ru_utime
                          - children_before.ru_stime) / seconds
        ours = cpu["server"] + cpu["loadgen"] + (cpu["stub"] if server is not stub else 0.0)
        # CPU used on the machine by anything but the bench's processes (other sessions'
        # test runs, say): when it is high, the run was disturbed. (Approximate: the load
        # generator's time covers its whole life, a little longer than the window.)
        other = max(0.0, sum(u["seconds"] for u in machine.values()) / seconds - ours)
        mine = {os.getpid(), *(s.process.pid for s in self.servers.values())}
        others = busiest_others(processes_before, processes_after, mine, seconds)
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
            "server_cpu": cpu["server"],
            "stub_cpu": cpu["stub"] if server is not stub else None,
            "loadgen_cpu": cpu["loadgen"],
            "other_cpu": other,
            "other_processes": others,
            "machine_cpu": machine,
            "raw": raw,
        }
        print(f"  {label:<44} {result['rps']:>9.0f} req/s  p50 {result['p50_ms']:6.2f} ms"
              f"  p99 {result['p99_ms']:6.2f} ms  errors {errors}"
              + (f"  (other load {other * 100:.0f}%: "
                 + ", ".join(f"{n} {c * 100:.0f}%" for n, c in others) + ")"
                 if other > 0.1 else ""), flush=True)
        return result


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


def write_gateway_config(tmp: Path, name: str, port: int, stub_url: str,
                         src: Path = REPO) -> Path:
    import bcrypt  # the gateway's own dependency, in its venv

    directory = tmp / name
    directory.mkdir()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    (directory / "auth.json").write_text(json.dumps([
        {"username": USERNAME, "hash": hashed, "scopes": ["all"], "agent": AGENT},
    ]))
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"backends": ["basic"], "basic": {"credentials_file": "auth.json"}},
        "storage": {"url": stub_url, "timeout": 10},
        "data_dir": str(directory / "data"),
    }
    if "class RateLimitConfig" in (src / "gateway" / "config.py").read_text():
        # One client from one address is the whole load here: the rate limits stay on (their
        # check is part of the hot path measured) but set so high that they never trip.
        config["rate_limit"] = {"per_ip_rate": 1e9, "per_ip_burst": 10**9,
                                "per_principal_rate": 1e9, "per_principal_burst": 10**9}
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def post_once(bench: Bench, server: Server, stub: Server, body: bytes, ids: list[str]) -> None:
    """One request through `server`; the stub must have received our authority on each."""
    request = urllib.request.Request(server.url + "statements", data=body, method="POST",
                                     headers=bench.headers())
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


def profile_stacks(raw_file: Path, top: int) -> dict[str, Any]:
    """Self and inclusive shares of the event loop's samples, by function (py-spy raw output).

    Only stacks of the event-loop thread count (those through `_run_once`): in this VM
    py-spy's idle detection fails and would count the thread pool waiting for work
    (`_worker` blocked in queue.get) as busy; their samples are reported apart.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = other = 0
    for line in raw_file.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        if not any(f.startswith("BaseEventLoop._run_once ") for f in frames):
            other += count
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "loop_samples": total,
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
            out_dir: Path, stem: str) -> dict[str, Any]:
    raw_file = out_dir / f"{stem}-profile-{server.name}-{body_file.stem}.txt"
    seconds = max(3, int(bench.args.duration))
    spy = subprocess.Popen([py_spy, "record", "--pid", str(server.process.pid), "--rate", "250",
                            "--duration", str(seconds), "--format", "raw", "--output",
                            str(raw_file)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    time.sleep(0.5)
    raw = bench.load(server.url + "statements", body_file, seconds)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw_file.exists():
        print(f"bench: py-spy failed: {err.decode(errors='replace')[-500:]}")
        return {}
    stacks = profile_stacks(raw_file, bench.args.profile_top)
    print(f"\nprofile of {server.name}, {body_file.stem} body: {raw['requests']} requests under "
          f"py-spy, {stacks['loop_samples']} event-loop samples (+{stacks['other_thread_samples']}"
          f" in other threads, left out); raw stacks in {raw_file.relative_to(REPO)}")
    for kind in ("self", "inclusive"):
        print(f"  top {kind}:")
        shown = [(n, v) for n, v in stacks[kind]
                 if kind == "self" or not n.startswith(OUTER_FRAMES)]
        for name, share in shown:
            print(f"    {share * 100:5.1f}%  {name}")
    return {"raw_file": str(raw_file.relative_to(REPO)), **stacks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "asyncio"], default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--no-batch", action="store_true", help="skip the 100-statement runs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole plan, interleaved; report each setup's median "
                             "over its undisturbed rounds")
    parser.add_argument("--quiet-wait", type=float, default=10.0, metavar="SECONDS",
                        help="before each run, wait up to this long for the machine's other "
                             "load to drop under 25%% of a core (0: do not wait)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the gateway's POST path with py-spy (after the runs)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    parser.add_argument("--gateway-commit", metavar="REV",
                        help="run the gateway of this commit (git archive into a temporary "
                             "directory) instead of the work tree's")
    args = parser.parse_args()

    loadgen = pick_loadgen(args.loadgen)
    cpus = len(os.sched_getaffinity(0))
    pin = not args.no_pin and shutil.which("taskset") is not None and cpus >= 2
    started_at = datetime.now(UTC)
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
          + ("pinned: load generator + stub on CPU 0, proxy on CPU 1" if pin else
             "NOT pinned (no taskset or < 2 CPUs)"), flush=True)

    with tempfile.TemporaryDirectory(prefix="lrs-gateway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bench = Bench(args, tmp, pin, loadgen)
        single = statement()
        batch = [statement(i) for i in range(1, BATCH_SIZE + 1)]
        one_file, batch_file = tmp / "one.json", tmp / "batch100.json"
        one_file.write_bytes(json.dumps(single, ensure_ascii=False).encode())
        batch_file.write_bytes(json.dumps(batch, ensure_ascii=False).encode())

        src = REPO
        if args.gateway_commit:
            src = tmp / "src"
            src.mkdir()
            archive = subprocess.run(["git", "archive", args.gateway_commit, "gateway"],
                                     cwd=REPO, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        workers = has_workers_option(src)

        with running(bench):
            py = sys.executable
            stub_port = free_port()
            stub = bench.start("stub", [py, str(BENCH / "stub_lrs.py"), "--port", str(stub_port)],
                               0, f"http://127.0.0.1:{stub_port}/xAPI/",
                               f"http://127.0.0.1:{stub_port}/_bench/count")
            base_port = free_port()
            baseline = bench.start(
                "baseline", [py, str(BENCH / "baseline_proxy.py"), "--port", str(base_port),
                             "--upstream", stub.url, "--username", USERNAME, "--password",
                             PASSWORD, "--agent", json.dumps(AGENT)],
                1, f"http://127.0.0.1:{base_port}/xAPI/", f"http://127.0.0.1:{base_port}/")
            gateways = {}
            for name, level in (("gateway", "INFO"), ("gateway-quiet", "WARNING")):
                port = free_port()
                config = write_gateway_config(tmp, name, port, stub.url, src)
                gateways[name] = bench.start(
                    name, [py, "-m", "gateway", "--log-level", level, "serve",
                           "--config", str(config)],
                    1, f"http://127.0.0.1:{port}/xAPI/",
                    f"http://127.0.0.1:{port}/__lbheartbeat__", src=src)

            ids_one = [single["id"]]
            ids_batch = [s["id"] for s in batch]
            for server in (stub, baseline, *gateways.values()):
                post_once(bench, server, stub, one_file.read_bytes(), ids_one)
                post_once(bench, server, stub, batch_file.read_bytes(), ids_batch)

            print("\nmeasuring (each: warm-up, then the measured run):", flush=True)
            plan = [
                ("a", "direct to stub", stub, one_file),
                ("b", "baseline proxy", baseline, one_file),
                ("c", "gateway, cached Basic", gateways["gateway"], one_file),
                ("c_quiet", "gateway, cached Basic, log WARNING", gateways["gateway-quiet"],
                 one_file),
            ]
            if not args.no_batch:
                plan += [
                    ("a_batch", "direct to stub, batch 100", stub, batch_file),
                    ("b_batch", "baseline proxy, batch 100", baseline, batch_file),
                    ("c_batch", "gateway, batch 100", gateways["gateway"], batch_file),
                ]
            rounds: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in plan}
            for number in range(args.rounds):
                if args.rounds > 1:
                    print(f" round {number + 1} of {args.rounds}", flush=True)
                for key, label, server, body in plan:
                    rounds[key].append(bench.measure(f"({key}) {label}", server, body, stub))
            results = {key: median_result(runs) for key, runs in rounds.items()}

            stem = f"{commit}-{started_at.strftime('%Y%m%dT%H%M%SZ')}"
            results_dir = Path(args.results_dir)
            results_dir.mkdir(parents=True, exist_ok=True)
            profiles = {}
            if args.profile:
                if shutil.which(args.py_spy) is None and not Path(args.py_spy).exists():
                    print("bench: --profile but py-spy not found (bash bench/run.sh --profile "
                          "installs it)")
                else:
                    targets = [(gateways["gateway"], one_file), (baseline, one_file)]
                    if not args.no_batch:
                        targets.append((gateways["gateway"], batch_file))
                    for server, body in targets:
                        profiles[f"{server.name}-{body.stem}"] = profile(
                            bench, server, body, args.py_spy, results_dir, stem)

    ratios = compute_ratios(results)
    not_measured = dict(NOT_MEASURED)
    if workers:
        not_measured["f"] = "2 worker processes: not in this slice (serve has --workers now)"
    print_table(results, ratios, not_measured)
    report = {
        "commit": commit,
        "gateway_source": "work tree" if src == REPO else f"git archive {args.gateway_commit}",
        "local_changes": dirty,
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": {"cpus": cpus, "python": platform.python_version(),
                    "platform": platform.platform(), "aiohttp": _version("aiohttp")},
        "settings": {"loadgen": loadgen, "wrk_threads": args.threads,
                     "connections": args.connections, "duration_s": args.duration,
                     "warmup_s": args.warmup, "rounds": args.rounds,
                     "quiet_wait_s": args.quiet_wait, "pinned": pin,
                     "pinning": "loadgen+stub CPU 0, proxy CPU 1" if pin else None,
                     "statement_bytes": one_file_size(single), "batch_size": BATCH_SIZE},
        "results": results,
        "ratios": ratios,
        "not_measured": not_measured,
        "profiles": profiles,
    }
    out = results_dir / f"{stem}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


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

    def ratio(name: str, top: str, bottom: str) -> None:
        if top in results and bottom in results and results[bottom]["rps"]:
            ratios[name] = results[top]["rps"] / results[bottom]["rps"]

    ratio("c/b", "c", "b")
    ratio("c_quiet/b", "c_quiet", "b")
    ratio("c_quiet/c", "c_quiet", "c")
    ratio("c_batch/b_batch", "c_batch", "b_batch")
    ratio("b/a", "b", "a")
    ratio("c/a", "c", "a")
    for key in ("b", "c", "c_quiet", "b_batch", "c_batch"):
        direct = "a_batch" if key.endswith("batch") else "a"
        if key in results and direct in results:
            ratios[f"added_over_{direct}[{key}]"] = {
                "p50_ms": results[key]["p50_ms"] - results[direct]["p50_ms"],
                "p99_ms": results[key]["p99_ms"] - results[direct]["p99_ms"],
            }
    return ratios


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
        print(f"| {result['setup']} | {result['rps']:.0f} | {result['rps'] * per:.0f} "
              f"| {result['p50_ms']:.2f} | {result['p99_ms']:.2f} "
              f"| {result['server_cpu'] * 100:.0f}% | {stub_cpu} "
              f"| {result['loadgen_cpu'] * 100:.0f}% | {result['other_cpu'] * 100:.0f}%"
              f"{' (!)' if result['other_cpu'] > DISTURBED else ''} | {steal} "
              f"| {result['errors']} |")
    print("(CPU: share of one core during the run; 'other load': CPU used on the machine by "
          "anything but the bench's processes: when high, the run was disturbed; steal: time "
          f"the hypervisor took from each vCPU; (!) marks other load > {DISTURBED * 100:.0f}%)")
    if any(r["errors"] for r in results.values()):
        print("WARNING: some runs had errors (see above): their req/s count good answers only,"
              " and their latencies include the errors")
    print("\nratios (throughput):")
    targets = {"c/b": "target >= 1.0, goal >= 1.8"}
    for name, value in ratios.items():
        if isinstance(value, float):
            note = f"   ({targets[name]})" if name in targets else ""
            print(f"  {name:<18} {value:5.2f}x{note}")
    print("latency added over direct (a), at saturation (closed loop, all connections busy):")
    for name, value in ratios.items():
        if isinstance(value, dict):
            print(f"  {name:<26} p50 +{value['p50_ms']:.2f} ms   p99 +{value['p99_ms']:.2f} ms")
    print("not measured:")
    for key, why in not_measured.items():
        print(f"  ({key}) {why}")


if __name__ == "__main__":
    main()
