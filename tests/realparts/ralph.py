"""Run a real Ralph LRS (ralph-malph 5.1.0, filesystem backend) for the test suite.

Ralph lives in its own virtualenv (`.venv-ralph`, made by `deploy/bootstrap.sh`) because
its dependency pins clash with the gateway's. `run_ralph()` starts it on a free loopback
port with a single credential meant for the gateway (scope `all`, so Ralph keeps the
`authority` the gateway sets) and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import bcrypt

from .process import free_port, log_tail, stop_process, wait_for_interrupt

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).resolve().with_name("ralph_launcher.py")
RALPH_PYTHON_ENV = "LRS_GATEWAY_RALPH_PYTHON"
DEFAULT_RALPH_PYTHON = REPO_ROOT / ".venv-ralph" / "bin" / "python"

GATEWAY_USERNAME = "gateway"
# Ralph validates mbox addresses with email-validator, which refuses special-use domains
# (.invalid, .test, .local, .localhost, ...): such an agent makes Ralph answer 500 to
# every request. A subdomain of example.org is accepted.
GATEWAY_AGENT: dict[str, str] = {"mbox": "mailto:gateway@lrs-gateway.example.org"}

START_TIMEOUT = 30.0


class RalphError(RuntimeError):
    """Ralph could not be found or started."""


@dataclass(frozen=True)
class RalphServer:
    """A running Ralph LRS and the credential the gateway uses for it."""

    url: str
    """xAPI base URL, with a trailing slash: `http://127.0.0.1:PORT/xAPI/`."""
    root_url: str
    """Server root, with a trailing slash: `http://127.0.0.1:PORT/`."""
    username: str
    password: str
    agent: dict[str, str]
    """The credential's xAPI agent (what Ralph uses as authority when none is kept)."""
    log_file: Path


def ralph_python() -> Path:
    """Return the Python of Ralph's virtualenv, or raise a `RalphError` saying what to do."""
    configured = os.environ.get(RALPH_PYTHON_ENV)
    python = Path(configured) if configured else DEFAULT_RALPH_PYTHON
    if not python.exists():
        source = f"${RALPH_PYTHON_ENV}" if configured else "the default location"
        raise RalphError(
            f"No Python for Ralph at {python} (from {source}). Run `bash deploy/bootstrap.sh` "
            f"from the repository root to create .venv-ralph, or set {RALPH_PYTHON_ENV} to "
            "the python of a virtualenv with ralph-malph[cli,lrs]==5.1.0 installed."
        )
    return python


def write_auth_file(path: Path, username: str, password: str, agent: dict[str, str]) -> None:
    """Write a Ralph credentials file with one `all`-scoped, bcrypt-hashed credential."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    credentials: list[dict[str, Any]] = [
        {"username": username, "hash": hashed, "scopes": ["all"], "agent": agent}
    ]
    path.write_text(json.dumps(credentials, indent=2) + "\n", encoding="utf-8")
    path.chmod(0o600)


def ralph_environment(data_dir: Path, auth_file: Path) -> dict[str, str]:
    """Return the environment for a Ralph process using the fs backend."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RALPH_")}
    env.update(
        {
            "RALPH_RUNSERVER_BACKEND": "fs",
            "RALPH_RUNSERVER_AUTH_BACKENDS": "basic",
            "RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH": str(data_dir),
            "RALPH_AUTH_FILE": str(auth_file),
            "RALPH_APP_DIR": str(data_dir.parent / "ralph-app"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _healthy(root_url: str) -> bool:
    try:
        with urllib.request.urlopen(root_url + "__heartbeat__", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(
    process: subprocess.Popen[bytes], root_url: str, log_file: Path, timeout: float
) -> None:
    """Poll Ralph's `/__heartbeat__` until it answers 200; raise `RalphError` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RalphError(
                f"Ralph exited with status {process.returncode} before answering "
                f"{root_url}__heartbeat__; log {log_file}:\n{log_tail(log_file)}"
            )
        if _healthy(root_url):
            return
        time.sleep(0.2)
    raise RalphError(
        f"Ralph did not answer {root_url}__heartbeat__ within {timeout:.0f} s; "
        f"log {log_file}:\n{log_tail(log_file)}"
    )


@contextmanager
def run_ralph(
    workdir: Path, *, python: Path | None = None, timeout: float = START_TIMEOUT
) -> Iterator[RalphServer]:
    """Start Ralph (fs backend) in `workdir`, yield it once healthy, then stop it.

    `workdir` receives the statements (`data/`), the credentials file (`auth.json`) and
    the server log (`ralph.log`). The Ralph Python is `python`, else
    `$LRS_GATEWAY_RALPH_PYTHON`, else `<repo>/.venv-ralph/bin/python`.
    """
    interpreter = python if python is not None else ralph_python()
    if not interpreter.exists():
        raise RalphError(f"No Python for Ralph at {interpreter}; run `bash deploy/bootstrap.sh`.")
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    auth_file = workdir / "auth.json"
    log_file = workdir / "ralph.log"
    password = secrets.token_urlsafe(24)
    write_auth_file(auth_file, GATEWAY_USERNAME, password, GATEWAY_AGENT)

    host = "127.0.0.1"
    port = free_port(host)
    root_url = f"http://{host}:{port}/"
    server = RalphServer(
        url=f"{root_url}xAPI/",
        root_url=root_url,
        username=GATEWAY_USERNAME,
        password=password,
        agent=dict(GATEWAY_AGENT),
        log_file=log_file,
    )
    log: IO[bytes]
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [str(interpreter), str(LAUNCHER), host, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=ralph_environment(data_dir, auth_file),
        )
    try:
        wait_until_healthy(process, root_url, log_file, timeout)
        yield server
    finally:
        stop_process(process)


def main(argv: list[str]) -> int:
    """Run Ralph in a directory until interrupted (handy for poking at it by hand)."""
    workdir = Path(argv[1]) if len(argv) > 1 else Path.cwd() / "ralph-work"
    with run_ralph(workdir) as server:
        sys.stdout.write(
            f"Ralph at {server.url} user={server.username} password={server.password}\n"
        )
        sys.stdout.flush()
        wait_for_interrupt()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
