"""--profile: py-spy over the gateway's POST path, summed by function for the event loop."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import Bench, Server
from scenarios import Parts, Setups
from workload import REPO, Bodies

OUTER_FRAMES = (
    "_run_code ",
    "_run_module_as_main ",
    "<module> ",
    "main ",
    "_serve ",
    "run_app ",
    "BaseEventLoop.run",
    "Handle._run ",
    "Thread.",
)
# Where the loop thread's Python stack ends when it is inside the event loop's own code:
# asyncio's selector wait, or (uvloop) anything in the loop's C code, idle wait included.
LOOP_ENTRY_FRAMES = (
    "run_app ",
    "BaseEventLoop.run_until_complete ",
    "BaseEventLoop.run_forever ",
    "Runner.run ",
    "run ",
    "EpollSelector.select ",
    "select ",
)


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`, so lines of one function add up."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


# Only stacks of the event-loop thread count: the main thread's, i.e. every stack not rooted
# in threading's `Thread._bootstrap`. (In this VM py-spy's idle detection fails and would
# count the thread pools waiting for work, `_worker` blocked in queue.get, as busy; their
# samples are reported apart.) With asyncio the loop's stacks pass through
# `BaseEventLoop._run_once`; with uvloop (the gateway's loop when installed) the loop is C
# code, callbacks hang straight under `run_app`, and a sample whose innermost Python frame is
# the loop's entry (`run_app`, `run_until_complete`, a selector's `select`) was inside the
# loop itself: its C code (uvloop: socket I/O, its own scheduling) or its idle wait, which
# py-spy cannot tell apart here: `loop_internal_samples`.
def profile_stacks(raw_file: Path, top: int) -> dict[str, Any]:
    """Self and inclusive shares of the event loop's samples, by function (py-spy raw output)."""
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
            f.startswith("BaseEventLoop._run_once ") for f in frames
        )
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


def _shown(path: Path) -> Path:
    """`path` relative to the repository when it is inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def print_profile(
    server: Server, body_file: Path, requests: int, stacks: dict[str, Any], raw_file: Path
) -> None:
    """A profile's sample counts, then its top functions by self and inclusive share."""
    print(
        f"\nprofile of {server.name}, {body_file.stem} body: {requests} requests under "
        f"py-spy, {stacks['loop_samples']} event-loop samples ({stacks['loop_kind']}; "
        f"{stacks['loop_internal_samples']} inside the loop's own code or idle) "
        f"(+{stacks['other_thread_samples']} in other threads, left out); raw stacks in "
        f"{_shown(raw_file)}"
    )
    for kind in ("self", "inclusive"):
        print(f"  top {kind}:")
        shown = [
            (n, v) for n, v in stacks[kind] if kind == "self" or not n.startswith(OUTER_FRAMES)
        ]
        for name, share in shown:
            print(f"    {share * 100:5.1f}%  {name}")


def profile(
    bench: Bench,
    server: Server,
    body_file: Path,
    py_spy: str,
    out_dir: Path,
    stem: str,
    authorization: str | None = None,
) -> dict[str, Any]:
    """py-spy on `server` during one load run; its stacks summed, raw file beside the JSON."""
    raw_file = out_dir / f"{stem}-profile-{server.name}-{body_file.stem}.txt"
    seconds = max(3, int(bench.args.duration))
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(server.process.pid),
            "--rate",
            "250",
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--output",
            str(raw_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    raw = bench.load(server.url + "statements", body_file, seconds, authorization)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw_file.exists():
        print(f"bench: py-spy failed: {err.decode(errors='replace')[-500:]}")
        return {}
    stacks = profile_stacks(raw_file, bench.args.profile_top)
    print_profile(server, body_file, raw["requests"], stacks, raw_file)
    return {"raw_file": str(_shown(raw_file)), **stacks}


def run_profiles(
    bench: Bench, setups: Setups, bodies: Bodies, parts: Parts, results_dir: Path, stem: str
) -> dict[str, Any]:
    """Profile (c), (b) and, as measured, (c) batch, (d) and (e), one after the other."""
    py_spy = bench.args.py_spy
    if shutil.which(py_spy) is None and not Path(py_spy).exists():
        print("bench: --profile but py-spy not found (bash bench/run.sh --profile installs it)")
        return {}
    gateways, one = setups.gateways, bodies.one_file
    targets = [(gateways["gateway"], one), (setups.baseline, one)]
    if parts.batch:
        targets.append((gateways["gateway"], bodies.batch_file))
    if parts.token:
        targets.append((gateways["gateway-token"], one))
    if parts.forwarding:
        targets.append((gateways["gateway-fwd"], one))
    return {
        f"{server.name}-{body.stem}": profile(
            bench, server, body, py_spy, results_dir, stem, setups.auth_of.get(server.name)
        )
        for server, body in targets
    }
