"""Test helpers: configs with fast bcrypt credentials, scripted fake LRSes, waiting, ports."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import bcrypt
import jwt
import yaml
import yarl
from aiohttp import web

from gateway.config.settings import Config, load_config
from gateway.http.readiness import PROBE_REQUEST_ID

if TYPE_CHECKING:
    from realparts.learninglocker import LearningLockerServer
    from realparts.ralph import RalphServer

XAPI = {"X-Experience-API-Version": "1.0.3"}
FAST_SALT = bcrypt.gensalt(4)  # tests need bcrypt to run, not to be slow


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def voiding(statement_id: str, voider: str) -> dict[str, Any]:
    """A voiding statement by `voider` (an mbox) for the statement `statement_id`."""
    return {
        "id": str(uuid.uuid4()),
        "actor": {"mbox": voider},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
        "object": {"objectType": "StatementRef", "id": statement_id},
    }


async def forwarding_drained(client: Any, headers: dict[str, str], within: float = 30.0) -> None:
    """Until every forwarding target's backlog is 0 (GET /admin/forwarding as an admin)."""

    async def done() -> bool:
        status = await (await client.get("/admin/forwarding", headers=headers)).json()
        return all(t["backlog"] == 0 for t in status["targets"].values())

    await eventually(done, within=within, what="every forwarding target drained")


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 5.0,
    what: str = "the condition",
) -> None:
    """Poll `predicate` (plain or async) until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} was not reached within {within} s")
        await asyncio.sleep(0.02)


def basic(username: str, password: str) -> dict[str, str]:
    """An Authorization header (plus the xAPI version header)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", **XAPI}


