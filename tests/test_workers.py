"""`serve --workers N`: one port, N processes, metrics and forwarding that add up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpServer
from support import (
    FakeLRS,
    basic,
    credential,
    eventually,
    free_port,
    gateway_env,
    listening_sockets,
    refusing_target,
    served_gateway,
    storing_script,
    wait_until_serving,
    write_config,
)

from gateway import __version__
from gateway.forwarding.forwarder import OUTBOX_FILE, Forwarder
from gateway.forwarding.store import BackfillState, OutboxStore, TargetStats
from gateway.runtime.supervisor import worker_command
from gateway.runtime.workers import merged_status

RUN_TIMEOUT = 30.0
ADMIN = credential("admin", "admin-pw", ["all", "admin"])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples by name and labels; the `outbox` label (one outbox id per gateway) left out."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    outboxes = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "outbox" in s.labels:
                outboxes.add(s.labels["outbox"])
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "outbox"))
            found[(s.name, labels)] = s.value
    assert len(outboxes) <= 1, outboxes  # the workers' outboxes are reported as one
    return found


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[1]) == pid:
                    found.add(int(entry.name))
    return found


def delivered_per_outbox(data_dir: Path) -> list[int]:
    counts = []
    for path in sorted(data_dir.rglob(OUTBOX_FILE)):
        store = OutboxStore(path)
        try:
            counts.append(sum(s.delivered for s in store.stats(store.targets()).values()))
        finally:
            store.close()
    return counts


# -- the real thing: a supervisor and two worker processes -----------------------------------


async def test_two_workers_share_the_port_and_add_up(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    storage_lrs, target_lrs = FakeLRS(), FakeLRS()
    storage = await aiohttp_server(storage_lrs.app())
    target = await aiohttp_server(target_lrs.app())
    port = free_port()
    write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        [ADMIN],
        {
            "server": {"port": port, "shutdown_timeout": 5},
            "data_dir": "data",
            "forwardings": [
                {
                    "name": "t",
                    "url": str(target.make_url("/xAPI/statements")),
                    "is_active": True,
                    "basic_username": None,
                    "basic_password": None,
                    "max_retries": 3,
                    "timeout": 5,
                }
            ],
        },
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(tmp_path / "config.yaml"),
        "serve",
        "--workers",
        "2",
        cwd=tmp_path,
        env=gateway_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    auth = basic("admin", "admin-pw")
    sent = 40
    try:
        await wait_until_serving(proc, f"{base}/__lbheartbeat__", RUN_TIMEOUT, listeners=2)
        # A new connection per request: the kernel spreads connections over the workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for n in range(sent):
                statement = {
                    "actor": {"mbox": f"mailto:l{n}@example.org"},
                    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
                    "object": {"id": "http://example.org/course"},
                }
                async with session.post(
                    f"{base}/xAPI/statements", json=statement, headers=auth
                ) as response:
                    assert response.status == 200, await response.text()

            async def drained() -> bool:
                async with session.get(f"{base}/admin/forwarding", headers=auth) as response:
                    status = await response.json()
                return bool(status["targets"].get("t", {}).get("delivered") == sent)

            await eventually(drained, RUN_TIMEOUT, "every statement forwarded")
            async with session.get(f"{base}/admin/forwarding", headers=auth) as response:
                status = await response.json()
            assert status["workers"] == {"count": 2, "unanswered": 0}
            assert status["targets"]["t"]["backlog"] == 0
            delivered = ("lrs_gateway_forwarding_delivered_total", (("target", "t"),))
            figures: dict[Any, float] = {}

            async def scraped_delivered() -> bool:  # forwarding figures refresh every second
                nonlocal figures
                async with session.get(f"{base}/metrics") as response:
                    figures = samples(await response.text())
                return figures.get(delivered) == sent

            await eventually(scraped_delivered, RUN_TIMEOUT, "the deliveries in a scrape")
            posts = (
                ("method", "POST"),
                ("route", "xapi.statements"),
                ("status_class", "2xx"),
                ("tenant", "default"),
            )
            assert figures[("lrs_gateway_requests_total", posts)] == sent
            assert (
                figures[("lrs_gateway_statements_accepted_total", (("tenant", "default"),))] == sent
            )
            assert figures[("lrs_gateway_workers", ())] == 2
            assert figures[("lrs_gateway_build_info", (("version", __version__),))] == 1
            assert figures[("lrs_gateway_ready", ())] in (0, 1)

            # Both workers took requests, and each forwarded what it accepted from its outbox.
            per_outbox = delivered_per_outbox(tmp_path / "data")
            assert len(per_outbox) == 2
            assert sum(per_outbox) == sent
            assert min(per_outbox) > 0, per_outbox
            forwarded = [s["id"] for r in target_lrs.seen for s in json.loads(r.body)]
            assert len(forwarded) == len(set(forwarded)) == sent

            # A worker that dies is replaced; the port keeps answering meanwhile.
            workers = children_of(proc.pid)
            assert len(workers) == 2
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)

            async def replaced() -> bool:
                now = children_of(proc.pid)
                return len(now) == 2 and victim not in now

            await eventually(replaced, RUN_TIMEOUT, "the killed worker replaced")
            await wait_until_serving(proc, f"{base}/__lbheartbeat__", RUN_TIMEOUT, listeners=2)

            # The dead worker's requests still count.
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                figures = samples(await response.text())
            assert figures[("lrs_gateway_requests_total", posts)] == sent
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()  # its workers notice and stop themselves
            await proc.wait()
    out, err = await proc.communicate()
    logs = (out + err).decode()
    assert code == 0, logs
    assert "worker 0/2 listening" in logs
    assert "worker 1/2 listening" in logs
    assert "Traceback" not in logs
    assert not children_of(proc.pid)
    status_command = subprocess.run(  # noqa: ASYNC221 -- the gateway has stopped
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(tmp_path / "config.yaml"),
            "forwarding",
            "status",
            "--json",
        ],
        cwd=tmp_path,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert json.loads(status_command.stdout)["t"]["delivered"] == sent  # both outboxes


def test_fewer_workers_than_an_outbox_needs_is_refused(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        "http://127.0.0.1:9/xAPI/",
        [ADMIN],
        {"server": {"port": free_port()}, "data_dir": "data"},
    )
    store = OutboxStore(tmp_path / "data" / "worker-3" / OUTBOX_FILE)
    try:
        seqs = store.write_pending([("7e3c2b4e-1d2a-4a5b-9c1d-0e2f3a4b5c6d", b"{}", None)])
        store.mark_ready(seqs, [("t", 1000)])
    finally:
        store.close()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(tmp_path / "config.yaml"),
            "serve",
            "--workers",
            "2",
        ],
        cwd=tmp_path,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1, result  # a problem, not a usage error
    assert "worker-3 (1 statements)" in result.stderr
    assert "--workers 4" in result.stderr
    assert "Traceback" not in result.stderr


# -- the parts -------------------------------------------------------------------------------


def test_forwarding_status_of_workers_adds_up() -> None:
    def target(
        backlog: int,
        age: float | None,
        down: tuple[float, str] | None = None,
    ) -> dict[str, Any]:
        return {
            "state": "up" if down is None else "down",
            "up": down is None,
            "backlog": backlog,
            "oldest_age": age,
            "delivered": 10,
            "retries": 1,
            "dead_letters": 0,
            "dead_lettered_total": 2,
            "down_since": None if down is None else down[0],
            "last_error": None if down is None else down[1],
        }

    merged = merged_status(
        [
            {"targets": {"a": target(3, 1.0)}},
            {"targets": {"a": target(2, None), "b": target(1, 4.0)}},
            {"targets": {"a": target(0, 2.5)}},
        ]
    )
    assert merged["targets"]["a"] == {
        "state": "up",
        "up": True,
        "backlog": 5,
        "oldest_age": 2.5,
        "delivered": 30,
        "retries": 3,
        "dead_letters": 0,
        "dead_lettered_total": 6,
        "down_since": None,
        "last_error": None,
    }
    assert merged["targets"]["b"]["oldest_age"] == 4.0
    # Up only when every worker gets through; down since the earliest, the first error.
    merged = merged_status(
        [
            {"targets": {"a": target(1, 1.0)}},
            {"targets": {"a": target(4, 9.0, (200.0, "HTTP 503"))}},
            {"targets": {"a": target(2, 5.0, (100.0, "refused"))}},
        ]
    )
    figures = merged["targets"]["a"]
    assert (figures["state"], figures["up"]) == ("down", False)
    assert figures["up"] is False  # not a sum of booleans
    assert (figures["down_since"], figures["last_error"]) == (100.0, "HTTP 503")
    assert figures["backlog"] == 7


def test_a_backfill_in_one_workers_outbox_is_the_targets_backfill() -> None:
    """Status documents as workers send them (JSON of TargetStats): one holds the backfill."""
    backfill = BackfillState(
        target="a",
        since=None,
        until="2024-01-11T00:00:00+00:00",
        cursor="2024-01-03T12:00:00+00:00",
        tie_ids=("0b4e5d1c-8a4c-4c7e-9a3f-1f2e3d4c5b6a",),
        first="2024-01-01T00:00:00+00:00",
        queued=40,
        skipped=2,
        state="running",
        started_at=1_700_000_000.0,
        updated_at=1_700_000_100.0,
        holder="5f0c",
    )

    def document(backfilled: int, found: BackfillState | None) -> dict[str, Any]:
        stats = TargetStats(
            state="up",
            up=True,
            backlog=1,
            oldest_age=None,
            delivered=3,
            retries=0,
            dead_letters=0,
            dead_lettered_total=0,
            down_since=None,
            last_error=None,
            backfilled=backfilled,
            backfill=found,
        )
        parsed: dict[str, Any] = json.loads(json.dumps(Forwarder.as_json({"a": stats})))
        return parsed

    assert document(0, None)["targets"]["a"]["backfill"] is None
    expected = document(40, backfill)["targets"]["a"]["backfill"]
    assert (expected["cursor"], expected["queued"]) == (backfill.cursor, 40)
    for order in ([(0, None), (40, backfill), (0, None)], [(40, backfill), (5, None)]):
        merged = merged_status([document(*worker) for worker in order])["targets"]["a"]
        assert merged["backfill"] == expected, order  # whichever worker reports it first
        assert merged["backfilled"] == sum(count for count, _ in order)
        assert merged["delivered"] == 3 * len(order)
    alone = merged_status([document(0, None), document(2, None)])["targets"]["a"]
    assert alone["backfill"] is None
    assert alone["backfilled"] == 2


async def test_send_again_reaches_the_dead_letters_of_every_worker(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    """Dead letters sit in both workers' outboxes; one replay call moves them all."""

    target, accept = refusing_target()
    storage = await aiohttp_server(FakeLRS(storing_script()).app())
    target_server = await aiohttp_server(target.app())
    port = free_port()
    write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        [ADMIN],
        {
            "server": {"port": port, "shutdown_timeout": 5},
            "data_dir": "data",
            "forwardings": [
                {
                    "name": "t",
                    "url": str(target_server.make_url("/xAPI/statements")),
                    "is_active": True,
                    "max_retries": 1,
                    "timeout": 5,
                }
            ],
        },
    )
    auth = basic("admin", "admin-pw")
    sent = 20
    async with served_gateway(tmp_path, port, workers=2) as served:
        connector = aiohttp.TCPConnector(force_close=True)  # spread over both workers
        async with aiohttp.ClientSession(connector=connector) as session:
            for n in range(sent):
                statement = {
                    "actor": {"mbox": f"mailto:l{n}@example.org"},
                    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
                    "object": {"id": "http://example.org/course"},
                }
                async with session.post(
                    f"{served.base}/xAPI/statements", json=statement, headers=auth
                ) as response:
                    assert response.status == 200, await response.text()

            async def dead(expected: int) -> bool:
                async with session.get(f"{served.base}/admin/forwarding", headers=auth) as answer:
                    figures = (await answer.json())["targets"]["t"]
                return bool(figures["dead_letters"] == expected)

            await eventually(lambda: dead(sent), RUN_TIMEOUT, "every statement dead-lettered")
            per_outbox = dead_per_outbox(tmp_path / "data")
            assert len(per_outbox) == 2
            assert min(per_outbox) > 0, per_outbox  # both workers hold some
            accept()
            async with session.post(
                f"{served.base}/admin/forwarding/t/replay", headers=auth
            ) as response:
                assert response.status == 200, await response.text()
                assert await response.json() == {"target": "t", "requeued": sent}
            await eventually(lambda: dead(0), RUN_TIMEOUT, "no dead letter left")
            await eventually(lambda: len(target.stored) == sent, RUN_TIMEOUT, "all delivered")
    assert "Traceback" not in served.log()
    assert "forwarding to t: " in served.log()


