"""Lifting a login lockout without a restart: `lrs-gateway lockout clear` against a real `serve`.

The failing client comes through a trusted proxy (X-Forwarded-For), so its address is
locked out and the admin, calling from 127.0.0.1, is not.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from support import (
    basic,
    credential,
    free_port,
    gateway_env,
    served_gateway,
    write_config,
)

RUN_TIMEOUT = 30.0
ATTACKER = "203.0.113.7"
ADMIN_ENV = {"LRS_GATEWAY_ADMIN_USER": "admin", "LRS_GATEWAY_ADMIN_PASSWORD": "admin-pw"}


@dataclass
class Gateway:
    """A `serve` subprocess and how to reach it."""

    base: str
    config: Path

    async def whoami(self, username: str, password: str, *, via: str | None = None) -> int:
        """The status of GET /whoami on a new connection (so workers take turns)."""
        headers = basic(username, password)
        if via is not None:
            headers["X-Forwarded-For"] = via
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"{self.base}/whoami", headers=headers) as response,
        ):
            return response.status

    async def lockout_clear(
        self,
        *args: str,
        env: Mapping[str, str] = ADMIN_ENV,
    ) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(self.config),
            "lockout",
            "clear",
            *args,
            env=gateway_env(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
        assert proc.returncode is not None
        return proc.returncode, (out + err).decode()


@pytest.fixture(params=[1, 2], ids=["one process", "two workers"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    port = free_port()
    write_config(
        tmp_path,
        "http://127.0.0.1:9/xAPI/",
        [
            credential("alice", "alice-pw", ["statements/read"]),
            credential("bob", "bob-pw", ["statements/read"]),
            credential("admin", "admin-pw", ["admin"]),
        ],
        {
            "server": {"port": port, "shutdown_timeout": 2},
            "data_dir": "data",
            "lockout": {"max_failures": 3, "block": 300, "tarpit": 0},
            "rate_limit": {"trusted_proxies": ["127.0.0.1/32"]},
        },
    )
    async with served_gateway(tmp_path, port, workers=request.param, within=RUN_TIMEOUT) as served:
        yield Gateway(served.base, tmp_path / "config.yaml")
    assert "Traceback" not in served.log()


async def locked_everywhere(gateway: Gateway, username: str, password: str) -> None:
    """Fail logins until several in a row are refused as locked out (429).

    With workers, each keeps its own count: 24 429s in a row on new connections mean
    every worker has locked the username (and the address) out.
    """
    in_a_row = 0
    for _ in range(200):
        status = await gateway.whoami(username, password, via=ATTACKER)
        assert status in (401, 429), status
        in_a_row = in_a_row + 1 if status == 429 else 0
        if in_a_row == 24:
            return
    raise AssertionError("never locked out")


async def statuses(
    gateway: Gateway, username: str, password: str, *, via: str | None = None
) -> set[int]:
    """The answers to eight logins on new connections (spread over the workers)."""
    return {await gateway.whoami(username, password, via=via) for _ in range(8)}


async def test_an_admin_lifts_a_lockout_at_once(gateway: Gateway) -> None:
    await locked_everywhere(gateway, "alice", "wrong-pw")
    assert await statuses(gateway, "alice", "alice-pw") == {429}  # the username is locked
    assert await statuses(gateway, "bob", "bob-pw", via=ATTACKER) == {429}  # and the address

    code, said = await gateway.lockout_clear("--username", "alice")
    assert code == 0, said
    assert "lifted the lockout of username alice" in said
    assert await statuses(gateway, "alice", "alice-pw") == {200}  # at once, every worker
    assert await statuses(gateway, "bob", "bob-pw", via=ATTACKER) == {429}  # still locked

    code, said = await gateway.lockout_clear("--address", ATTACKER)
    assert code == 0, said
    assert f"lifted the lockout of address {ATTACKER}" in said
    assert await statuses(gateway, "bob", "bob-pw", via=ATTACKER) == {200}

    code, said = await gateway.lockout_clear("--username", "nobody")
    assert code == 0, said
    assert "username nobody was not locked out" in said


async def test_lockout_clear_needs_an_admin(gateway: Gateway) -> None:
    wrong = {**ADMIN_ENV, "LRS_GATEWAY_ADMIN_PASSWORD": "nope"}
    not_admin = {"LRS_GATEWAY_ADMIN_USER": "bob", "LRS_GATEWAY_ADMIN_PASSWORD": "bob-pw"}
    refused, forbidden, nobody = await asyncio.gather(
        gateway.lockout_clear("--username", "alice", env=wrong),
        gateway.lockout_clear("--username", "alice", env=not_admin),
        gateway.lockout_clear("--username", "alice", env={}),
    )
    assert refused[0] == 1, refused
    assert "answered 401 (the admin credential was refused)" in refused[1]
    assert forbidden[0] == 1, forbidden
    assert "answered 403" in forbidden[1]
    assert nobody[0] == 2, nobody
    assert "an admin credential is needed" in nobody[1]
    for _, said in (refused, forbidden, nobody):
        assert "Traceback" not in said
        assert "nope" not in said


async def test_the_server_header_names_no_versions(gateway: Gateway) -> None:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for path in ("/__lbheartbeat__", "/whoami", "/nowhere"):
            async with session.get(f"{gateway.base}{path}") as response:
                assert response.headers.get("Server") == "lrs-gateway", path
    # A request aiohttp cannot parse is answered before any of the app's code runs.
    host, port = gateway.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), RUN_TIMEOUT)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    headers = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"server: lrs-gateway\r\n" in headers + b"\r\n", headers
    assert b"python" not in headers
    assert b"aiohttp" not in headers
