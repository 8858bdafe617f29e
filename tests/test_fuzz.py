"""The atheris harnesses in tests/fuzz, each run briefly; and the bugs they found, pinned.

Each harness runs as a subprocess (all at once, a few seconds each: CI's short run; the long
run is in tests/fuzz/README.md). A harness that finds an input breaking an invariant exits
non-zero: the test fails and prints the input, its base64 and the command that replays it.
The bugs the harnesses found are fixed; each keeps a regression test below. A bug found
later may be listed in tests/fuzz/fuzzing.py KNOWN_BUGS (tolerated by the harnesses) with a
strict xfail test here, until it is fixed.
"""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import FakeLRS, basic, credential, write_config

from gateway.auth.credentials import CredentialsError, parse_credentials
from gateway.config.settings import load_config
from gateway.errors import BadRequest, ConfigError
from gateway.http.app import create_app
from gateway.xapi.statements import prepare_post

FUZZ_DIR = Path(__file__).parent / "fuzz"
MAX_TOTAL_TIME = 8  # seconds of fuzzing per harness; they run side by side
# Runs per harness: about what each does in MAX_TOTAL_TIME on one core.
HARNESSES = {
    "authorization": 6000,
    "config": 2000,
    "credentials": 20000,
    "more": 20000,
    "multipart": 10000,
    "statements": 20000,
}
Client = TestClient[web.Request, web.Application]


# -- the harnesses --------------------------------------------------------------------------