def dead_per_outbox(data_dir: Path) -> list[int]:
    counts = []
    for path in sorted(data_dir.rglob(OUTBOX_FILE)):
        store = OutboxStore(path)
        try:
            counts.append(sum(s.dead_letters for s in store.stats(store.targets()).values()))
        finally:
            store.close()
    return counts


async def test_the_cli_and_the_admin_status_agree_after_fewer_workers(tmp_path: Path) -> None:
    from gateway.forwarding.store import TargetState

    port = free_port()
    write_config(
        tmp_path,
        "http://127.0.0.1:9/xAPI/",
        [ADMIN],
        {
            "server": {"port": port},
            "data_dir": "data",
            "forwardings": [
                {
                    "name": "t",
                    "url": "http://127.0.0.1:9/xAPI/statements",
                    "is_active": False,
                    "max_retries": 3,
                    "timeout": 5,
                }
            ],
        },
    )
    # What an earlier run with two workers left in worker 1's outbox: all delivered, and
    # the target last seen down there.
    store = OutboxStore(tmp_path / "data" / "worker-1" / OUTBOX_FILE)
    try:
        seqs = store.write_pending([("7e3c2b4e-1d2a-4a5b-9c1d-0e2f3a4b5c6d", b"{}", None)])
        store.mark_ready(seqs, [("t", 1000)])
        store.ack("t", seqs)
        store.set_state("t", TargetState(up=False, since=1.0, reason="refused"))
    finally:
        store.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(tmp_path / "config.yaml"),
        "serve",
        cwd=tmp_path,
        env=gateway_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_serving(proc, f"{base}/__lbheartbeat__", RUN_TIMEOUT)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/admin/forwarding", headers=basic("admin", "admin-pw")) as response,
        ):
            assert response.status == 200
            served = (await response.json())["targets"]
        status = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "gateway",
                "--config",
                str(tmp_path / "config.yaml"),
                "forwarding",
                "status",
                "--json",
            ],
            cwd=tmp_path,
            env=gateway_env(),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=True,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), RUN_TIMEOUT)
    shown = json.loads(status.stdout)
    for figures in (served["t"], shown["t"]):
        assert figures["delivered"] == 1  # worker 1's deliveries still count
        assert (figures["state"], figures["up"]) == ("up", True)  # nobody forwards from it
    assert {k: v for k, v in served["t"].items() if k != "oldest_age"} == {
        k: v for k, v in shown["t"].items() if k != "oldest_age"
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "c.yaml", "serve", "--workers", "2"],
        ["--config", "c.yaml", "serve", "--workers=2"],
    ],
)
def test_a_worker_runs_the_supervisors_command_without_workers(argv: list[str]) -> None:
    assert worker_command(argv) == [sys.executable, "-m", "gateway", "--config", "c.yaml", "serve"]


