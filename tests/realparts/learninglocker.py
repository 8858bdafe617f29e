"""Run Learning Locker's xAPI services (npm packages, on Node) for the test suite.

Two services, each described by a `LearningLockerService`:

- `STATEMENTS`: the LRS service `xapi-statements` 5.0.1;
- `ACTIVITY_PROFILES`: the activity profile service `@learninglocker/xapi-activities` 4.4.4.

Both are pinned in the same package.json/lockfile as the OpenID provider (`tests/oidc`;
`deploy/bootstrap.sh` runs `npm ci` there) and run the same way: `dist/index.js` under Node
with `loopback.cjs` preloaded so it binds 127.0.0.1 only, models in memory, stored files
in `<workdir>/storage`.

Each authenticates every request by asking a "client info" endpoint (`AUTH_REPO=fetch`,
`LL_CLIENT_INFO_ENDPOINT`): it GETs that URL with the request's `Authorization` header and
wants 200 and a client document for a valid credential, 404 otherwise. `run_learning_locker`
serves that endpoint itself (a small `http.server` thread on another loopback port) and
accepts exactly one Basic credential (scopes `all`), generated per run: the gateway's
storage credential.

What `xapi-statements` 5.0.1 serves: `/xAPI/statements` (GET, PUT, POST: JSON,
multipart/mixed with attachments, alternate request syntax), `/xAPI/about` and
`/xAPI/activities` (full activity). It does NOT serve the document APIs: those were
separate Learning Locker services. It always replaces a statement's `authority` with the
client's own.

What `@learninglocker/xapi-activities` 4.4.4 serves: `/xAPI/activities/profile` only (GET
one document or the list of profileIds, `since` included; PUT; POST merging JSON objects;
DELETE), with its own ETags (a quoted random sha1 per write) and concurrency control: a PUT
needs `If-Match` or `If-None-Match` (400 when the document is absent, 409 when present).
`Last-Modified` is an ISO 8601 time, not an HTTP-date. A JSON document (any
`application/json...` type) is parsed, stored as an object and served re-serialised
(`JSON.stringify`) as plain `application/json`; other types are stored as bytes and served
byte for byte with the type as sent. Learning Locker's state and agent profile services
(`xapi-state`, `xapi-agents`) are not on npm.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from .oidc import NODE_MODULES, OIDC_DIR, node_executable
from .process import free_port, log_tail, stop_process, wait_for_interrupt

LOOPBACK_PRELOAD = Path(__file__).resolve().with_name("loopback.cjs")
PROBE_ACTIVITY_ID = "http://lrs-gateway.example.org/activities/readiness-probe"

GATEWAY_USERNAME = "gateway"
GATEWAY_AGENT: dict[str, str] = {
    "objectType": "Agent",
    "name": "lrs-gateway",
    "mbox": "mailto:gateway@lrs-gateway.example.org",
}

START_TIMEOUT = 30.0
_SERVICE_ENV_PREFIXES = (
    "EXPRESS_",
    "SERVICE_",
    "FS_",
    "WINSTON_",
    "REDIS_",
    "MONGO_",
    "LL_",
    "DEFAULT_TIMEOUT",
)


class LearningLockerError(RuntimeError):
    """The Learning Locker service could not be found or started."""


@dataclass(frozen=True)
class LearningLockerService:
    """One Learning Locker xAPI service: which npm package, and how to tell it is ready."""

    package: str
    """The npm package name, as installed under `tests/oidc/node_modules`."""
    version: str
    """The version pinned in `tests/oidc/package.json` (for messages)."""
    probe: str
    """Path and query, relative to the xAPI root, that an authenticated GET answers 200
    once the service is ready."""
    extra_environment: tuple[tuple[str, str], ...] = ()
    """Settings only this service reads, on top of `service_environment`'s common ones."""

    @property
    def name(self) -> str:
        """The package name without its npm scope, e.g. `xapi-activities`."""
        return self.package.rpartition("/")[2]

    @property
    def package_dir(self) -> Path:
        """Where npm installs the package."""
        return NODE_MODULES / self.package

    @property
    def script(self) -> Path:
        """The entry point Node runs."""
        return self.package_dir / "dist" / "index.js"


STATEMENTS = LearningLockerService(
    package="xapi-statements",
    version="5.0.1",
    probe="statements?limit=1",
    extra_environment=(
        ("EVENTS_REPO", "test"),
        # Voiding, references and activity updates finish before the response, so a
        # read right after a write sees them (as the package's own test suite runs it).
        ("SERVICE_AWAIT_UPDATES", "true"),
    ),
)
"""The LRS service: statements, about, activities."""

