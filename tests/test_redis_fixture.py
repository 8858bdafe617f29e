"""Tests of the `redis` fixture: a real Redis, talked to with redis.asyncio (no gateway)."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from realparts.redis import RedisError, RedisServer, run_redis
from redis.exceptions import ConnectionError as RedisConnectionError

pytestmark = pytest.mark.redis


@asynccontextmanager
async def _client(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uids of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(uid) for uid in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def _alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_url_connects_writes_and_reads(redis: RedisServer) -> None:
    assert redis.host == "127.0.0.1"
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    async with _client(redis.url) as client:
        assert await client.ping() is True
        await client.set("fixture:smoke", "answered", ex=60)
        assert await client.get("fixture:smoke") == b"answered"
        assert await client.incr("fixture:counter") >= 1
        info = await client.info("server")
        assert info["tcp_port"] == redis.port
        assert await client.config_get("bind") == {"bind": "127.0.0.1"}
        assert await client.config_get("save") == {"save": ""}
        assert await client.config_get("appendonly") == {"appendonly": "no"}
        assert await client.config_get("protected-mode") == {"protected-mode": "yes"}
        await client.delete("fixture:smoke", "fixture:counter")


async def test_flush_empties_every_database(redis: RedisServer) -> None:
    async with _client(redis.url) as client, _client(redis.url[:-1] + "5") as other:
        await client.set("fixture:flush", "1")
        await other.set("fixture:flush", "5")
        redis.flush()
        assert await client.dbsize() == 0
        assert await other.get("fixture:flush") is None


async def test_server_does_not_run_as_root(redis: RedisServer) -> None:
    pid = redis.pid
    assert pid is not None
    expected = "redis" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    uid = pwd.getpwnam(expected).pw_uid
    assert _uids(pid) == [uid] * 4
    if os.geteuid() == 0:
        assert redis.run_as == "redis"
        assert uid != 0
    else:
        assert redis.run_as is None


async def test_stop_refuses_connections_and_start_comes_back_empty(tmp_path: Path) -> None:
    with run_redis(tmp_path / "redis") as server:
        first_pid = server.pid
        assert first_pid is not None
        port = server.port
        async with _client(server.url) as client:
            await client.set("fixture:lost", "on restart")

            server.stop()
            assert server.pid is None
            assert not _alive(first_pid)
            with pytest.raises(RedisConnectionError):
                await client.get("fixture:lost")
            with pytest.raises(RedisError):
                server.flush()
            server.stop()  # a no-op when stopped

            server.start()
            second_pid = server.pid
            assert second_pid is not None
            assert second_pid != first_pid
            assert server.port == port
            # The client reconnects on its own; nothing was kept (no persistence).
            assert await client.ping() is True
            assert await client.get("fixture:lost") is None
        server.start()  # a no-op when running
        assert server.pid == second_pid
        workdir = server.workdir

    assert server.pid is None
    assert not _alive(second_pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    if os.geteuid() == 0:
        assert not workdir.exists()  # the private directory is removed
    else:
        assert not list(workdir.glob("*.rdb"))  # nothing was saved


async def test_a_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    with run_redis(tmp_path / "redis") as server:
        server.stop()
        with socket.create_server(("127.0.0.1", server.port)):
            with pytest.raises(RedisError, match="already in use"):
                server.start()
            assert server.pid is None
        server.start()
        async with _client(server.url) as client:
            assert await client.ping() is True