def test_a_worker_whose_supervisor_is_gone_stops(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        "http://127.0.0.1:9/xAPI/",
        [ADMIN],
        {"server": {"port": free_port()}, "data_dir": "data"},
    )
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(tmp_path / "config.yaml"),
            "serve",
            "--worker",
            "1/2",
            "--run-dir",
            str(tmp_path),
            "--supervisor",
            gone.stdout.strip(),
        ],
        cwd=tmp_path,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result
    assert "the supervisor" in result.stderr
    assert "is gone; stopping" in result.stderr
    assert "Traceback" not in result.stderr


# -- metrics that stay right across a worker's restart ---------------------------------------


def monotonic_figures(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Counter and histogram samples of a scrape: what must never go down."""
    figures = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for s in family.samples:
            if not s.name.endswith("_created"):
                figures[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return figures


async def test_counters_never_go_down_when_a_worker_is_killed_under_load(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    # Storage answers the resolver's statementId question from what it stored: a write
    # the killed worker answered but had not queued yet is then found and forwarded.
    storage_lrs, target_lrs = FakeLRS(storing_script()), FakeLRS()
    storage = await aiohttp_server(storage_lrs.app())
    target = await aiohttp_server(target_lrs.app())
    port = free_port()
    write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        [ADMIN],
        {
            "server": {"port": port, "shutdown_timeout": 5},
            "data_dir": "data",
            # An answer the killed worker sent before its commit queued the statement leaves a
            # pending row: the restarted worker's resolver settles it after this many seconds.
            "outbox": {"resolve_pending_after": 1},
            "forwardings": [
                {
                    "name": "t",
                    "url": str(target.make_url("/xAPI/statements")),
                    "is_active": True,
                    "max_retries": 3,
                    "timeout": 5,
                }
            ],
        },
    )
    log_file = (tmp_path / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(tmp_path / "config.yaml"),
        "serve",
        "--workers",
        "2",
        cwd=tmp_path,
        env=gateway_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,
    )  # a pipe would fill up
    base = f"http://127.0.0.1:{port}"
    auth = basic("admin", "admin-pw")
    answered, lost, total = 0, 0, 300
    to_t = (("target", "t"),)
    scrapes: list[tuple[int, str]] = []  # (status, body) of every scrape answered
    loading = True
    a_third_answered = asyncio.Event()
    try:
        await wait_until_serving(proc, f"{base}/__lbheartbeat__", RUN_TIMEOUT, listeners=2)
        workers = children_of(proc.pid)
        assert len(workers) == 2
        connector = aiohttp.TCPConnector(force_close=True)  # spread over both workers
        async with aiohttp.ClientSession(connector=connector) as session:

            async def client(first: int) -> None:
                nonlocal answered, lost
                for n in range(first, total, 4):
                    statement = {
                        "actor": {"mbox": f"mailto:l{n}@example.org"},
                        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
                        "object": {"id": "http://example.org/course"},
                    }
                    try:
                        async with session.post(
                            f"{base}/xAPI/statements", json=statement, headers=auth
                        ) as response:
                            assert response.status == 200, await response.text()
                            answered += 1
                            if answered == total // 3:
                                a_third_answered.set()
                    except aiohttp.ClientConnectionError:
                        lost += 1  # sent to the worker being killed: it may have counted it

            async def scraper() -> None:
                while loading:
                    try:
                        async with session.get(f"{base}/metrics") as response:
                            scrapes.append((response.status, await response.text()))
                    except aiohttp.ClientConnectionError:
                        pass  # the killed worker's connection, not an answer
                    await asyncio.sleep(0.02)

            async def killer() -> None:
                await a_third_answered.wait()
                os.kill(min(workers), signal.SIGKILL)

            scraping = asyncio.create_task(scraper())
            await asyncio.gather(*(client(i) for i in range(4)), killer())

            async def replaced() -> bool:
                now = children_of(proc.pid)
                return len(now) == 2 and min(workers) not in now

            await eventually(replaced, RUN_TIMEOUT, "the killed worker replaced")
            # Scrapes across the new worker's start: while it starts, and once it listens.
            await eventually(
                lambda: listening_sockets(port) == 2, RUN_TIMEOUT, "the new worker listening"
            )
            started = len(scrapes)
            await eventually(
                lambda: len(scrapes) >= started + 20, RUN_TIMEOUT, "20 scrapes with it listening"
            )
            loading = False
            await scraping
            sent = answered + lost

            async def forwarded() -> bool:  # a lost request may have reached storage
                async with session.get(f"{base}/metrics") as response:
                    scrapes.append((response.status, await response.text()))
                figures = samples(scrapes[-1][1])
                return (
                    figures.get(("lrs_gateway_forwarding_backlog", to_t)) == 0
                    and figures.get(("lrs_gateway_forwarding_delivered_total", to_t), 0) >= answered
                )

            await eventually(forwarded, RUN_TIMEOUT, "every answered statement forwarded")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), RUN_TIMEOUT)
        log_file.close()
    logs = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in logs
    assert [status for status, _ in scrapes if status != 200] == []
    assert len(scrapes) > 20
    previous = monotonic_figures(scrapes[0][1])
    for n, (_, body) in enumerate(scrapes[1:], 1):
        now = monotonic_figures(body)
        dropped = {
            key: (value, now.get(key))
            for key, value in previous.items()
            if now.get(key, 0.0) < value
        }
        assert not dropped, f"scrape {n} of {len(scrapes)}: {dropped}"
        previous = now
    final = samples(scrapes[-1][1])
    posts = (
        ("method", "POST"),
        ("route", "xapi.statements"),
        ("status_class", "2xx"),
        ("tenant", "default"),
    )
    assert answered <= final[("lrs_gateway_requests_total", posts)] <= sent
    counted = final[
        (
            "lrs_gateway_request_duration_seconds_count",
            (("method", "POST"), ("route", "xapi.statements")),
        )
    ]
    assert answered <= counted <= sent
    assert (
        answered
        <= final[("lrs_gateway_statements_accepted_total", (("tenant", "default"),))]
        <= sent
    )
    assert answered <= final[("lrs_gateway_forwarding_delivered_total", to_t)] <= sent
    metrics_route = (
        ("method", "GET"),
        ("route", "metrics"),
        ("status_class", "2xx"),
        ("tenant", ""),
    )
    # Each scrape is counted once answered: the last one is not in its own figures.
    assert len(scrapes) - 1 <= final[("lrs_gateway_requests_total", metrics_route)]
    assert final[("lrs_gateway_workers", ())] == 2
