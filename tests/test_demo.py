"""The quick start, deploy/demo.sh, run for real in a copy of the repository.

Each test copies what the demo uses (deploy/demo.sh, deploy/demo/, config.yaml,
pyproject.toml, tests/realparts/) to a temporary directory and links this test run's venv
(`.venv`) and Ralph's (`.venv-ralph`, or `$LRS_GATEWAY_RALPH_PYTHON`'s) into it, with
`LRS_GATEWAY_DEMO_REUSE_VENVS=1`: nothing is installed, the demo starts real Ralphs and the
real gateway on free ports taken from the environment. Timing a fresh install is
deploy/demo/time_demo.py's job (`--fresh`), not the test suite's.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from realparts.process import free_port
from realparts.ralph import GATEWAY_USERNAME, ralph_python

pytestmark = pytest.mark.ralph

REPO = Path(__file__).resolve().parents[1]
COPIED = ["deploy/demo.sh", "deploy/demo", "config.yaml", "pyproject.toml", "tests/realparts"]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CREDENTIAL_LINE = re.compile(r"credential:\s+username (\S+)\s+password (\S+)")
TARGET_CURL = re.compile(r"-u '(gateway:[^']+)'[^\n]*\n\s+(http://\S+/xAPI/statements)")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


def xapi(url: str, auth: str, body: Any = None) -> tuple[int, Any]:
    """One xAPI request with Basic `auth` ("user:password"); (status, parsed JSON or None)."""
    headers = {
        "Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
        "X-Experience-API-Version": "1.0.3",
    }
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    try:
        with OPENER.open(request, timeout=10) as response:
            raw = response.read()
            return int(response.status), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode(errors="replace")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def demo_env(**ports: int) -> dict[str, str]:
    """The environment for the demo: ours without LRS_GATEWAY*/RALPH_* settings, plus ports."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LRS_GATEWAY", "RALPH_"))
    }
    env["PYTHON"] = sys.executable
    env.update({f"LRS_GATEWAY_DEMO_{name.upper()}": str(port) for name, port in ports.items()})
    return env


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    """A copy of what the demo needs, without venvs."""
    copy = tmp_path / "repo"
    for relative in COPIED:
        source, destination = REPO / relative, copy / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(
                source, destination, ignore=shutil.ignore_patterns("__pycache__", "node_modules")
            )
        else:
            shutil.copy2(source, destination)
    return copy


@pytest.fixture
def demo_repo(demo_copy: Path) -> Path:
    """`demo_copy` with this run's venvs linked in (LRS_GATEWAY_DEMO_REUSE_VENVS=1 uses them)."""
    gateway_venv = Path(sys.prefix)
    ralph_venv = ralph_python().parent.parent
    assert (gateway_venv / "bin" / "lrs-gateway").exists(), f"no lrs-gateway in {gateway_venv}"
    (demo_copy / ".venv").symlink_to(gateway_venv, target_is_directory=True)
    (demo_copy / ".venv-ralph").symlink_to(ralph_venv, target_is_directory=True)
    return demo_copy


@dataclass
class Demo:
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.output)


