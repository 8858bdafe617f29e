"""The `lrs-gateway` command, run for real as a subprocess (`python -m gateway ...`).

Every run gets a temporary working directory and an environment without any LRS_GATEWAY*
variable unless the test sets one. Starting Python and importing aiohttp costs about half a
second per run, so independent runs of one test are started together (`run_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import jwt
import pytest
import yaml
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from support import (
    FakeLRS,
    basic,
    credential,
    eventually,
    free_port,
    wait_until_serving,
    write_config,
)

from gateway import __version__
from gateway.auth.credentials import parse_credentials
from gateway.http.readiness import PROBE_REQUEST_ID

RUN_TIMEOUT = 20.0  # seconds; a run that takes this long is hung, not slow
HOMEPAGE = "https://lrs-gateway.example.org/accounts"
YAML_SECRET = "yaml-Secret-4711"
ENV_SECRET = "env-Secret-0815"


# -- running the command ---------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One invocation of `python -m gateway ARGS` in `cwd` with extra environment `env`."""

    cwd: Path
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """What one invocation did."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err

    def __str__(self) -> str:
        return (
            f"lrs-gateway {' '.join(self.args)} -> exit {self.code}\n"
            f"--- stdout\n{self.out}--- stderr\n{self.err}"
        )


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus every LRS_GATEWAY* variable, plus `extra`."""
    env = {
        key: value for key, value in os.environ.items() if not key.upper().startswith("LRS_GATEWAY")
    }
    env.update(extra or {})
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def run_all(*calls: Call) -> list[Result]:
    """Start every call at once, then collect them in order."""
    procs = [
        subprocess.Popen(
            command(*call.args),
            cwd=call.cwd,
            env=clean_env(call.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for call in calls
    ]
    results: list[Result] = []
    try:
        for call, proc in zip(calls, procs, strict=True):
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
            results.append(Result(call.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def run(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> Result:
    return run_all(Call(cwd, args, env or {}))[0]


def assert_clean_failure(result: Result, *expected: str) -> None:
    """Non-zero exit, every `expected` text in the output, and no traceback."""
    assert result.code != 0, result
    assert "Traceback" not in result.output, result
    for text in expected:
        assert text in result.output, f"{text!r} missing\n{result}"


def printed_entry(result: Result) -> dict[str, Any]:
    """The credential `auth add` printed; it must be the whole of stdout."""
    assert result.code == 0, result
    assert result.err == "", result
    entry: dict[str, Any] = json.loads(result.out)
    return entry


def entries_in(path: Path) -> list[dict[str, Any]]:
    """The credentials file's entries; the gateway's own parser must accept the file."""
    text = path.read_text(encoding="utf-8")
    parsed = parse_credentials(text, account_homepage=HOMEPAGE)
    assert parsed.warnings == []
    entries: list[dict[str, Any]] = json.loads(text)
    assert sorted(parsed.users) == sorted(e["username"] for e in entries)
    return entries


def checks(password: str, entry: Mapping[str, Any]) -> bool:
    return bcrypt.checkpw(password.encode(), str(entry["hash"]).encode())


def write_yaml(path: Path, raw: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(raw)), encoding="utf-8")
    return path


# -- auth add: printing -----------------------------------------------------------------------


def test_auth_add_prints_a_ralph_entry_for_each_kind_of_agent(tmp_path: Path) -> None:
    sha1 = hashlib.sha1(b"mailto:sha@example.com").hexdigest()  # noqa: S324 (xAPI's choice)
    cases: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--agent-mbox", "mailto:ann@example.com"), {"mbox": "mailto:ann@example.com"}),
        (("-S", sha1), {"mbox_sha1sum": sha1}),  # Ralph's short flags work too
        (
            ("--agent-openid", "https://openid.example.com/ann"),
            {"openid": "https://openid.example.com/ann"},
        ),
        (
            (
                "--agent-account-name",
                "ann-42",
                "--agent-account-homepage",
                "https://lms.example.com",
            ),
            {"account": {"name": "ann-42", "homePage": "https://lms.example.com"}},
        ),
    ]
    results = run_all(
        *(
            Call(
                tmp_path,
                (
                    "auth",
                    "add",
                    "-u",
                    f"ann{index}",
                    "-p",
                    f"pw-{index}",
                    "--cost",
                    "4",
                    "--scope",
                    "statements/write",
                    "-s",
                    "statements/read/mine",
                    *flags,
                ),
            )
            for index, (flags, _) in enumerate(cases)
        )
    )
    for index, ((_, agent), result) in enumerate(zip(cases, results, strict=True)):
        entry = printed_entry(result)
        assert list(entry) == ["username", "hash", "scopes", "agent"], result
        assert entry["username"] == f"ann{index}"
        assert entry["hash"].startswith("$2b$04$"), result
        assert checks(f"pw-{index}", entry)
        assert not checks("wrong", entry)
        assert entry["scopes"] == ["statements/write", "statements/read/mine"]
        assert entry["agent"] == agent, result
        parsed = parse_credentials(json.dumps([entry]), account_homepage=HOMEPAGE)
        assert parsed.warnings == []
        assert parsed.users[f"ann{index}"].agent == agent
    assert list(tmp_path.iterdir()) == []  # printing writes nothing


def test_auth_add_refuses_bad_flags_with_a_clear_message(tmp_path: Path) -> None:
    base = ("auth", "add", "-p", "pw", "--cost", "4")
    bob = ("-u", "bob")
    cases: list[tuple[tuple[str, ...], str]] = [
        (
            (*bob, "--agent-account-name", "bob"),
            "--agent-account-name needs --agent-account-homepage",
        ),
        (
            (
                *bob,
                "--agent-mbox",
                "mailto:bob@example.com",
                "--agent-account-homepage",
                "https://x.org",
            ),
            "--agent-account-homepage goes with --agent-account-name",
        ),
        (
            (
                *bob,
                "--agent-mbox",
                "mailto:bob@example.com",
                "--agent-openid",
                "https://id.example.com",
            ),
            "not allowed with argument",
        ),
        ((*bob, "--agent-mbox", "bob@example.com"), "agent.mbox: must be a mailto: IRI"),
        (("-u", "bo:b", "--agent-mbox", "mailto:bob@example.com"), "must not contain ':'"),
    ]
    results = run_all(*(Call(tmp_path, (*base, *flags)) for flags, _ in cases))
    for (_, message), result in zip(cases, results, strict=True):
        assert_clean_failure(result, message)
        assert message in result.err, result
        assert result.out == "", result
    assert list(tmp_path.iterdir()) == []


def test_auth_add_refuses_a_password_bcrypt_cannot_check_in_full(tmp_path: Path) -> None:
    # bcrypt reads 72 bytes: a longer password would also let in any that shares them.
    base = ("auth", "add", "-u", "bob", "--cost", "4", "--agent-mbox", "mailto:bob@example.com")
    users = tmp_path / "users.json"
    refused: list[tuple[tuple[str, ...], str]] = [
        (("-p", "a" * 73), "73 bytes long in UTF-8; bcrypt reads at most 72 bytes"),
        (("-p", "é" * 37), "74 bytes long"),  # 37 characters: the UTF-8 bytes count
        (("-w", "--file", str(users), "-p", "p" * 100), "100 bytes long"),
        (("-p", ""), "the password must not be empty"),
    ]
    *results, accepted = run_all(
        *(Call(tmp_path, (*base, *flags)) for flags, _ in refused),
        Call(tmp_path, (*base, "-p", "é" * 36)),
    )
    for (_, message), result in zip(refused, results, strict=True):
        assert_clean_failure(result, message)
        assert result.code == 2, result
        assert result.out == "", result
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert checks("é" * 36, printed_entry(accepted))  # exactly 72 bytes: fine


# -- auth add --write -------------------------------------------------------------------------


def test_auth_add_write_creates_appends_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "creds" / "users.json"
    add = ("auth", "add", "-w", "--file", str(path), "--cost", "4")
    # Without --file, the file is the config's credentials_file (relative to the config).
    config = write_yaml(
        tmp_path / "etc" / "gw.yaml", {"auth": {"basic": {"credentials_file": "users.json"}}}
    )
    first, by_config = run_all(
        Call(
            tmp_path,
            (
                *add,
                "-u",
                "alice",
                "-p",
                "old-pw",
                "-s",
                "all",
                "--agent-mbox",
                "mailto:alice@example.com",
            ),
        ),
        Call(
            tmp_path,
            (
                "auth",
                "add",
                "-w",
                "--config",
                str(config),
                "-u",
                "carol",
                "-p",
                "pw",
                "-s",
                "all",
                "--cost",
                "4",
                "--agent-mbox",
                "mailto:carol@example.com",
            ),
        ),
    )
    for result, written in ((first, path), (by_config, tmp_path / "etc" / "users.json")):
        assert result.code == 0, result
        assert result.out == f"added {entries_in(written)[0]['username']} in {written}\n"
        assert written.stat().st_mode & 0o777 == 0o600
    (alice,) = entries_in(path)
    assert checks("old-pw", alice)

    second = run(
        tmp_path,
        *add,
        "-u",
        "bob",
        "-p",
        "bob-pw",
        "-s",
        "statements/read",
        "--agent-openid",
        "https://id.example.com/bob",
    )
    assert second.code == 0, second
    assert "added bob" in second.out
    assert [e["username"] for e in entries_in(path)] == ["alice", "bob"]

    path.chmod(0o640)  # an operator's choice of mode is kept
    third = run(
        tmp_path,
        *add,
        "-u",
        "alice",
        "-p",
        "new-pw",
        "-s",
        "statements/write",
        "--agent-account-name",
        "alice",
        "--agent-account-homepage",
        "https://lms.example",
    )
    assert third.code == 0, third
    assert f"replaced alice in {path}" in third.out
    entries = entries_in(path)
    assert sorted(e["username"] for e in entries) == ["alice", "bob"]
    (alice,) = [e for e in entries if e["username"] == "alice"]
    assert checks("new-pw", alice)
    assert not checks("old-pw", alice)
    assert alice["scopes"] == ["statements/write"]
    assert alice["agent"] == {"account": {"name": "alice", "homePage": "https://lms.example"}}
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["users.json"]  # no temp files left


def test_auth_add_write_refuses_files_it_cannot_keep(tmp_path: Path) -> None:
    contents = {
        "rustici.txt": "alice:$2b$04$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQ:root\n",
        "broken.json": '[{"username": "alice",\n',
    }
    for name, text in contents.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    before = {name: (tmp_path / name).stat().st_mtime_ns for name in contents}
    results = run_all(
        *(
            Call(
                tmp_path,
                (
                    "auth",
                    "add",
                    "-w",
                    "--file",
                    name,
                    "-u",
                    "bob",
                    "-p",
                    "pw",
                    "--cost",
                    "4",
                    "--agent-mbox",
                    "mailto:bob@example.com",
                ),
            )
            for name in contents
        )
    )
    expected = ["is not a JSON credentials file", "not valid JSON"]
    for (name, text), message, result in zip(contents.items(), expected, results, strict=True):
        assert_clean_failure(result, name, message)
        assert (tmp_path / name).read_text(encoding="utf-8") == text
        assert (tmp_path / name).stat().st_mtime_ns == before[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(contents)


# -- auth add: the password prompt, on a real terminal ------------------------------------------

# getpass reads from /dev/tty, so the child gets a pseudo-terminal as its controlling terminal:
# a tiny trampoline claims it (TIOCSCTTY, allowed for a session leader) and execs the command.
TRAMPOLINE = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'gateway', *sys.argv[1:]])"
)


def read_until(fd: int, marker: bytes, deadline: float) -> bytes:
    """Read the terminal until `marker` shows up (or the deadline passes)."""
    data = b""
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} on the terminal; got {data!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"terminal closed before {marker!r}; got {data!r}"
            data += chunk
    return data


def read_rest(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("again", ["typed-s3cret", "typo-s3cret"])
def test_auth_add_prompts_twice_for_the_password_on_the_terminal(
    tmp_path: Path, again: str
) -> None:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            TRAMPOLINE,
            "auth",
            "add",
            "-u",
            "tty-user",
            "--cost",
            "4",
            "--agent-mbox",
            "mailto:tty@example.com",
        ],
        cwd=tmp_path,
        env=clean_env(),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        screen = read_until(master, b"Password: ", deadline)
        os.write(master, b"typed-s3cret\n")
        screen += read_until(master, b"Password (again): ", deadline)
        os.write(master, again.encode() + b"\n")
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
        screen += read_rest(master)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"s3cret" not in screen  # no echo
    assert b"Traceback" not in screen
    if again == "typed-s3cret":
        assert proc.returncode == 0, screen
        entry = json.loads(out)
        assert entry["username"] == "tty-user"
        assert checks("typed-s3cret", entry)
    else:
        assert proc.returncode != 0
        assert b"the passwords differ" in screen
        assert out == b""


# -- check-config and --version -----------------------------------------------------------------


def good_setup(directory: Path, storage: Mapping[str, Any] | None = None) -> Path:
    """config.yaml + auth.json (one user) in `directory`; returns the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    users = [credential("alice", "alice-pw", ["all"])]
    (directory / "auth.json").write_text(json.dumps(users), encoding="utf-8")
    return write_yaml(
        directory / "config.yaml",
        {
            "storage": {"url": "http://127.0.0.1:8100/xAPI/", **(storage or {})},
            "auth": {"basic": {"credentials_file": "auth.json"}},
        },
    )


def test_check_config_accepts_a_good_setup_found_every_way(tmp_path: Path) -> None:
    from_yaml = good_setup(
        tmp_path / "yaml", {"basic_username": "gw", "basic_password": YAML_SECRET}
    )
    # Valid only with the password from the environment (username and password go together).
    from_env = good_setup(tmp_path / "env", {"basic_username": "gw"})
    secret = {"LRS_GATEWAY__STORAGE__BASIC_PASSWORD": ENV_SECRET}
    results = run_all(
        Call(tmp_path, ("check-config", "--config", str(from_yaml))),
        Call(
            tmp_path,
            ("--config", str(from_env), "check-config"),
            {**secret, "LRS_GATEWAY_CONFIG": str(tmp_path / "missing.yaml")},
        ),  # --config wins
        Call(tmp_path, ("check-config",), {**secret, "LRS_GATEWAY_CONFIG": str(from_env)}),
        Call(tmp_path, ("--version",)),
    )
    for result in results[:3]:
        assert result.code == 0, result
        assert result.out == "ok\n", result
        assert result.err == "", result
    assert results[3].code == 0, results[3]
    assert results[3].out.strip() == f"lrs-gateway {__version__}"
    for result in results:
        assert YAML_SECRET not in result.output, result
        assert ENV_SECRET not in result.output, result


def test_check_config_names_the_file_and_the_bad_key(tmp_path: Path) -> None:
    unknown = write_yaml(tmp_path / "unknown.yaml", {"storage": {"urll": "http://x/"}})
    typed = write_yaml(tmp_path / "typed.yaml", {"server": {"port": "eighty"}})
    results = run_all(
        Call(tmp_path, ("check-config", "--config", str(unknown))),
        Call(tmp_path, ("check-config", "--config", str(typed))),
    )
    assert_clean_failure(results[0], f"error: {unknown}: storage.urll: unknown key")
    assert_clean_failure(results[1], f"error: {typed}: server.port: expected an integer")
    for result in results:
        assert result.code == 1, result  # a problem found; 2 is for a bad command line
        # The missing credentials file too: every problem at once.
        assert "auth.json: cannot read the credentials file" in result.out, result
        assert result.out.endswith("2 problems found\n"), result
        assert result.err == "", result


def test_check_config_reports_credentials_file_problems(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("missing", "broken", "rustici")}
    for directory in dirs.values():
        good_setup(directory)
    (dirs["missing"] / "auth.json").unlink()
    (dirs["broken"] / "auth.json").write_text('[{"username": ', encoding="utf-8")
    (dirs["rustici"] / "auth.json").write_text("bob:plain-Text-pw:root\n", encoding="utf-8")
    missing, broken, rustici = run_all(
        *(
            Call(tmp_path, ("check-config", "--config", str(directory / "config.yaml")))
            for directory in dirs.values()
        )
    )
    assert_clean_failure(
        missing, str(dirs["missing"] / "auth.json"), "cannot read the credentials file"
    )
    assert_clean_failure(broken, str(dirs["broken"] / "auth.json"), "not valid JSON")
    for result in (missing, broken):
        assert "ok" not in result.out.split(), result
    # A plain-text Rustici secret is usable but worth a warning; the secret is not shown.
    assert rustici.code == 0, rustici
    assert "plain-text secret" in rustici.out
    assert rustici.out.endswith("ok\n")
    assert "plain-Text-pw" not in rustici.output


def test_check_config_never_shows_the_storage_password_of_a_bad_config(tmp_path: Path) -> None:
    bad = write_yaml(
        tmp_path / "bad.yaml",
        {
            "storage": {
                "basic_username": "gw",
                "basic_password": YAML_SECRET,
                "timeout": "soon",
                "bogus": YAML_SECRET,
            },
            "server": {"port": "eighty"},
        },
    )
    alone = write_yaml(tmp_path / "alone.yaml", {"storage": {"basic_password": YAML_SECRET}})
    env_only = good_setup(tmp_path / "env", {"basic_username": "gw"})
    results = run_all(
        Call(tmp_path, ("check-config", "--config", str(bad))),
        Call(tmp_path, ("check-config", "--config", str(alone))),
        Call(
            tmp_path,
            ("check-config", "--config", str(env_only)),
            {
                "LRS_GATEWAY__STORAGE__BASIC_PASSWORD": ENV_SECRET,
                "LRS_GATEWAY__STORAGE__TIMEOUT": "soon",
                "LRS_GATEWAY__SERVER__PORTT": "1",
            },
        ),
        # The variable is named, as the file and key are for YAML (see the test above).
    )
    assert_clean_failure(results[0], "storage.timeout", "storage.bogus: unknown key", "server.port")
    assert_clean_failure(results[1], "basic_username and basic_password go together")
    assert_clean_failure(
        results[2],
        "environment LRS_GATEWAY__STORAGE__TIMEOUT: expected a number",
        "LRS_GATEWAY__SERVER__PORTT: unknown setting",
    )
    for result in results:
        assert YAML_SECRET not in result.output, result
        assert ENV_SECRET not in result.output, result


def test_check_config_hides_a_password_that_yaml_reads_as_a_number(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path / "config.yaml",
        {"storage": {"basic_username": "gw", "basic_password": 4711081512}},
    )
    result = run(tmp_path, "check-config", "--config", str(config))
    assert_clean_failure(result, "storage.basic_password: expected a string")
    assert "4711081512" not in result.output, result


# -- serve --------------------------------------------------------------------------------------


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):  # reset: caught mid-close
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def test_serve_drains_in_flight_requests_on_sigterm(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    reached, release = asyncio.Event(), asyncio.Event()

    async def slow_storage(request: web.Request, body: bytes) -> web.StreamResponse:
        # The gateway's own calls (readiness probe, about) answer at once.
        if request.headers.get("X-Request-ID") == PROBE_REQUEST_ID:
            return web.json_response({"statements": [], "more": ""})
        if request.path.endswith("/about"):
            return web.json_response({"version": ["1.0.3"]})
        reached.set()
        # Held until the test has seen the listener closed: in flight for as long as needed.
        await asyncio.wait_for(release.wait(), RUN_TIMEOUT)
        return web.json_response(
            {"statements": [], "more": ""}, headers={"X-Experience-API-Version": "1.0.3"}
        )

    fake = FakeLRS(slow_storage)
    storage = await aiohttp_server(fake.app())
    port = free_port()
    write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        [credential("alice", "alice-pw", ["all"])],
        {"server": {"port": port, "shutdown_timeout": 10}, "storage": {"basic_username": "gw"}},
        environ={"LRS_GATEWAY__STORAGE__BASIC_PASSWORD": ENV_SECRET},
    )
    proc = await asyncio.create_subprocess_exec(
        *command("--config", str(tmp_path / "config.yaml"), "serve"),
        cwd=tmp_path,
        env=clean_env({"LRS_GATEWAY__STORAGE__BASIC_PASSWORD": ENV_SECRET}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_serving(proc, f"{base}/__lbheartbeat__", RUN_TIMEOUT)

        async def get_statements() -> tuple[int, Any]:
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"{base}/xAPI/statements", headers=basic("alice", "alice-pw")
                ) as response,
            ):
                return response.status, await response.json()

        in_flight = asyncio.create_task(get_statements())
        await asyncio.wait_for(reached.wait(), RUN_TIMEOUT)
        proc.send_signal(signal.SIGTERM)

        # The listener closes at once; the request already inside is still being served.
        await eventually(lambda: refuses_connections(port), 1.0, "no new connections after SIGTERM")
        assert not in_flight.done()
        release.set()

        status, body = await asyncio.wait_for(in_flight, RUN_TIMEOUT)
        assert status == 200
        assert body == {"statements": [], "more": ""}
        code = await asyncio.wait_for(proc.wait(), 5)
    finally:
        release.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out, err = await proc.communicate()
    logs = (out + err).decode()
    assert code == 0, logs
    assert await refuses_connections(port)
    assert "Traceback" not in logs
    assert ENV_SECRET not in logs
    # The operator reads one line when the drain begins and one when it is over.
    assert logs.count("stopping: no new connections") == 1, logs
    assert logs.count(": stopped") == 1, logs
    assert logs.index("stopping: no new connections") < logs.index(": stopped")
    (seen,) = fake.seen  # the gateway used its own storage credential, from the environment
    assert seen.headers["Authorization"] == basic("gw", ENV_SECRET)["Authorization"]


def test_serve_refuses_to_start_with_a_broken_credentials_file(tmp_path: Path) -> None:
    config = good_setup(tmp_path, {"basic_username": "gw", "basic_password": YAML_SECRET})
    (tmp_path / "auth.json").write_text('[{"username": "alice", "hash": ', encoding="utf-8")
    result = run(tmp_path, "serve")  # ./config.yaml
    assert config == tmp_path / "config.yaml"
    assert_clean_failure(
        result, "configuration error", str(tmp_path / "auth.json"), "not valid JSON"
    )
    assert YAML_SECRET not in result.output, result
    assert "listening" not in result.output, result


def test_serve_on_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "auth.json").write_text(json.dumps([credential("u", "p", ["all"])]))
        config = write_yaml(tmp_path / "config.yaml", {"server": {"port": port}})
        result = run(tmp_path, "serve", "--config", str(config))
    assert result.code == 1, result
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
    assert "listening on" not in result.output


def test_token_issue_from_the_cli(tmp_path: Path) -> None:
    secret = "cli-token-secret-that-is-32-bytes-long"
    (tmp_path / "auth.json").write_text(
        json.dumps([credential("reader", "p", ["statements/read"])])
    )
    config = write_yaml(
        tmp_path / "config.yaml",
        {
            "auth": {
                "backends": ["basic", "token"],
                "tokens": {"secret": secret, "max_lifetime": 120},
            }
        },
    )
    result = run(
        tmp_path,
        "--config",
        str(config),
        "token",
        "issue",
        "-u",
        "reader",
        "-s",
        "statements/read/mine",
        "--expires-in",
        "9999",
    )
    assert result.code == 0, result
    issued = json.loads(result.out)
    claims = jwt.decode(issued["token"], secret, algorithms=["HS256"], audience="lrs-gateway")
    assert claims["scope"] == "statements/read/mine"
    assert claims["exp"] - claims["iat"] == 120
    wider = run(tmp_path, "--config", str(config), "token", "issue", "-u", "reader", "-s", "all")
    assert wider.code == 1
    assert "does not hold: all" in wider.err
    assert "Traceback" not in wider.output


async def test_serve_closes_connections_whose_headers_never_come(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "auth.json").write_text(json.dumps([credential("u", "p", ["all"])]))
    write_yaml(
        tmp_path / "config.yaml", {"server": {"port": port}, "limits": {"header_timeout": 1}}
    )
    proc = await asyncio.create_subprocess_exec(
        *command("--config", str(tmp_path / "config.yaml"), "serve"),
        cwd=tmp_path,
        env=clean_env({}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until_serving(proc, f"http://127.0.0.1:{port}/__lbheartbeat__", RUN_TIMEOUT)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        await writer.drain()
        started = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), timeout=5)  # EOF: closed by the gateway
        assert rest == b""
        assert 0.8 <= time.monotonic() - started < 4
        writer.close()
        # a complete request on a new connection is answered as usual
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(), timeout=5)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


# -- issue 15 §3 and §4: a CLI that never makes you guess --------------------------------------


def test_exit_codes_are_in_the_help(tmp_path: Path) -> None:
    for result in run_all(
        Call(tmp_path, ("--help",)),
        Call(tmp_path, ("check-config", "-h")),
        Call(tmp_path, ("lockout", "clear", "--help")),
    ):
        assert result.code == 0, result
        assert "exit codes:" in result.out
        assert "0  ok" in result.out
        assert "1  a problem" in result.out
        assert "2  a usage error" in result.out
    usage = run(tmp_path, "check-config", "--no-such-flag")
    assert usage.code == 2, usage


def test_auth_add_checks_everything_before_asking_for_the_password(tmp_path: Path) -> None:
    # No -p: were it to prompt, "Password" would show; it must stop first.
    broken = write_yaml(tmp_path / "broken.yaml", {"storage": {"urll": "x"}})
    (tmp_path / "rustici.txt").write_text("alice:$2b$04$abc:root\n", encoding="utf-8")
    base = ("auth", "add", "-u", "bob", "--cost", "4", "--agent-mbox", "mailto:bob@example.com")
    scope, config, target_file = run_all(
        Call(tmp_path, (*base, "-s", "statements/write", "-s", "statments/read")),
        Call(tmp_path, (*base, "-w", "--config", str(broken))),
        Call(tmp_path, (*base, "--file", "rustici.txt")),
    )
    assert_clean_failure(
        scope, "unknown scope: statments/read", "valid: ", "statements/read", "all/read", "admin"
    )
    assert scope.code == 2, scope
    assert_clean_failure(config, "storage.urll: unknown key")
    assert config.code == 1, config
    assert_clean_failure(target_file, "rustici.txt is not a JSON credentials file")
    assert target_file.code == 1, target_file
    for result in (scope, config, target_file):
        assert "Password" not in result.output, result


def test_auth_add_list_remove_with_a_file_and_no_config(tmp_path: Path) -> None:
    assert not (tmp_path / "config.yaml").exists()
    users = tmp_path / "users.json"
    add = ("auth", "add", "--file", str(users), "--cost", "4")  # --file: written, no -w needed
    results = [
        run(
            tmp_path,
            *add,
            "-u",
            name,
            "-p",
            f"{name}-pw",
            "-s",
            scope,
            "--agent-mbox",
            f"mailto:{name}@example.com",
        )
        for name, scope in (("ann", "all"), ("ben", "statements/read/mine"))
    ]
    for result in results:
        assert result.code == 0, result
    listed, as_json = run_all(
        Call(tmp_path, ("auth", "list", "--file", str(users))),
        Call(tmp_path, ("auth", "list", "--file", str(users), "--json")),
    )
    assert listed.code == 0, listed
    lines = listed.out.splitlines()
    assert lines[0].split() == ["username", "scopes", "agent"]
    assert lines[1].split()[:2] == ["ann", "all"]
    assert '"mbox":"mailto:ann@example.com"' in lines[1]
    assert "$2b$" not in listed.out + as_json.out  # never a hash
    assert [u["username"] for u in json.loads(as_json.out)] == ["ann", "ben"]
    removed, missing = run_all(
        Call(tmp_path, ("auth", "remove", "-u", "ann", "--file", str(users))),
        Call(tmp_path, ("auth", "remove", "-u", "zoe", "--file", str(users))),
    )
    assert removed.code == 0, removed
    assert removed.out == f"removed ann from {users}\n"
    assert [e["username"] for e in entries_in(users)] == ["ben"]
    assert_clean_failure(missing, "no user 'zoe'")
    assert missing.code == 1


def test_check_config_reports_everything_at_once(tmp_path: Path) -> None:
    write_yaml(
        tmp_path / "config.yaml",
        {
            "storage": {"url": "http://127.0.0.1:8100/", "timeout": "soon"},
            "xapi": {"versions": ["1.0.3", "1.1"]},
            "auth": {"basic": {"credentials_file": "auth.json"}},
        },
    )
    (tmp_path / "auth.json").write_text('{"username": "alice"', encoding="utf-8")
    result = run(
        tmp_path,
        "check-config",
        env={
            "LRS_GATEWAY__AUTH__BASIC__CACHE_TTL": "-1",
            "LRS_GATEWAY_STORAGE_BASIC_PASSWORD": ENV_SECRET,
        },
    )
    assert result.code == 1, result
    config = "config.yaml"  # as found: ./config.yaml
    assert result.out.splitlines() == [
        f"error: {config}: storage.timeout: expected a number, got 'soon'",
        f"error: {config}: xapi.versions: '1.1' is not an xAPI version (1.0.3 takes every "
        "1.0.x, 2.0.0 is xAPI 2.0)",
        "error: environment LRS_GATEWAY__AUTH__BASIC__CACHE_TTL: auth.basic.cache_ttl: must be "
        "greater than 0",
        f"error: {tmp_path / 'auth.json'}: not valid JSON: Expecting ',' delimiter at line 1, "
        "column 21",
        "warning: environment LRS_GATEWAY_STORAGE_BASIC_PASSWORD: not a setting (ignored); "
        "did you mean LRS_GATEWAY__STORAGE__BASIC_PASSWORD?",
        f"warning: {config}: storage.url: its path has no /xAPI/; it must be the storage "
        "LRS's xAPI base, e.g. http://127.0.0.1:8100/xAPI/",
        "4 problems found",
    ], result
    assert ENV_SECRET not in result.output
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("storage:\n  url: x\n   timeout: 3\n", encoding="utf-8")
    result = run(tmp_path, "check-config", "--config", str(broken_yaml))
    assert_clean_failure(
        result, "not valid YAML at line 3, column 11: mapping values are not allowed here"
    )


def test_config_show_says_where_each_value_came_from(tmp_path: Path) -> None:
    good_setup(tmp_path, {"basic_username": "gw", "basic_password": YAML_SECRET})
    target = {
        "name": "t",
        "is_active": True,
        "url": "http://x/xAPI/statements",
        "max_retries": 1,
        "timeout": 1,
        "headers": {"X-Api-Key": YAML_SECRET},
    }
    result = run(
        tmp_path,
        "config",
        "show",
        env={
            "LRS_GATEWAY__SERVER__PORT": "9100",
            "LRS_GATEWAY_XAPI_FORWARDINGS": json.dumps([target]),
            "LRS_GATEWAY__FORWARDINGS__T__BEARER_TOKEN": ENV_SECRET,
        },
    )
    assert result.code == 0, result
    shown = {line.partition(":")[0]: line for line in result.out.splitlines()[1:]}
    config = "config.yaml"  # as found: ./config.yaml
    assert shown["server.port"].split() == [
        "server.port:",
        "9100",
        "#",
        "env",
        "LRS_GATEWAY__SERVER__PORT",
    ]
    assert shown["server.host"].split() == ["server.host:", '"127.0.0.1"', "#", "default"]
    assert shown["storage.basic_password"].split()[1:] == ['"**********"', "#", f"{config}:5"]
    assert shown["forwardings[0].bearer_token"].split()[-1] == (
        "LRS_GATEWAY__FORWARDINGS__T__BEARER_TOKEN"
    )
    assert shown["forwardings[0].url"].split()[-1] == "LRS_GATEWAY_XAPI_FORWARDINGS"
    assert '{"X-Api-Key": "**********"}' in shown["forwardings[0].headers"]
    assert YAML_SECRET not in result.output
    assert ENV_SECRET not in result.output
    as_json = json.loads(run(tmp_path, "config", "show", "--json").out)
    assert as_json["storage.basic_username"] == {"value": "gw", "from": f"{config}:6"}


async def test_check_config_probe_asks_storage_and_every_target(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    async def storage_script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.headers.get("Authorization") != basic("gw", ENV_SECRET)["Authorization"]:
            return web.json_response({"detail": "Invalid authentication"}, status=401)
        return web.json_response({"statements": [], "more": ""})

    async def target_script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer good-token":
            return web.Response(status=401)
        assert body == b"[]"  # an empty batch: nothing stored
        return web.json_response([])

    storage = await aiohttp_server(FakeLRS(storage_script).app())
    target = await aiohttp_server(FakeLRS(target_script).app())
    good_setup(tmp_path, {"url": str(storage.make_url("/xAPI/")), "basic_username": "gw"})
    targets = [
        {
            "name": name,
            "is_active": True,
            "max_retries": 1,
            "timeout": 1,
            "url": str(target.make_url(path)),
            "bearer_token": token,
        }
        for name, path, token in (
            ("good", "/xAPI/statements", "good-token"),
            ("refused", "/xAPI/statements", "bad-token"),
        )
    ]
    env = {
        "LRS_GATEWAY_XAPI_FORWARDINGS": json.dumps(targets),
        "LRS_GATEWAY__STORAGE__BASIC_PASSWORD": ENV_SECRET,
    }
    proc = await asyncio.create_subprocess_exec(
        *command("check-config", "--probe", "--timeout", "3"),
        cwd=tmp_path,
        env=clean_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    lines = out.decode().splitlines()
    assert proc.returncode == 1, (out + err).decode()
    assert "probe: storage: ok: /xAPI/: credential accepted" in lines
    assert (
        "probe: forwardings target good: ok: answered 200 to an empty batch with its bearer_token"
    ) in lines
    assert (
        "probe: forwardings target refused: FAILED: answered 401: it refuses its "
        "bearer_token; fix the target's credential (statements wait in the backlog "
        "meanwhile)"
    ) in lines
    assert lines[-1] == "1 problem found"
    env["LRS_GATEWAY__STORAGE__BASIC_PASSWORD"] = "wrong-password"
    proc = await asyncio.create_subprocess_exec(
        *command("check-config", "--probe"),
        cwd=tmp_path,
        env=clean_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    assert "probe: storage: FAILED: the storage LRS refused the gateway's credential" in (
        out.decode()
    )
    assert b"wrong-password" not in out


def test_token_issue_answers_like_post_token(tmp_path: Path) -> None:
    secret = "cli-token-secret-that-is-32-bytes-long"
    (tmp_path / "auth.json").write_text(json.dumps([credential("boss", "p", ["all", "admin"])]))
    write_yaml(
        tmp_path / "config.yaml",
        {"auth": {"backends": ["basic", "token"], "tokens": {"secret": secret}}},
    )
    issued, admin = run_all(
        Call(
            tmp_path,
            ("token", "issue", "-u", "boss", "-s", "statements/read", "--expires-in", "60"),
        ),
        Call(tmp_path, ("token", "issue", "-u", "boss", "-s", "admin")),
    )
    assert issued.code == 0, issued
    answer = json.loads(issued.out)
    assert sorted(answer) == ["expires_at", "token", "token_type"]
    assert answer["token_type"] == "Bearer"
    claims = jwt.decode(answer["token"], secret, algorithms=["HS256"], audience="lrs-gateway")
    assert answer["expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"]))
    assert_clean_failure(admin, "a token never holds admin")
    assert admin.code == 1


def test_forwarding_status_shows_state_and_replay_refuses_unknown_targets(tmp_path: Path) -> None:
    from gateway.forwarding.forwarder import OUTBOX_FILE
    from gateway.forwarding.store import OutboxStore, TargetState

    good_setup(tmp_path)
    with (tmp_path / "config.yaml").open("a", encoding="utf-8") as handle:
        handle.write("data_dir: data\n")
    store = OutboxStore(tmp_path / "data" / OUTBOX_FILE)
    try:
        seqs = store.write_pending([("7e3c2b4e-1d2a-4a5b-9c1d-0e2f3a4b5c6d", b"{}", None)])
        store.mark_ready(seqs, [("lrs2", 1000)])
        store.set_state(
            "lrs2", TargetState(up=False, since=1_700_000_000.0, reason="connection refused")
        )
    finally:
        store.close()
    status, replay = run_all(
        Call(tmp_path, ("forwarding", "status")),
        Call(tmp_path, ("forwarding", "replay", "--target", "lrs3")),
    )
    assert status.code == 0, status
    header, row, *rest = status.out.splitlines()
    assert header.split() == [
        "target",
        "state",
        "backlog",
        "oldest",
        "delivered",
        "retries",
        "dead",
        "letters",
        "filtered",
    ]
    assert row.split()[:3] == ["lrs2", "down", "1"]
    assert "lrs2: down since 2023-11-14T22:13:20Z: connection refused" in rest
    assert_clean_failure(replay, "no forwarding target named 'lrs3' (known: lrs2)")
    assert replay.code == 1


async def test_serve_takes_host_port_and_log_flags_after_the_command(tmp_path: Path) -> None:
    port = free_port()
    good_setup(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        *command(
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-format",
            "json",
            "--config",
            str(tmp_path / "config.yaml"),
        ),
        cwd=tmp_path,
        env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_serving(proc, f"http://127.0.0.1:{port}/__lbheartbeat__", RUN_TIMEOUT)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), RUN_TIMEOUT)
    out, err = await proc.communicate()
    logs = [json.loads(line) for line in (out + err).decode().splitlines() if line.strip()]
    assert any(
        f"listening on http://127.0.0.1:{port}/" in entry.get("message", "") for entry in logs
    ), logs