@dataclass
class Run:
    """One harness started as `python tests/fuzz/fuzz_NAME.py CORPUS flags`."""

    name: str
    work: Path
    process: subprocess.Popen[bytes]
    started: float

    @property
    def output(self) -> str:
        return (self.work / "output.txt").read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every harness, started together (the machine's cores share the work)."""
    pytest.importorskip("atheris")
    runs: dict[str, Run] = {}
    try:
        for name, count in HARNESSES.items():
            work = tmp_path_factory.mktemp(f"fuzz-{name}")
            command = [
                sys.executable,
                str(FUZZ_DIR / f"fuzz_{name}.py"),
                str(work / "corpus"),
                f"-runs={count}",
                f"-max_total_time={MAX_TOTAL_TIME}",
                "-timeout=20",
                "-rss_limit_mb=1024",
                f"-artifact_prefix={work}/",
                "-print_final_stats=1",
            ]
            with (work / "output.txt").open("wb") as output:  # a file: no pipe to fill up
                process = subprocess.Popen(
                    command,
                    cwd=work,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            runs[name] = Run(name, work, process, time.monotonic())
        yield runs
    finally:
        for run in runs.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()


def found_inputs(work: Path) -> str:
    """What libFuzzer kept of a failure: each input, readable and in base64."""
    lines = []
    for path in sorted(work.glob("*-*")):
        if path.is_file() and path.name.split("-")[0] in ("crash", "timeout", "oom", "leak"):
            data = path.read_bytes()
            lines += [
                f"--- {path.name} ({len(data)} bytes)",
                repr(data[:3000]),
                f"base64: {base64.b64encode(data).decode()}",
            ]
    return "\n".join(lines) or "(no input file was written)"


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_fuzz_harness_holds_its_invariants(fuzz_runs: dict[str, Run], name: str) -> None:
    run = fuzz_runs[name]
    code = run.process.wait(timeout=60)
    took = time.monotonic() - run.started
    output = run.output
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", output))
    assert code == 0, (
        f"fuzz_{name}.py found an input that breaks an invariant (exit {code}, {took:.1f} s)\n"
        f"{found_inputs(run.work)}\n"
        f"replay: write the input to a file F, then {Path(sys.executable).name} "
        f"tests/fuzz/fuzz_{name}.py F\n--- output (end)\n{output[-6000:]}"
    )
    assert int(stats.get("number_of_executed_units", 0)) > 100, output[-3000:]


def test_every_known_bug_has_its_reproducing_test() -> None:
    sys.path.insert(0, str(FUZZ_DIR))
    try:
        import fuzzing
    finally:
        sys.path.remove(str(FUZZ_DIR))
    here = Path(__file__).read_text(encoding="utf-8")
    for name, text in fuzzing.KNOWN_BUGS.items():
        (test,) = re.findall(r"test_fuzz\.py::(\w+)", text)
        assert f"def {test}(" in here, f"known bug {name}: no test {test}"


# -- the bugs found, each pinned --------------------------------------------------------------

WRITER = credential("writer", "writer-pw", ["all"])
MINE = credential("mine", "mine-pw", ["statements/read/mine"])


async def gateway(
    tmp_path: Path,
    aiohttp_server: Any,
    aiohttp_client: Any,
    script: Any = None,
    users: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Client:
    storage: TestServer = await aiohttp_server(FakeLRS(script).app())
    config = write_config(tmp_path, str(storage.make_url("/xAPI/")), users or [WRITER, MINE], extra)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


def statement(**extra: Any) -> dict[str, Any]:
    return {
        "actor": {"mbox": "mailto:learner@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course"},
        **extra,
    }


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_a_deeply_nested_statement_is_a_400_not_a_500(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client = await gateway(tmp_path, aiohttp_server, aiohttp_client)
    body = json.dumps(statement(result={"extensions": {"http://x.org/e": nested(300)}}))
    response = await client.post(
        "/xAPI/statements",
        data=body,
        headers={**basic("writer", "writer-pw"), "Content-Type": "application/json"},
    )
    assert response.status == 400, await response.text()


async def test_a_deeply_nested_stored_statement_is_not_a_500(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    stored = statement(
        id="3f1c2b9e-8d4a-4f6b-9c1d-2e3f4a5b6c7d",
        result={"extensions": {"http://x.org/e": nested(300)}},
    )

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        text = json.dumps({"statements": [stored], "more": ""})
        return web.Response(text=text, content_type="application/json")

    client = await gateway(tmp_path, aiohttp_server, aiohttp_client, script)
    response = await client.get("/xAPI/statements", headers=basic("writer", "writer-pw"))
    assert response.status in (200, 502), await response.text()


@pytest.mark.parametrize(
    "more", ["http://[::1/xAPI/statements?page=2", "http://[x]@/xAPI/s", 5, ["x"], {"a": 1}]
)
async def test_an_unparsable_more_link_is_a_502_not_a_500(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, more: Any
) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response({"statements": [], "more": more})

    client = await gateway(tmp_path, aiohttp_server, aiohttp_client, script)
    response = await client.get("/xAPI/statements", headers=basic("writer", "writer-pw"))
    assert response.status == 502, await response.text()


def resolved(path: str) -> str:
    """Where a client following the link ends up (dot segments removed, %2e decoded)."""
    from urllib.parse import unquote

    segments: list[str] = []
    for segment in unquote(path).replace("\\", "/").split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment != ".":
            segments.append(segment)
    return "/".join(segments)


@pytest.mark.parametrize(
    "more",
    ["/xAPI/statements/../../admin/forwarding", "/xAPI/%2e%2e/metrics", "/xAPI/..\\..\\whoami"],
)
async def test_a_more_link_never_leads_out_of_xapi(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, more: str
) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response({"statements": [], "more": more})

    client = await gateway(tmp_path, aiohttp_server, aiohttp_client, script)
    response = await client.get("/xAPI/statements", headers=basic("writer", "writer-pw"))
    if response.status == 200:
        link = (await response.json())["more"]
        assert resolved(link).startswith("/xAPI/"), link
    else:
        assert response.status == 502, await response.text()


async def test_a_boundary_outside_latin1_is_a_400_not_a_500(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client = await gateway(tmp_path, aiohttp_server, aiohttp_client)
    body = (
        b"--\xe2\x82\xacx\r\nContent-Type: application/json\r\n\r\n"
        + json.dumps(statement()).encode()
        + b"\r\n--\xe2\x82\xacx--\r\n"
    )
    response = await client.post(
        "/xAPI/statements",
        data=body,
        headers={
            **basic("writer", "writer-pw"),
            "Content-Type": "multipart/mixed; boundary=\u20acx",
        },
    )
    assert response.status == 400, await response.text()


def test_a_batch_with_one_id_in_two_cases_is_refused() -> None:
    uid = "3f1c2b9e-8d4a-4f6b-9c1d-2e3f4a5b6c7d"
    with pytest.raises(BadRequest):
        prepare_post(
            [statement(id=uid), statement(id=uid.upper())], {"mbox": "mailto:caller@example.org"}
        )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("storage", "timeout"),
        ("rate_limit", "per_ip_rate"),
        ("lockout", "window"),
        ("limits", "keepalive_timeout"),
    ],
)
def test_config_refuses_nan(tmp_path: Path, section: str, key: str) -> None:
    """Found by fuzz_config.py (NaN passed every `> 0` check); fixed, kept as a check."""
    path = tmp_path / "config.yaml"
    for value in (math.nan, math.inf):
        path.write_text(yaml.safe_dump({section: {key: value}}))
        with pytest.raises(ConfigError, match=f"{section}.{key}"):
            load_config(path, {})


@pytest.mark.parametrize("where", ["yaml", "environment"])
def test_config_refuses_a_huge_integer_cleanly(tmp_path: Path, where: str) -> None:
    huge = 10**400
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": {"timeout": huge}} if where == "yaml" else {}))
    environ = {"LRS_GATEWAY__STORAGE__TIMEOUT": str(huge)} if where == "environment" else {}
    with pytest.raises(ConfigError, match=r"storage\.timeout|STORAGE__TIMEOUT"):
        load_config(path, environ)


TOKEN_SECRET = "a-token-signing-secret-of-32-bytes-or-more"


async def test_a_signed_token_with_string_times_is_a_401(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client = await gateway(
        tmp_path,
        aiohttp_server,
        aiohttp_client,
        auth={"backends": ["basic", "token"], "tokens": {"secret": TOKEN_SECRET}},
    )
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "lrs-gateway",
            "aud": "lrs-gateway",
            "sub": "writer",
            "iat": str(now),
            "exp": now + 60,
            "scope": "all",
            "agent": {"mbox": "mailto:w@example.com"},
        },
        TOKEN_SECRET,
        algorithm="HS256",
    )
    response = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401, await response.text()


async def test_a_hash_with_an_impossible_cost_is_refused(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    broken = credential("old", "old-pw", ["all"])
    broken["hash"] = "$2b$99$" + broken["hash"][7:]
    try:
        parse_credentials(json.dumps([broken]), account_homepage="https://x.example")
    except CredentialsError:
        return  # refused when the file is read (check-config says so): fixed that way
    client = await gateway(tmp_path, aiohttp_server, aiohttp_client, users=[WRITER, broken])
    response = await client.get("/xAPI/statements", headers=basic("nobody", "guess"))
    assert response.status == 401, await response.text()
