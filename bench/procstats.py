"""Process statistics from /proc: CPU per process, thread and core, memory, other load."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DISTURBED = 0.25  # other load above this share of a core marks a run as disturbed


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    return {
        line.split()[0]: [int(x) for x in line.split()[1:]]
        for line in lines
        if line.startswith("cpu") and line[3:4].isdigit()
    }


def cpu_usage(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, Any]:
    """Busy and steal shares per CPU between two snapshots."""
    usage = {}
    for cpu, end in after.items():
        delta = [b - a for a, b in zip(before.get(cpu, end), end, strict=False)]
        total = sum(delta[:8]) or 1
        idle = delta[3] + delta[4]
        usage[cpu] = {
            "busy": (total - idle - delta[7]) / total,
            "steal": delta[7] / total,
            "seconds": (total - idle - delta[7]) / os.sysconf("SC_CLK_TCK"),
        }
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
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rpartition(")")[2].split()
        times[(int(entry.name), name)] = (int(fields[11]) + int(fields[12])) / ticks
    return times


def reaped_times(pids: list[int]) -> dict[int, float]:
    """CPU seconds of the children each process waited for (cutime + cstime), by pid.

    PostgreSQL's postmaster reaps its backends: their CPU stays counted after they exit
    (a pooled connection closed when idle, a parallel worker).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        times[pid] = (int(fields[13]) + int(fields[14])) / ticks
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


def busiest_others(
    before: dict[tuple[int, str], float],
    after: dict[tuple[int, str], float],
    ours: set[int],
    seconds: float,
) -> list[tuple[str, float]]:
    """The processes, not the bench's, that used the most CPU between two snapshots."""
    used = [
        (f"{name}[{pid}]", (end - before.get((pid, name), 0.0)) / seconds)
        for (pid, name), end in after.items()
        if pid not in ours
    ]
    return sorted((u for u in used if u[1] >= 0.02), key=lambda u: -u[1])[:5]


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


class Watch:
    """CPU used between start and stop: the bench's processes, and everything else."""

    def __init__(
        self, servers: Mapping[str, int], companions: dict[str, int] | None = None
    ) -> None:
        """Snapshot now; `servers` and `companions` map the bench's processes to their pid."""
        self._servers = servers
        self._companions = companions or {}
        self._started = time.perf_counter()
        self._machine = cpu_times()
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._processes = process_times()
        self._reaped = reaped_times(list(servers.values()))

    def stop(self) -> dict[str, Any]:
        """Shares of a core since the start: per server, companion, load generator, others."""
        processes = process_times()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine = cpu_usage(self._machine, cpu_times())
        seconds = max(1e-6, time.perf_counter() - self._started)
        by_pid = {
            pid: end - self._processes.get((pid, name), end)
            for (pid, name), end in processes.items()
        }
        kids = children_by_parent()
        family = {name: [pid, *kids.get(pid, [])] for name, pid in self._servers.items()}
        waited = reaped_times(list(self._servers.values()))
        servers = {
            name: (
                sum(by_pid.get(pid, 0.0) for pid in pids)
                + waited.get(pids[0], 0.0)
                - self._reaped.get(pids[0], waited.get(pids[0], 0.0))
            )
            / seconds
            for name, pids in family.items()
        }
        companions = {
            name: by_pid.get(pid, 0.0) / seconds for name, pid in self._companions.items()
        }
        # Load generators run to completion inside the window: their CPU is the children's.
        reaped = (
            children.ru_utime
            + children.ru_stime
            - self._children.ru_utime
            - self._children.ru_stime
        ) / seconds
        mine = {
            os.getpid(),
            *(pid for pids in family.values() for pid in pids),
            *self._companions.values(),
        }
        ours = (
            sum(servers.values())
            + sum(companions.values())
            + reaped
            + by_pid.get(os.getpid(), 0.0) / seconds
        )
        # CPU used on the machine by anything but the bench's processes (other sessions'
        # test runs, say): when it is high, the run was disturbed.
        other = max(0.0, sum(u["seconds"] for u in machine.values()) / seconds - ours)
        return {
            "seconds": seconds,
            "servers": servers,
            "companions": companions,
            "loadgen": reaped,
            "other": other,
            "others": busiest_others(self._processes, processes, mine, seconds),
            "machine": machine,
        }
