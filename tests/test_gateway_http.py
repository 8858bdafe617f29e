"""The gateway over HTTP in front of a scripted fake LRS (fault injection, exact bytes)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import XAPI, FakeLRS, basic, credential, eventually, write_config
from yarl import URL

from gateway.http.app import create_app
from gateway.http.keys import PASSWORDS

ALICE = credential("alice", "alice-pw", ["all"])
READER = credential("reader", "reader-pw", ["statements/read"])
WRITER = credential("writer", "writer-pw", ["statements/write"])
MINE = credential("mine", "mine-pw", ["statements/read/mine", "statements/write"])
USERS = [ALICE, READER, WRITER, MINE]

Client = TestClient[web.Request, web.Application]
MakeGateway = Callable[..., Awaitable[tuple[Client, FakeLRS]]]


@pytest.fixture
def make_gateway(tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any) -> MakeGateway:
    async def make(
        script: Any = None,
        *,
        storage_url: str | None = None,
        extra: dict[str, Any] | None = None,
        users: list[dict[str, Any]] | None = None,
    ) -> tuple[Client, FakeLRS]:
        fake = FakeLRS(script)
        if storage_url is None:
            server: TestServer = await aiohttp_server(fake.app())
            storage_url = str(server.make_url("/xAPI/"))
        merged = {"storage": {"basic_username": "gw", "basic_password": "gw-secret"}}
        for key, value in (extra or {}).items():
            merged.setdefault(key, {}).update(value)
        config = write_config(tmp_path, storage_url, users or USERS, merged)
        client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
        return client, fake

    return make


def statement(**extra: Any) -> dict[str, Any]:
    return {
        "actor": {"mbox": "mailto:learner@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course"},
        **extra,
    }


async def error_body(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


async def test_missing_and_bad_credentials_get_401_with_challenge(
    make_gateway: MakeGateway,
) -> None:
    client, fake = await make_gateway()
    for headers in (
        {**XAPI},
        basic("alice", "Guess-4711"),
        basic("nobody", "x"),
        {"Authorization": "Basic !!!", **XAPI},
        {"Authorization": "Digest x", **XAPI},
    ):
        response = await client.get("/xAPI/statements", headers=headers)
        assert response.status == 401
        assert response.headers.getall("WWW-Authenticate") == [
            'Basic realm="xAPI", charset="UTF-8"'
        ]
        assert response.headers["X-Experience-API-Version"] == "1.0.3"
        body = await error_body(response)
        assert body["error"] == "unauthorized"
        assert "Guess-4711" not in json.dumps(body)
    assert fake.seen == []


async def test_missing_scope_is_403(make_gateway: MakeGateway) -> None:
    client, fake = await make_gateway()
    response = await client.post(
        "/xAPI/statements", json=statement(), headers=basic("reader", "reader-pw")
    )
    assert response.status == 403
    assert (await error_body(response))["error"] == "forbidden"
    response = await client.get("/xAPI/activities/state", headers=basic("writer", "writer-pw"))
    assert response.status == 403
    assert fake.seen == []


async def test_version_header_is_required_and_always_answered(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway()
    auth = basic("alice", "alice-pw")
    del auth["X-Experience-API-Version"]
    response = await client.get("/xAPI/statements", headers=auth)
    assert response.status == 400
    assert (await error_body(response))["error"] == "unsupported_version"
    response = await client.get(
        "/xAPI/statements", headers={**auth, "X-Experience-API-Version": "0.95"}
    )
    assert response.status == 400
    response = await client.get(
        "/xAPI/statements", headers={**auth, "X-Experience-API-Version": "2.0.0"}
    )
    assert response.status == 200
    assert response.headers["X-Experience-API-Version"] == "2.0.0"


async def test_post_sets_ids_and_authority_and_uses_gateway_credentials(
    make_gateway: MakeGateway,
) -> None:
    client, fake = await make_gateway()
    sent = [statement(authority={"mbox": "mailto:forged@example.com"}), statement()]
    response = await client.post(
        "/xAPI/statements",
        json=sent,
        headers={
            **basic("writer", "writer-pw"),
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "drop me",
            "X-Custom": "kept",
        },
    )
    assert response.status == 200
    ids = await response.json()
    assert len(ids) == 2
    (seen,) = fake.seen
    stored = json.loads(seen.body)
    assert [s["id"] for s in stored] == ids
    assert all(s["authority"] == WRITER["agent"] for s in stored)
    assert all("timestamp" in s for s in stored)
    assert seen.headers["Authorization"] == "Basic Z3c6Z3ctc2VjcmV0"  # gw:gw-secret
    assert seen.headers["X-Experience-API-Version"] == "1.0.3"
    assert seen.headers["X-Custom"] == "kept"
    assert "X-Secret-Hop" not in seen.headers
    assert seen.headers["X-Request-ID"] == response.headers["X-Request-ID"]


async def test_put_keeps_statement_id(make_gateway: MakeGateway) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=204)

    client, fake = await make_gateway(script)
    sid = str(uuid.uuid4())
    response = await client.put(
        f"/xAPI/statements?statementId={sid}",
        json=statement(),
        headers=basic("writer", "writer-pw"),
    )
    assert response.status == 204
    assert fake.seen[0].path_qs == f"/xAPI/statements?statementId={sid}"
    assert json.loads(fake.seen[0].body)["id"] == sid


async def test_a_compressed_write_reaches_storage_as_plain_json(make_gateway: MakeGateway) -> None:
    client, fake = await make_gateway()
    sid = str(uuid.uuid4())
    body = gzip.compress(json.dumps(statement(id=sid)).encode())
    response = await client.post(
        "/xAPI/statements",
        data=body,
        headers={
            **basic("writer", "writer-pw"),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert response.status == 200, await response.text()
    (seen,) = fake.seen
    assert "Content-Encoding" not in seen.headers
    assert json.loads(seen.body)["id"] == sid


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "empty"),
        (b'{"actor": 1}', "verb"),
        (
            json.dumps({"actor": {"mbox": "x"}, "verb": {"id": "a:b"}, "object": {}}).encode(),
            "mailto",
        ),
    ],
)
async def test_bad_statements_are_400_and_never_sent(
    make_gateway: MakeGateway, body: bytes, message: str
) -> None:
    client, fake = await make_gateway()
    response = await client.post(
        "/xAPI/statements",
        data=body,
        headers={**basic("alice", "alice-pw"), "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert message in (await error_body(response))["message"]
    assert fake.seen == []


async def test_body_limit_is_413(make_gateway: MakeGateway) -> None:
    client, fake = await make_gateway(extra={"server": {"max_body_size": 1000}})
    response = await client.post(
        "/xAPI/statements",
        data=b"[" + b" " * 2000 + b"]",
        headers={**basic("alice", "alice-pw"), "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert (await error_body(response))["error"] == "payload_too_large"

    async def chunks() -> Any:
        for _ in range(5):
            yield b"x" * 400

    response = await client.put(
        "/xAPI/activities/state?activityId=http%3A%2F%2Fexample.com"
        "%2Fa&agent=%7B%22mbox%22%3A%22mailto%3Ax%40example.com%22%7D"
        "&stateId=s",
        data=chunks(),
        headers=basic("alice", "alice-pw"),
    )
    assert response.status == 413
    assert fake.seen == [] or fake.seen[0].body != b"x" * 2000


async def test_upstream_errors_pass_through_unchanged(make_gateway: MakeGateway) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response({"detail": "conflict"}, status=409)

    client, _ = await make_gateway(script)
    response = await client.post(
        "/xAPI/statements", json=statement(), headers=basic("alice", "alice-pw")
    )
    assert response.status == 409
    assert await response.json() == {"detail": "conflict"}


async def test_storage_down_is_502(make_gateway: MakeGateway) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client, _ = await make_gateway(storage_url=f"http://127.0.0.1:{port}/xAPI/")
    response = await client.post(
        "/xAPI/statements", json=statement(), headers=basic("alice", "alice-pw")
    )
    assert response.status == 502
    assert (await error_body(response))["error"] == "bad_gateway"
    response = await client.get("/__heartbeat__")
    assert response.status == 503


async def test_storage_too_slow_is_504(make_gateway: MakeGateway) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.json_response([])

    client, _ = await make_gateway(script, extra={"storage": {"timeout": 0.3}})
    response = await client.get("/xAPI/statements", headers=basic("alice", "alice-pw"))
    assert response.status == 504
    assert (await error_body(response))["error"] == "gateway_timeout"


async def test_paths_cannot_escape_xapi(make_gateway: MakeGateway) -> None:
    client, fake = await make_gateway()
    base = str(client.make_url("")).rstrip("/")
    for path in (
        "/xAPI/%2e%2e/admin",
        "/xAPI/activities/%2E%2E/..%2f",
        "/xAPI/a/..%2Fb",
        "/xAPI/a//b",
        "/xAPI/a/%5c..%5cb",
    ):
        async with client.session.get(
            URL(base + path, encoded=True), headers=basic("alice", "alice-pw")
        ) as response:
            assert response.status in (400, 404), path
    assert fake.seen == []


async def test_documents_stream_through_with_concurrency_headers(make_gateway: MakeGateway) -> None:
    document = bytes(range(256)) * 2000  # 512 KB of binary, streamed both ways

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method == "PUT":
            if request.headers.get("If-Match") != '"v1"':
                return web.json_response({"error": "precondition"}, status=412)
            return web.Response(status=204, headers={"ETag": '"v2"'})
        return web.Response(
            body=document,
            content_type="application/octet-stream",
            headers={"ETag": '"v2"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"},
        )

    client, fake = await make_gateway(script)
    query = (
        "activityId=http%3A%2F%2Fexample.com%2Fa"
        "&agent=%7B%22mbox%22%3A%22mailto%3Ax%40example.com%22%7D&stateId=s%201"
    )
    auth = basic("alice", "alice-pw")
    exact = URL(str(client.make_url("/xAPI/activities/state")) + "?" + query, encoded=True)
    response = await client.session.put(
        exact,
        data=document,
        headers={**auth, "If-Match": '"v1"', "Content-Type": "application/octet-stream"},
    )
    assert response.status == 204
    assert response.headers["ETag"] == '"v2"'
    assert fake.seen[0].body == document
    assert fake.seen[0].path_qs == f"/xAPI/activities/state?{query}"
    assert fake.seen[0].headers["Content-Type"] == "application/octet-stream"
    response = await client.put(
        f"/xAPI/activities/state?{query}", data=b"x", headers={**auth, "If-Match": '"old"'}
    )
    assert response.status == 412
    response = await client.get(f"/xAPI/activities/state?{query}", headers=auth)
    assert response.status == 200
    assert await response.read() == document
    assert response.headers["ETag"] == '"v2"'
    assert response.headers["Last-Modified"] == "Wed, 01 Jan 2025 00:00:00 GMT"
    assert response.headers["X-Experience-API-Version"] == "1.0.3"


async def test_a_compressed_document_reaches_the_lrs_decoded(make_gateway: MakeGateway) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=204)

    client, fake = await make_gateway(script)
    document = b'{"progress": 0.5, "bookmark": "page-12"}' * 100
    response = await client.put(
        "/xAPI/activities/state?activityId=http%3A%2F%2Fexample.com%2Fa&stateId=s"
        "&agent=%7B%22mbox%22%3A%22mailto%3Ax%40example.com%22%7D",
        data=gzip.compress(document),
        headers={
            **basic("alice", "alice-pw"),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "If-None-Match": "*",
        },
    )
    assert response.status == 204
    (seen,) = fake.seen
    assert seen.body == document  # what aiohttp decoded, with no stale encoding or length
    assert "Content-Encoding" not in seen.headers


async def test_more_links_point_at_the_gateway(make_gateway: MakeGateway) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response(
            {"statements": [statement()], "more": "/xAPI/statements?limit=1&search_after=abc"},
            headers={"X-Experience-API-Consistent-Through": "2025-01-01"},
        )

    client, _ = await make_gateway(
        script, extra={"server": {"public_url": "https://lrs.example.org/"}}
    )
    response = await client.get("/xAPI/statements?limit=1", headers=basic("reader", "reader-pw"))
    data = await response.json()
    assert data["more"] == "https://lrs.example.org/xAPI/statements?limit=1&search_after=abc"
    assert response.headers["X-Experience-API-Consistent-Through"] == "2025-01-01"


async def test_read_mine_sees_only_own_statements_across_pages(make_gateway: MakeGateway) -> None:
    own = statement(authority={"objectType": "Agent", "mbox": "mailto:mine@EXAMPLE.com"})
    other = statement(authority={"mbox": "mailto:alice@example.com"})
    pages = {
        "1": ([other, other], "2"),
        "2": ([other], "3"),
        "3": ([own, other], "4"),
        "4": ([], ""),
    }

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if "statementId" in request.query:
            return web.json_response(other)
        if "voidedStatementId" in request.query:  # Ralph's shape for a single statement
            return web.json_response({"statements": [other], "more": ""})
        page = request.query.get("cursor", "1")
        items, nxt = pages[page]
        return web.json_response(
            {"statements": items, "more": f"/xAPI/statements?cursor={nxt}" if nxt else ""}
        )

    client, fake = await make_gateway(script)
    auth = basic("mine", "mine-pw")
    response = await client.get("/xAPI/statements", headers=auth)
    data = await response.json()
    assert data["statements"] == [own]
    assert data["more"] == "/xAPI/statements?cursor=4"
    assert len(fake.seen) == 3
    response = await client.get(data["more"], headers=auth)
    assert (await response.json()) == {"statements": [], "more": ""}
    response = await client.get(f"/xAPI/statements?statementId={uuid.uuid4()}", headers=auth)
    assert response.status == 404
    response = await client.get(f"/xAPI/statements?voidedStatementId={uuid.uuid4()}", headers=auth)
    assert response.status == 404
    response = await client.get("/xAPI/statements?attachments=true", headers=auth)
    assert (await response.json())["statements"] == [own]  # filtered like any other page
    response = await client.get("/xAPI/statements", headers=basic("reader", "reader-pw"))
    assert len((await response.json())["statements"]) == 2


async def test_head_statements_has_no_body(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway()
    response = await client.head("/xAPI/statements", headers=basic("reader", "reader-pw"))
    assert response.status == 200
    assert await response.read() == b""


async def test_gateway_endpoints(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway()
    response = await client.get("/whoami", headers=basic("mine", "mine-pw"))
    assert await response.json() == {
        "agent": MINE["agent"],
        "scopes": ["statements/read/mine", "statements/write"],
        "username": "mine",
        "scheme": "basic",
    }
    assert (await client.get("/whoami")).status == 401
    assert (await client.get("/__lbheartbeat__")).status == 200
    response = await client.get("/__heartbeat__")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"
    response = await client.get("/xAPI/about")
    assert response.status == 200
    assert await response.json() == {"version": ["1.0.3", "2.0.0"]}
    assert response.headers["X-Experience-API-Version"] == "1.0.3"
    response = await client.get("/nowhere")
    assert response.status == 404
    assert (await error_body(response))["error"] == "not_found"


async def test_metrics_parse_and_count_requests(make_gateway: MakeGateway) -> None:
    client, fake = await make_gateway()
    await client.get("/xAPI/statements", headers=basic("reader", "reader-pw"))
    await client.get("/xAPI/statements", headers=basic("reader", "bad"))
    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[
            (
                "lrs_gateway_requests_total",
                (
                    ("method", "GET"),
                    ("route", "xapi.statements"),
                    ("status_class", "2xx"),
                    ("tenant", "default"),
                ),
            )
        ]
        == 1
    )
    assert (
        samples[
            (
                "lrs_gateway_auth_attempts_total",
                (("result", "bad_credentials"), ("scheme", "basic")),
            )
        ]
        == 1
    )
    await client.get("/xAPI/statements", headers=basic("reader", "reader-pw"))  # cached
    await client.post(
        "/xAPI/statements", json=[statement(), statement()], headers=basic("writer", "writer-pw")
    )
    await client.get("/__heartbeat__")
    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[("lrs_gateway_auth_cache_lookups_total", (("result", "hit"), ("scheme", "basic")))]
        == 1
    )
    assert (
        samples[("lrs_gateway_auth_cache_lookups_total", (("result", "miss"), ("scheme", "basic")))]
        == 3
    )
    assert samples[("lrs_gateway_bcrypt_duration_seconds_count", ())] == 3
    assert samples[("lrs_gateway_statements_accepted_total", (("tenant", "default"),))] == 2
    assert samples[
        ("lrs_gateway_upstream_requests_total", (("outcome", "2xx"), ("target", "storage")))
    ] == (len(fake.seen) + len(fake.about_calls))  # client traffic and readiness checks
    assert samples[("lrs_gateway_ready", ())] == 1
    buckets = [
        v
        for (name, labels), v in samples.items()
        if name == "lrs_gateway_request_duration_seconds_bucket"
        and ("route", "xapi.statements") in labels
        and ("method", "GET") in labels
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == 3  # the 401 is timed too
    assert "reader" not in text
    assert "bad" not in text.replace("bad_credentials", "")


async def test_bcrypt_runs_once_per_credential_within_ttl(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway()
    checker = client.app[PASSWORDS]
    before = checker.checks
    for _ in range(5):
        assert (await client.get("/whoami", headers=basic("alice", "alice-pw"))).status == 200
    assert checker.checks == before + 1
    for _ in range(3):
        assert (await client.get("/whoami", headers=basic("alice", "nope"))).status == 401
    assert checker.checks == before + 4  # failures are not cached
    await client.get("/whoami", headers=basic("ghost", "x"))
    assert checker.checks == before + 5  # unknown users pay a check too


async def test_cache_expires_after_ttl(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway(extra={"auth": {"basic": {"cache_ttl": 0.2}}})
    checker = client.app[PASSWORDS]
    await client.get("/whoami", headers=basic("alice", "alice-pw"))
    before = checker.checks

    async def checked_again() -> bool:
        # Cached answers cost no check; once the TTL is over, the next request pays one.
        await client.get("/whoami", headers=basic("alice", "alice-pw"))
        return checker.checks > before

    # async_lru times the TTL on the event loop's clock (not injectable): poll, not sleep.
    await eventually(checked_again, 5, "a new bcrypt check after the cache TTL")
    assert checker.checks == before + 1


async def answers(client: Client, headers: dict[str, str], status: int) -> bool:
    return (await client.get("/whoami", headers=headers)).status == status


async def test_credentials_file_reloads_and_survives_a_broken_edit(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = await make_gateway()
    auth = tmp_path / "auth.json"
    assert (await client.get("/whoami", headers=basic("alice", "alice-pw"))).status == 200
    auth.write_text(json.dumps([credential("bob", "bob-pw", ["all"])]))
    bob = basic("bob", "bob-pw")
    await eventually(lambda: answers(client, bob, 200), 5, "the new credentials file in use")
    # alice was removed: her cached success must not outlive the file change
    assert (await client.get("/whoami", headers=basic("alice", "alice-pw"))).status == 401

    # The reloader has read the broken file once it says it kept the last good one.
    def refusals() -> int:
        return sum("not reloaded" in r.getMessage() for r in caplog.records)

    before = refusals()
    auth.write_text("[{ broken")
    await eventually(lambda: refusals() > before, 5, "the broken credentials file refused")
    assert (await client.get("/whoami", headers=bob)).status == 200


async def test_rustici_lines(make_gateway: MakeGateway, tmp_path: Path) -> None:
    client, _ = await make_gateway()
    hashed = credential("x", "pw-hashed", [])["hash"]
    (tmp_path / "auth.json").write_text(
        f"# rustici accounts\nroot_user:{hashed}:root\nplain_user:pw:plain:read-only\n"
        "writer2:pw2:write-only\n"
    )
    root = basic("root_user", "pw-hashed")
    await eventually(lambda: answers(client, root, 200), 5, "the Rustici file in use")
    response = await client.get("/whoami", headers=basic("plain_user", "pw:plain"))
    data = await response.json()
    assert data["scopes"] == ["all/read"]
    assert data["agent"]["account"]["name"] == "plain_user"
    response = await client.get("/xAPI/statements", headers=basic("writer2", "pw2"))
    assert response.status == 403


async def test_cors_preflight_reaches_the_lrs_without_credentials(
    make_gateway: MakeGateway,
) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "https://course.example.org",
                "Access-Control-Allow-Headers": "Authorization, X-Experience-API-Version",
            },
        )

    client, fake = await make_gateway(script)
    response = await client.options(
        "/xAPI/statements",
        headers={"Origin": "https://course.example.org", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://course.example.org"
    assert fake.seen[0].method == "OPTIONS"
    assert fake.seen[0].path_qs == "/xAPI/statements"


async def test_access_log_fields_and_json_lines(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.runtime.logs import JsonFormatter

    client, _ = await make_gateway()
    caplog.set_level("INFO", logger="gateway.access")
    response = await client.get(
        "/xAPI/statements?agent=%7B%22mbox%22%3A%22mailto%3Asecret-person%40example.com%22%7D",
        headers=basic("reader", "reader-pw"),
    )
    (record,) = [r for r in caplog.records if r.name == "gateway.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["route"] == "xapi.statements"
    assert line["status"] == 200
    assert line["principal"] == "reader"
    assert line["method"] == "GET"
    assert isinstance(line["duration_ms"], float)
    assert "secret-person" not in json.dumps(line)
    assert "reader-pw" not in json.dumps(line)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
async def test_statement_writes_need_json(make_gateway: MakeGateway, content_type: str) -> None:
    client, fake = await make_gateway()
    response = await client.post(
        "/xAPI/statements",
        data=json.dumps(statement()),
        headers={**basic("alice", "alice-pw"), "Content-Type": content_type},
    )
    assert response.status == 400
    assert response.headers["X-Experience-API-Consistent-Through"].endswith("Z")
    assert fake.seen == []


async def test_about_merges_the_storage_extensions(make_gateway: MakeGateway) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response(
            {"version": ["1.0.3"], "extensions": {"http://lrs.example.org/ext": {"x": 1}}}
        )

    client, _ = await make_gateway(script)
    response = await client.get("/xAPI/about")
    # the configured 1.0.3 and 2.0.0, narrowed to what storage speaks
    assert await response.json() == {
        "version": ["1.0.3"],
        "extensions": {"http://lrs.example.org/ext": {"x": 1}},
    }


async def test_metrics_on_their_own_port_and_behind_a_scope(make_gateway: MakeGateway) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client, _ = await make_gateway(
        extra={"metrics": {"port": port, "scope": "admin"}},
        users=[*USERS, credential("ops", "ops-pw", ["admin"])],
    )
    assert (await client.get("/metrics")).status == 404  # not with the public API
    async with ClientSession() as session:
        url = f"http://127.0.0.1:{port}/metrics"
        async with session.get(url) as response:
            assert response.status == 401
        async with session.get(url, headers=basic("alice", "alice-pw")) as response:
            assert response.status == 403  # `all` is about xAPI data, not the gateway
        async with session.get(url, headers=basic("ops", "ops-pw")) as response:
            assert response.status == 200
            assert "lrs_gateway_requests_total" in await response.text()