def credential(
    username: str, password: str, scopes: list[str], agent: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One Ralph-format credentials entry with a cheap bcrypt hash."""
    return {
        "username": username,
        "hash": bcrypt.hashpw(password.encode(), FAST_SALT).decode(),
        "scopes": scopes,
        "agent": agent or {"mbox": f"mailto:{username}@example.com"},
    }


def write_config(
    tmp_path: Path,
    storage_url: str,
    users: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Write auth.json and config.yaml under tmp_path; load the config like the CLI does."""
    (tmp_path / "auth.json").write_text(json.dumps(users))
    raw: dict[str, Any] = {
        "storage": {"url": storage_url, "timeout": 5},
        "auth": {"basic": {"credentials_file": "auth.json", "reload_interval": 0.05}},
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, environ or {})


@dataclass
class Recorded:
    """One request as the fake LRS saw it."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


Script = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass
class FakeLRS:
    """A scripted LRS: records every request; `script` decides each answer."""

    script: Script | None = None
    seen: list[Recorded] = field(default_factory=list)
    about_calls: list[Recorded] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        recorded = Recorded(request.method, request.raw_path, dict(request.headers), body)
        # The gateway's own calls (readiness probes, GET about) are kept apart from client
        # traffic. The probe names itself in X-Request-ID.
        is_about = (
            request.method == "GET" and request.path.rstrip("/").endswith("/about")
        ) or request.headers.get("X-Request-ID") == PROBE_REQUEST_ID
        (self.about_calls if is_about else self.seen).append(recorded)
        if self.script is not None:
            return await self.script(request, body)
        if request.method == "POST" and request.path.rstrip("/").endswith("statements"):
            data = json.loads(body)
            batch = data if isinstance(data, list) else [data]
            return web.json_response(
                [s["id"] for s in batch], headers={"X-Experience-API-Version": "1.0.3"}
            )
        return web.json_response({"statements": [], "more": ""})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def storing_script(stored: dict[str, Any] | None = None) -> Script:
    """A FakeLRS script for a storage that remembers: what the gateway's pending resolver
    needs to find a statement whose answer (or commit) was lost.

    POSTed statements are kept in `stored` (by id) and answered with their ids; a GET with
    `statementId` answers the statement kept under that id, else 404; anything else gets
    an empty result, as FakeLRS answers without a script.
    """
    kept: dict[str, Any] = {} if stored is None else stored

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method == "POST" and request.path.rstrip("/").endswith("statements"):
            data = json.loads(body)
            batch = data if isinstance(data, list) else [data]
            kept.update((statement["id"], statement) for statement in batch)
            return web.json_response([statement["id"] for statement in batch], headers=XAPI)
        if request.method == "GET" and "statementId" in request.query:
            statement_id = request.query["statementId"]
            if statement_id in kept:
                return web.json_response(kept[statement_id], headers=XAPI)
            return web.json_response({"detail": "not found"}, status=404, headers=XAPI)
        return web.json_response({"statements": [], "more": ""})

    return script


Behaviour = Callable[[web.Request, list[Any]], Awaitable[web.StreamResponse | None]]


@dataclass
class FakeTarget:
    """A forwarding target LRS at /xAPI/statements.

    While `down` it answers `refusal`; else `behaviour` may answer a batch; otherwise it
    stores the batch and answers its ids (200).
    """

    behaviour: Behaviour | None = None
    down: bool = False
    refusal: int = 503
    stored: dict[str, Any] = field(default_factory=dict)
    received: Counter[str] = field(default_factory=Counter)  # ids stored, how often
    requests: list[list[Any]] = field(default_factory=list)  # every batch, answered or not
    times: list[float] = field(default_factory=list)  # monotonic time of each request
    headers: list[dict[str, str]] = field(default_factory=list)
    refused: list[tuple[float, list[str]]] = field(default_factory=list)  # while down

    async def handle(self, request: web.Request) -> web.StreamResponse:
        batch = json.loads(await request.read())
        now = time.monotonic()
        self.requests.append(batch)
        self.times.append(now)
        self.headers.append(dict(request.headers))
        ids = [statement["id"] for statement in batch]
        if self.down:
            self.refused.append((now, ids))
            return web.json_response({"error": "unavailable"}, status=self.refusal)
        if self.behaviour is not None:
            answer = await self.behaviour(request, batch)
            if answer is not None:
                return answer
        for statement in batch:
            self.stored[statement["id"]] = statement
        self.received.update(ids)
        return web.json_response(ids)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/xAPI/statements", self.handle)
        return app


async def wait_until_serving(
    proc: asyncio.subprocess.Process, url: str, within: float = 30.0, *, listeners: int = 1
) -> None:
    """Wait until a gateway subprocess answers 200 at `url` (fail if it exits first).

    `listeners`: with `serve --workers N`, also wait until N sockets listen on the port:
    the first worker answers while the others may still be starting, and requests made
    before they listen all go to it.
    """
    port = yarl.URL(url).port
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert proc.returncode is None, "the gateway exited before serving"
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(url) as response:
                    if response.status == 200 and (
                        port is None or listening_sockets(port) >= listeners
                    ):
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway did not answer {url} in time")


def refusing_target() -> tuple[FakeTarget, Callable[[], None]]:
    """A forwarding target that refuses every batch with 400 (a permanent reason: its
    statements become dead letters) until the returned function is called.
    """
    refusing = True

    async def refuse(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        return web.json_response({"error": "not today"}, status=400) if refusing else None

    def accept() -> None:
        nonlocal refusing
        refusing = False

    return FakeTarget(refuse), accept


def gateway_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without the developer's LRS_GATEWAY_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LRS_GATEWAY")}
    return {**env, **(extra or {})}


@dataclass
class Served:
    """A gateway subprocess started by `served_gateway`."""

    proc: asyncio.subprocess.Process
    base: str
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextlib.asynccontextmanager
async def served_gateway(
    tmp_path: Path, port: int, *, workers: int = 1, within: float = 30.0
) -> AsyncIterator[Served]:
    """`lrs-gateway serve [--workers N]` on tmp_path/config.yaml, once every worker listens.

    Output goes to tmp_path/gateway.log; on the way out, SIGTERM (then SIGKILL) and wait.
    """
    log_file = tmp_path / "gateway.log"
    command = ["serve"] + (["--workers", str(workers)] if workers > 1 else [])
    with log_file.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(tmp_path / "config.yaml"),
            *command,
            cwd=tmp_path,
            env=gateway_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", log_file)
    try:
        await wait_until_serving(proc, f"{served.base}/__lbheartbeat__", within, listeners=workers)
        yield served
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), within)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on `port` (Linux: /proc/net/tcp and tcp6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if (
                    len(fields) > 3
                    and fields[3] == "0A"
                    and int(fields[1].rpartition(":")[2], 16) == port
                ):
                    count += 1
    return count


def storage_config(
    lrs: RalphServer | LearningLockerServer,
    directory: Path,
    users: list[dict[str, Any]],
    **sections: Any,
) -> Config:
    """A gateway config in `directory` with a real LRS (its credential) as storage."""
    directory.mkdir(exist_ok=True)
    return write_config(
        directory,
        lrs.url,
        users,
        {"storage": {"basic_username": lrs.username, "basic_password": lrs.password}, **sections},
    )


SIGNATURE_USAGE = "http://adlnet.gov/expapi/attachments/signature"


def signed_body(sent: dict[str, Any], key: Any, boundary: str, algorithm: str = "RS256") -> bytes:
    """A multipart body: `sent` with a signature attachment whose JWS payload is `sent`.

    `key`: an RSA private key (cryptography); `algorithm` RS256, RS384 or RS512.
    """
    token = jwt.encode(sent, key, algorithm=algorithm).encode()
    sha2 = hashlib.sha256(token).hexdigest()
    body_statement = dict(
        sent,
        attachments=[
            {
                "usageType": SIGNATURE_USAGE,
                "display": {"en-US": "signature"},
                "contentType": "application/octet-stream",
                "length": len(token),
                "sha2": sha2,
            }
        ],
    )
    return (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode()
        + json.dumps(body_statement).encode()
        + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Transfer-Encoding: binary\r\nX-Experience-API-Hash: {sha2}\r\n\r\n".encode()
        + token
        + f"\r\n--{boundary}--\r\n".encode()
    )