ACTIVITY_PROFILES = LearningLockerService(
    package="@learninglocker/xapi-activities",
    version="4.4.4",
    # The list of an activity's profileIds: 200 (an empty list) without any data.
    probe="activities/profile?activityId=" + quote(PROBE_ACTIVITY_ID, safe=""),
)
"""The activity profile document service: `/xAPI/activities/profile` only."""

# Kept for callers written when xapi-statements was the only service.
PACKAGE_DIR = STATEMENTS.package_dir
SERVICE_SCRIPT = STATEMENTS.script
PACKAGE_VERSION = STATEMENTS.version


@dataclass(frozen=True)
class LearningLockerServer:
    """A running Learning Locker LRS service and the credential the gateway uses for it."""

    url: str
    """xAPI base URL, with a trailing slash: `http://127.0.0.1:PORT/xAPI/`."""
    username: str
    password: str
    log_file: Path
    authority: dict[str, str]
    """The credential's agent: every statement stored gets it as `authority`."""
    client_info_url: str
    """The client info endpoint the service asks (served by the fixture)."""

    @property
    def authorization(self) -> str:
        """The `Authorization` header value of the credential."""
        return basic_authorization(self.username, self.password)


def basic_authorization(username: str, password: str) -> str:
    """Return `Basic base64(username:password)`."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def check_installed(service: LearningLockerService = STATEMENTS) -> None:
    """Raise `LearningLockerError` saying what to do when `service` is not installed."""
    if not service.script.is_file():
        raise LearningLockerError(
            f"{service.package_dir} has no dist/index.js ({service.package} {service.version} "
            f"is not installed in {NODE_MODULES}). Run `bash deploy/bootstrap.sh` from the "
            f"repository root (it runs `npm ci --prefix "
            f"{OIDC_DIR.relative_to(OIDC_DIR.parents[1])}`)."
        )


def client_document(authority: dict[str, str]) -> dict[str, Any]:
    """Return the client document the service expects from its client info endpoint."""
    return {
        "_id": "5f0000000000000000000001",
        "title": "lrs-gateway",
        "isTrusted": True,
        "authority": authority,
        "lrs_id": "5f0000000000000000000002",
        "organisation": "5f0000000000000000000003",
        "scopes": ["all"],
    }


def _credential_matches(header: str | None, username: str, password: str) -> bool:
    if header is None:
        return False
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, sep, given_password = decoded.partition(":")
    # Evaluate both comparisons (no short circuit), each in constant time.
    user_ok = secrets.compare_digest(given_user.encode(), username.encode())
    password_ok = secrets.compare_digest(given_password.encode(), password.encode())
    return bool(sep) and user_ok and password_ok


class ClientInfoServer(ThreadingHTTPServer):
    """Learning Locker's client info endpoint for exactly one Basic credential."""

    daemon_threads = True

    def __init__(self, host: str, username: str, password: str, authority: dict[str, str]):
        self.username = username
        self.password = password
        self.document = json.dumps(client_document(authority)).encode()
        super().__init__((host, 0), _ClientInfoHandler)

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT/client-info`."""
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else host
        return f"http://{host_text}:{port}/client-info"


class _ClientInfoHandler(BaseHTTPRequestHandler):
    server: ClientInfoServer

    def do_GET(self) -> None:
        server = self.server
        if _credential_matches(self.headers.get("Authorization"), server.username, server.password):
            self._answer(200, server.document)
        else:
            self._answer(404, b'{"message":"no such client"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the service's log says what matters."""


@contextmanager
def serve_client_info(
    username: str, password: str, authority: dict[str, str], host: str = "127.0.0.1"
) -> Iterator[ClientInfoServer]:
    """Run a `ClientInfoServer` in a thread on a free port of `host`; stop it afterwards."""
    server = ClientInfoServer(host, username, password, authority)
    thread = threading.Thread(target=server.serve_forever, name="ll-client-info", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def service_environment(
    port: int,
    storage_dir: Path,
    access_log_dir: Path,
    client_info_url: str,
    service: LearningLockerService = STATEMENTS,
) -> dict[str, str]:
    """Return the environment for a Learning Locker service process (in-memory models).

    Variables the services' configs read that are not set here are dropped, so a stray
    `SERVICE_*` or `*_REPO` in the caller's environment cannot change their behaviour.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SERVICE_ENV_PREFIXES) and not key.endswith("_REPO")
    }
    env.update(
        {
            "EXPRESS_PORT": str(port),
            "MODELS_REPO": "memory",
            "STORAGE_REPO": "local",
            "FS_LOCAL_STORAGE_DIR": str(storage_dir),
            "EXPRESS_MORGAN_DIRECTORY": str(access_log_dir),
            "AUTH_REPO": "fetch",
            "LL_CLIENT_INFO_ENDPOINT": client_info_url,
            "WINSTON_CONSOLE_LEVEL": "warning",
        }
    )
    env.update(service.extra_environment)
    return env


def _answers(url: str, authorization: str) -> bool:
    request = urllib.request.Request(  # noqa: S310
        url, headers={"Authorization": authorization, "X-Experience-API-Version": "1.0.3"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_answering(
    process: subprocess.Popen[bytes],
    probe_url: str,
    authorization: str,
    log_file: Path,
    timeout: float,
    name: str = STATEMENTS.name,
) -> None:
    """Poll an authenticated GET of `probe_url` until it answers 200.

    Raises `LearningLockerError` (with the log tail) when the process (`name` in messages)
    exits first or `timeout` s pass.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LearningLockerError(
                f"{name} exited with status {process.returncode} before answering "
                f"{probe_url}; log {log_file}:\n{log_tail(log_file)}"
            )
        if _answers(probe_url, authorization):
            return
        time.sleep(0.1)
    raise LearningLockerError(
        f"{name} did not answer {probe_url} within {timeout:.0f} s; "
        f"log {log_file}:\n{log_tail(log_file)}"
    )


@contextmanager
def run_learning_locker(
    workdir: Path,
    *,
    service: LearningLockerService = STATEMENTS,
    timeout: float = START_TIMEOUT,
) -> Iterator[LearningLockerServer]:
    """Start `service` in `workdir`, yield it once it answers its probe, then stop it.

    `workdir` receives the stored files (`storage/`: attachments or profile documents), the
    access logs (`access-logs/`) and the service log (`learninglocker.log`). Models live in
    the process's memory: each run starts empty. Node is `$LRS_GATEWAY_NODE`, else `node` on
    PATH.
    """
    node = node_executable()
    check_installed(service)
    workdir.mkdir(parents=True, exist_ok=True)
    storage_dir = workdir / "storage"
    storage_dir.mkdir(exist_ok=True)
    access_log_dir = workdir / "access-logs"
    access_log_dir.mkdir(exist_ok=True)
    log_file = workdir / "learninglocker.log"
    password = secrets.token_urlsafe(24)
    authority = dict(GATEWAY_AGENT)

    host = "127.0.0.1"
    with serve_client_info(GATEWAY_USERNAME, password, authority, host) as client_info:
        port = free_port(host)
        server = LearningLockerServer(
            url=f"http://{host}:{port}/xAPI/",
            username=GATEWAY_USERNAME,
            password=password,
            log_file=log_file,
            authority=authority,
            client_info_url=client_info.url,
        )
        env = service_environment(port, storage_dir, access_log_dir, client_info.url, service)
        log: IO[bytes]
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [str(node), "-r", str(LOOPBACK_PRELOAD), str(service.script)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=env,
            )
        try:
            wait_until_answering(
                process,
                server.url + service.probe,
                server.authorization,
                log_file,
                timeout,
                service.name,
            )
            yield server
        finally:
            stop_process(process)


SERVICES: dict[str, LearningLockerService] = {
    "statements": STATEMENTS,
    "activity-profiles": ACTIVITY_PROFILES,
}


def write_authorization_header(server: LearningLockerServer, path: Path) -> Path:
    """Write `Authorization: ...` to `path` (owner-only), for `curl -H @path`.

    The credential goes to a file rather than the terminal, so it never lands in
    scrollback or logs.
    """
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(f"Authorization: {server.authorization}\n")
    return path


def main(argv: list[str]) -> int:
    """Run one service until interrupted (for poking by hand).

    From tests/: `../.venv/bin/python -m realparts.learninglocker [WORKDIR [SERVICE]]`,
    SERVICE being `statements` (the default) or `activity-profiles`. The run's (throwaway)
    credential is written to `WORKDIR/authorization.header` for `curl -H @file`.
    """
    workdir = Path(argv[1]) if len(argv) > 1 else Path.cwd() / "learninglocker-work"
    service_key = argv[2] if len(argv) > 2 else "statements"
    if service_key not in SERVICES:
        sys.stderr.write(f"unknown service {service_key!r}; one of {', '.join(SERVICES)}\n")
        return 2
    service = SERVICES[service_key]
    with run_learning_locker(workdir, service=service) as server:
        header_file = write_authorization_header(server, workdir / "authorization.header")
        sys.stdout.write(
            f"Learning Locker {service.package} {service.version} at {server.url}\n"
            f"curl -H @{header_file} -H 'X-Experience-API-Version: 1.0.3' "
            f"'{server.url}{service.probe}'\n"
        )
        sys.stdout.flush()
        wait_for_interrupt()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