@contextmanager
def running_demo(repo: Path, *args: str, **ports: int) -> Iterator[Demo]:
    """Start deploy/demo.sh, yield once it printed its banner, then Ctrl-C it (SIGINT)."""
    env = demo_env(**ports)
    env["LRS_GATEWAY_DEMO_REUSE_VENVS"] = "1"
    process = subprocess.Popen(
        ["bash", "deploy/demo.sh", *args],
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    demo = Demo(process)
    assert process.stdout is not None
    stdout = process.stdout
    reader = threading.Thread(
        target=lambda: demo.output.extend(iter(stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "stops the gateway" not in demo.text:
            assert process.poll() is None, f"the demo exited ({process.returncode}):\n{demo.text}"
            assert time.monotonic() < deadline, f"no banner in {START_TIMEOUT} s:\n{demo.text}"
            time.sleep(0.1)
        yield demo
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        finally:
            reader.join(timeout=5)
            stdout.close()


def demo_credential(demo: Demo) -> str:
    match = CREDENTIAL_LINE.search(demo.text)
    assert match, demo.text
    return f"{match.group(1)}:{match.group(2)}"


def the_statement(body: Any) -> Any:
    """A `statementId` query's statement: Ralph 5.1 answers a StatementResult of one."""
    if isinstance(body, dict) and "statements" in body:
        assert len(body["statements"]) == 1, body
        return body["statements"][0]
    return body


def a_statement() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"mbox": "mailto:learner@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
        "object": {"id": "http://example.com/activities/demo"},
    }


def send_through_gateway(demo: Demo, gateway_port: int) -> dict[str, Any]:
    """POST a statement with the printed demo credential; check the gateway reads it back."""
    gateway = f"http://127.0.0.1:{gateway_port}/xAPI/statements"
    auth = demo_credential(demo)
    statement = a_statement()
    status, body = xapi(gateway, auth, statement)
    assert (status, body) == (200, [statement["id"]]), demo.text
    status, stored = xapi(f"{gateway}?statementId={statement['id']}", auth)
    assert status == 200
    assert the_statement(stored)["id"] == statement["id"], stored
    return statement


def assert_stopped(demo: Demo, *ports: int) -> None:
    assert demo.process.returncode in (0, 130), demo.text
    assert "demo: stopped" in demo.text
    for port in ports:
        assert port_is_free(port), f"port {port} still taken after Ctrl-C"


def test_demo_stores_statements_in_ralph(demo_repo: Path) -> None:
    gateway_port, ralph_port = free_port(), free_port()
    with running_demo(demo_repo, port=gateway_port, ralph_port=ralph_port) as demo:
        assert f"http://127.0.0.1:{gateway_port}/xAPI/statements" in demo.text  # the curls
        assert demo.text.count("curl -s -u 'demo:") == 2
        statement = send_through_gateway(demo, gateway_port)
        # In Ralph itself, with the gateway's credential there, authority = the demo agent.
        ralph_password = (demo_repo / "demo" / "ralph-password").read_text().strip()
        status, stored = xapi(
            f"http://127.0.0.1:{ralph_port}/xAPI/statements?statementId={statement['id']}",
            f"{GATEWAY_USERNAME}:{ralph_password}",
        )
        assert status == 200
        assert the_statement(stored)["verb"] == statement["verb"]
        assert the_statement(stored)["authority"]["mbox"] == "mailto:demo@example.com"
        assert "Forwarding target" not in demo.text
    assert_stopped(demo, gateway_port, ralph_port)


def test_demo_with_target_forwards_to_a_second_ralph(demo_repo: Path) -> None:
    gateway_port, ralph_port, target_port = free_port(), free_port(), free_port()
    with running_demo(
        demo_repo,
        "--with-target",
        port=gateway_port,
        ralph_port=ralph_port,
        target_port=target_port,
    ) as demo:
        target = TARGET_CURL.search(demo.text)
        assert target, demo.text
        target_auth, target_url = target.group(1), target.group(2)
        assert target_url == f"http://127.0.0.1:{target_port}/xAPI/statements"
        statement = send_through_gateway(demo, gateway_port)
        deadline = time.monotonic() + 30
        while True:  # the printed curl shows it at the target once forwarded
            status, arrived = xapi(f"{target_url}?statementId={statement['id']}", target_auth)
            if status == 200 and arrived != {"statements": []}:  # Ralph: 200, none yet
                break
            assert time.monotonic() < deadline, f"not at the target ({status}):\n{demo.text}"
            time.sleep(0.2)
        assert the_statement(arrived)["id"] == statement["id"]
        assert the_statement(arrived)["authority"]["mbox"] == "mailto:demo@example.com"
    assert_stopped(demo, gateway_port, ralph_port, target_port)


@pytest.mark.parametrize(
    ("taken", "variable", "role"),
    [
        ("port", "LRS_GATEWAY_DEMO_PORT", "the gateway"),
        ("ralph_port", "LRS_GATEWAY_DEMO_RALPH_PORT", "Ralph"),
        ("target_port", "LRS_GATEWAY_DEMO_TARGET_PORT", "the forwarding target"),
    ],
)
def test_demo_refuses_a_taken_port_before_installing(
    demo_copy: Path, taken: str, variable: str, role: str
) -> None:
    ports = {"port": free_port(), "ralph_port": free_port(), "target_port": free_port()}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ports[taken] = listener.getsockname()[1]
        # No venvs and no REUSE flag: were the port not checked first, it would install.
        result = subprocess.run(
            ["bash", "deploy/demo.sh", "--with-target"],
            cwd=demo_copy,
            env=demo_env(**ports),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1, result
    message = result.stderr
    assert f"demo: error: port {ports[taken]} on 127.0.0.1 for {role}" in message
    assert "is not free" in message
    assert f"{variable}=<port> bash deploy/demo.sh" in message
    assert not (demo_copy / ".venv").exists()
    assert not (demo_copy / "demo").exists()


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ({"port": "http"}, "LRS_GATEWAY_DEMO_PORT='http' is not a TCP port (1-65535)"),
        ({"ralph_port": "70000"}, "LRS_GATEWAY_DEMO_RALPH_PORT='70000' is not a TCP port"),
        (
            {"port": "8111", "ralph_port": "8111"},
            "LRS_GATEWAY_DEMO_RALPH_PORT and LRS_GATEWAY_DEMO_PORT are both 8111",
        ),
    ],
)
def test_demo_refuses_bad_port_settings(
    demo_copy: Path, ports: dict[str, str], message: str
) -> None:
    env = demo_env()
    env.update({f"LRS_GATEWAY_DEMO_{name.upper()}": value for name, value in ports.items()})
    result = subprocess.run(
        ["bash", "deploy/demo.sh"],
        cwd=demo_copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert not (demo_copy / ".venv").exists()
