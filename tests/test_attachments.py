"""Attachments: multipart/mixed parsed, checked, statement part rewritten, others byte-exact."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support import FakeLRS, basic, credential, write_config

from gateway.errors import BadRequest
from gateway.http.app import create_app
from gateway.xapi.multipart import Part, boundary_of, build, parse, request_boundary

Client = TestClient[web.Request, web.Application]
WRITER = credential("writer", "writer-pw", ["statements/write"])
BOUNDARY = "xapi-boundary-7d3f"
PDF = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n" + b"\xff\xfe\x00"
SIG = b"eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def statement(
    n: int, *attached: bytes, usage: str = "http://id.example.org/attachment/pdf"
) -> dict[str, Any]:
    return {
        "actor": {"mbox": f"mailto:learner{n}@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": f"http://example.com/course/{n}"},
        "attachments": [
            {
                "usageType": usage,
                "display": {"en-US": "file"},
                "contentType": "application/octet-stream",
                "length": len(data),
                "sha2": sha(data),
            }
            for data in attached
        ],
    }


def multipart(
    statements: Any, *attachments: bytes, extra_headers: bytes = b"", drop: str = ""
) -> bytes:
    out = [
        b"preamble ignored by everyone\r\n",
        f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n".encode(),
        json.dumps(statements).encode(),
        b"\r\n",
    ]
    for data in attachments:
        head = (
            f"--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Transfer-Encoding: binary\r\n"
            f"X-Experience-API-Hash: {sha(data)}\r\n"
        ).encode() + extra_headers
        if drop:
            head = b"\r\n".join(
                line for line in head.split(b"\r\n") if not line.lower().startswith(drop.encode())
            )
        out += [head, b"\r\n", data, b"\r\n"]
    out.append(f"--{BOUNDARY}--\r\nepilogue\r\n".encode())
    return b"".join(out)


ARRIVED = web.AppKey("test_forwarded_arrived", asyncio.Event)
HEADERS = {"Content-Type": f'multipart/mixed; boundary="{BOUNDARY}"'}


@pytest.fixture
async def client(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> tuple[Client, FakeLRS, list[bytes]]:
    async def storage_script(request: web.Request, body: bytes) -> web.StreamResponse:
        first = parse(body, boundary_of(request.headers["Content-Type"])).parts[0]
        data = json.loads(first.body)
        return web.json_response([s["id"] for s in (data if isinstance(data, list) else [data])])

    forwarded: list[bytes] = []

    async def target(request: web.Request) -> web.Response:
        forwarded.append(request.headers["Content-Type"].encode() + b"\n" + await request.read())
        arrived.set()
        return web.json_response([])

    arrived = asyncio.Event()

    target_app = web.Application()
    target_app.router.add_post("/xAPI/statements", target)
    target_server: TestServer = await aiohttp_server(target_app)
    fake = FakeLRS(storage_script)
    storage: TestServer = await aiohttp_server(fake.app())
    config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        [WRITER],
        {
            "forwardings": [
                {
                    "name": "t",
                    "is_active": True,
                    "max_retries": 1,
                    "timeout": 2,
                    "url": str(target_server.make_url("/xAPI/statements")),
                    "basic_username": None,
                    "basic_password": None,
                }
            ],
            "data_dir": "data",
        },
    )
    app = create_app(config, registry=CollectorRegistry())
    app[ARRIVED] = arrived  # the test's own event, on the app it drives
    app_client: Client = await aiohttp_client(app)
    return app_client, fake, forwarded


async def test_parts_pass_byte_exact_and_statements_get_authority(
    client: tuple[Client, FakeLRS, list[bytes]],
) -> None:
    app_client, fake, forwarded = client
    body = multipart([statement(1, PDF), statement(2, PDF, SIG)], PDF, SIG)
    response = await app_client.post(
        "/xAPI/statements", data=body, headers={**basic("writer", "writer-pw"), **HEADERS}
    )
    assert response.status == 200, await response.text()
    ids = await response.json()
    (seen,) = fake.seen
    sent = parse(seen.body, request_boundary(seen.headers["Content-Type"]))
    original = parse(body, BOUNDARY)
    assert BOUNDARY not in seen.headers["Content-Type"]  # a body the gateway built
    assert [(p.head, p.body) for p in sent.parts[1:]] == [
        (p.head, p.body) for p in original.parts[1:]
    ]  # every attachment byte-identical
    assert sent.preamble == b""  # the client's preamble and epilogue are not passed on
    assert sent.closing == b"--\r\n"
    assert sent.parts[0].head == b"Content-Type: application/json\r\n\r\n"
    stored = json.loads(sent.parts[0].body)
    assert [s["id"] for s in stored] == ids
    assert all(s["authority"] == WRITER["agent"] for s in stored)
    # the forwarding target gets the same statements and the attachment parts, once each
    while not forwarded:  # the worker delivers in the background
        await asyncio.wait_for(app_client.app[ARRIVED].wait(), timeout=5)
    content_type, _, raw = forwarded[0].partition(b"\n")
    got = parse(raw, boundary_of(content_type.decode()))
    assert json.loads(got.parts[0].body) == stored
    assert sorted(p.body for p in got.parts[1:]) == sorted([PDF, SIG])
    assert all(p.header("X-Experience-API-Hash") in (sha(PDF), sha(SIG)) for p in got.parts[1:])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (multipart([statement(1, PDF)]), "no multipart part"),
        (multipart([statement(1)], PDF), "matches no attachment"),
        (
            multipart([statement(1, PDF)], PDF, drop="x-experience-api-hash"),
            "no X-Experience-API-Hash",
        ),
        (
            multipart([statement(1, PDF)], PDF, drop="content-transfer-encoding"),
            "Content-Transfer-Encoding",
        ),
        (multipart([statement(1, PDF)], PDF).replace(PDF[:50], b"x" * 50, 1), "does not match"),
        (
            multipart([statement(1, PDF)], PDF).replace(
                b"Content-Type: application/json", b"Content-Type: text/plain", 1
            ),
            "first part",
        ),
        (
            multipart([statement(1, PDF)], PDF).replace(f"--{BOUNDARY}--".encode(), b""),
            "not closed",
        ),
        (b"no delimiter at all", "no delimiter"),
    ],
)
async def test_bad_multipart_is_400_and_not_sent(
    client: tuple[Client, FakeLRS, list[bytes]], body: bytes, message: str
) -> None:
    app_client, fake, _ = client
    response = await app_client.post(
        "/xAPI/statements", data=body, headers={**basic("writer", "writer-pw"), **HEADERS}
    )
    assert response.status == 400
    assert message in (await response.json())["message"]
    assert fake.seen == []


async def test_put_with_an_attachment(client: tuple[Client, FakeLRS, list[bytes]]) -> None:
    app_client, fake, _ = client
    sid = "2b3c4d5e-6f70-4812-9a3b-4c5d6e7f8091"
    response = await app_client.put(
        f"/xAPI/statements?statementId={sid}",
        data=multipart(statement(1, PDF), PDF),
        headers={**basic("writer", "writer-pw"), **HEADERS},
    )
    assert response.status == 200
    sent = parse(fake.seen[0].body, request_boundary(fake.seen[0].headers["Content-Type"]))
    assert json.loads(sent.parts[0].body)["id"] == sid
    assert sent.parts[1].body == PDF


def build_raw(
    parts: list[tuple[bytes, bytes]], boundary: str, preamble: bytes, epilogue: bytes
) -> bytes:
    out = [preamble]
    for head, body in parts:
        out += [f"--{boundary}\r\n".encode(), head, body, b"\r\n"]
    return b"".join([*out, f"--{boundary}--".encode(), epilogue])


safe_bytes = st.binary(max_size=60).filter(lambda b: b"--bnd" not in b)
header_lines = st.lists(st.from_regex(r"[A-Za-z-]{1,12}: [ -~]{0,20}", fullmatch=True), max_size=3)


@given(
    st.lists(st.tuples(header_lines, safe_bytes), min_size=1, max_size=4),
    st.sampled_from([b"", b"preamble\r\n"]),
    st.sampled_from([b"", b"\r\nepilogue"]),
)
@settings(max_examples=200)
def test_any_valid_multipart_round_trips_byte_identical(
    parts: list[tuple[list[str], bytes]], preamble: bytes, epilogue: bytes
) -> None:
    raw_parts = [
        (("\r\n".join(lines) + "\r\n\r\n").encode() if lines else b"\r\n", body)
        for lines, body in parts
    ]
    raw = build_raw(raw_parts, "bnd", preamble, epilogue)
    parsed = parse(raw, "bnd")
    assert parsed.serialize() == raw
    assert [p.body for p in parsed.parts] == [body for _, body in parts]


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=400))
@settings(max_examples=300)
def test_any_mutation_is_a_clean_400(noise: bytes, cut: int) -> None:
    raw = build_raw(
        [
            (b"Content-Type: application/json\r\n\r\n", b"[]"),
            (b"X-Experience-API-Hash: ab\r\n\r\n", b"data"),
        ],
        "bnd",
        b"",
        b"",
    )
    mutated = raw[:cut] + noise + raw[cut:]
    with contextlib.suppress(BadRequest):  # anything else would fail the test
        parse(mutated, "bnd").serialize()


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ('multipart/mixed; boundary ="xapi-boundary-7d3f"; x-boundary=LL', "malformed"),
        ("multipart/mixed; boundary= xapi-boundary-7d3f", "malformed"),
        (f"multipart/mixed; boundary={BOUNDARY}; BOUNDARY=LL", "twice"),
        (f"multipart/mixed; boundary={BOUNDARY} LL", "malformed"),
        (f'multipart/mixed; boundary="{BOUNDARY}\\\\"', "escapes"),
        ("multipart/mixed; charset=utf-8", "needs a boundary"),
        ("multipart/mixedx; boundary=LL", "not multipart/mixedx"),
    ],
)
async def test_an_ambiguous_content_type_is_400(
    client: tuple[Client, FakeLRS, list[bytes]], content_type: str, message: str
) -> None:
    app_client, fake, _ = client
    response = await app_client.post(
        "/xAPI/statements",
        data=multipart([statement(1, PDF)], PDF),
        headers={**basic("writer", "writer-pw"), "Content-Type": content_type},
    )
    assert response.status == 400
    assert message in (await response.json())["message"]
    assert fake.seen == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (b"X-Experience-API-Hash: " + b"0" * 64 + b"\r\n", "twice"),  # which one wins?
        (b"X-Note: a\nX-Experience-API-Hash: x\r\n", "malformed"),  # a lone LF
        (b"X-Note: a\r\n continued\r\n", "malformed"),  # obs-fold
        (b"X-Note: a\x00b\r\n", "malformed"),
        (b"Content-Length: 3\r\n", "Content-Length"),
    ],
)
async def test_an_ambiguous_part_header_is_400(
    client: tuple[Client, FakeLRS, list[bytes]], extra: bytes, message: str
) -> None:
    app_client, fake, _ = client
    response = await app_client.post(
        "/xAPI/statements",
        data=multipart([statement(1, PDF)], PDF, extra_headers=extra),
        headers={**basic("writer", "writer-pw"), **HEADERS},
    )
    assert response.status == 400
    assert message in (await response.json())["message"]
    assert fake.seen == []


def test_a_part_that_holds_the_boundary_gets_another_one() -> None:
    tricky = Part(b"Content-Type: text/plain\r\n\r\n", b"x\r\n--first--\r\n")
    candidates = iter(["first", "second"])
    body, boundary = build([tricky], lambda: next(candidates))
    assert boundary == "second"
    assert parse(body, boundary).parts[0].body == tricky.body


@pytest.mark.parametrize("algorithm", ["sha224", "sha256", "sha384", "sha512"])
async def test_every_sha2_length_is_checked(
    client: tuple[Client, FakeLRS, list[bytes]], algorithm: str
) -> None:
    app_client, _, _ = client
    digest = hashlib.new(algorithm, PDF).hexdigest()
    body = multipart([statement(1, PDF)], PDF).replace(sha(PDF).encode(), digest.encode())
    response = await app_client.post(
        "/xAPI/statements", data=body, headers={**basic("writer", "writer-pw"), **HEADERS}
    )
    assert response.status == 200, await response.text()
    wrong = body.replace(digest.encode(), hashlib.new(algorithm, b"x").hexdigest().encode(), 1)
    response = await app_client.post(
        "/xAPI/statements", data=wrong, headers={**basic("writer", "writer-pw"), **HEADERS}
    )
    assert response.status == 400
