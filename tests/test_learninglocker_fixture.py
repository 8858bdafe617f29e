"""The `learning_locker` fixture, talking to xapi-statements 5.0.1 directly (no gateway).

Each test pins down one behaviour of the real service, with exact status codes and headers,
so the gateway's tests against it can rely on (or work around) them:

- statements: POST 200 + ids, PUT 204, same id with other content 409, GET with
  `X-Experience-API-Consistent-Through` (the request's time), voiding, batch rules;
- `authority` is always replaced by the credential's own;
- attachments (multipart/mixed): stored and returned by `attachments=true`, but the part
  bodies are read as UTF-8 text and leading CR, LF and "s" characters are stripped, and the
  sha2 of the content is not checked: byte-exact round trips need ASCII/UTF-8 content that
  does not start with those characters;
- signed statements: the JWS payload must equal the statement as received, `authority` and
  `id` included (only signature attachments and missing objectTypes are ignored);
- alternate request syntax: `?method=PUT|POST|GET` with a form body; DELETE refused;
- `/xAPI/about`: `{"X-Experience-API-Version": "1.0.3", "version": ["1.0.3"]}`, no
  extensions, no auth needed, no version header;
- NO document APIs: state, activity profile and agent profile are Express 404s.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from realparts.learninglocker import LearningLockerServer, basic_authorization

pytestmark = pytest.mark.learninglocker

VERSION = "1.0.3"
CONSISTENT_THROUGH = "X-Experience-API-Consistent-Through"
ISO_MILLIS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SIGNATURE_USAGE = "http://adlnet.gov/expapi/attachments/signature"
LL_BOUNDARY = "zzzlearninglockerzzz"


def _headers(ll: LearningLockerServer, **extra: str) -> dict[str, str]:
    return {"Authorization": ll.authorization, "X-Experience-API-Version": VERSION, **extra}


def _statement(**fields: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "actor": {"objectType": "Agent", "mbox": "mailto:learner@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/attempted"},
        "object": {"objectType": "Activity", "id": "http://example.org/activities/ll"},
    }
    statement.update(fields)
    return statement


def _attachment(content: bytes, usage: str = "http://example.org/usage/doc") -> dict[str, Any]:
    return {
        "usageType": usage,
        "display": {"en-US": "attachment"},
        "contentType": "application/octet-stream",
        "length": len(content),
        "sha2": hashlib.sha256(content).hexdigest(),
    }


def _multipart(statement_json: Any, *attachments: bytes, boundary: str = "lrsgwBOUNDARY") -> bytes:
    """A multipart/mixed statements body: the JSON part first, then one part per content."""
    body = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{json.dumps(statement_json)}"
    ).encode()
    for content in attachments:
        body += (
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: binary\r\n"
            f"X-Experience-API-Hash: {hashlib.sha256(content).hexdigest()}\r\n\r\n"
        ).encode() + content
    return body + f"\r\n--{boundary}--".encode()


def _multipart_type(boundary: str = "lrsgwBOUNDARY") -> str:
    return f"multipart/mixed; boundary={boundary}"


def _parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body on CRLF--boundary (LL starts its bodies with that CRLF)."""
    if body.startswith(b"--"):
        body = b"\r\n" + body
    chunks = body.split(b"\r\n--" + boundary.encode())
    assert chunks[0] == b"", chunks[0]
    assert chunks[-1] == b"--", chunks[-1]
    parts = []
    for chunk in chunks[1:-1]:
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


async def _post(
    session: aiohttp.ClientSession, ll: LearningLockerServer, body: bytes, content_type: str
) -> tuple[int, Any]:
    headers = _headers(ll, **{"Content-Type": content_type})
    async with session.post(ll.url + "statements", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def _get_statement(
    session: aiohttp.ClientSession, ll: LearningLockerServer, statement_id: str
) -> dict[str, Any]:
    params = {"statementId": statement_id}
    async with session.get(ll.url + "statements", params=params, headers=_headers(ll)) as resp:
        assert resp.status == 200, await resp.text()
        document: dict[str, Any] = await resp.json()
        return document


async def _stored_attachment(
    session: aiohttp.ClientSession, ll: LearningLockerServer, statement_id: str
) -> bytes:
    params = {"statementId": statement_id, "attachments": "true"}
    async with session.get(ll.url + "statements", params=params, headers=_headers(ll)) as resp:
        assert resp.status == 200
        body = await resp.read()
    [_, (_, content)] = _parse_multipart(body, LL_BOUNDARY)
    return content


def _listeners(port: int) -> list[tuple[str, str]]:
    """(table, local address) of every socket listening on `port` (Linux /proc/net)."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) == port and fields[3] == "0A":
                found.append((table, address))
    return found


def test_listens_on_loopback_only(learning_locker: LearningLockerServer) -> None:
    port = urlsplit(learning_locker.url).port
    assert port is not None
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    assert _listeners(port) == [("tcp", "0100007F")]  # 127.0.0.1 only, no IPv6 socket
    info_port = urlsplit(learning_locker.client_info_url).port
    assert info_port is not None
    assert _listeners(info_port) == [("tcp", "0100007F")]


async def test_about_is_public_and_lists_only_1_0_3(learning_locker: LearningLockerServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(learning_locker.url + "about") as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"X-Experience-API-Version": "1.0.3", "version": ["1.0.3"]}
        assert "X-Experience-API-Version" not in resp.headers
        assert CONSISTENT_THROUGH not in resp.headers


async def test_credential_is_checked_by_the_client_info_endpoint(
    learning_locker: LearningLockerServer,
) -> None:
    url = learning_locker.url + "statements"
    token = learning_locker.authorization.split(" ", 1)[1]
    wrong = basic_authorization(learning_locker.username, "wrong")
    async with aiohttp.ClientSession() as session:
        for authorization, expected in [
            (learning_locker.authorization, 200),
            ("basic " + token, 200),  # the scheme is matched case-insensitively
            (wrong, 401),
            (None, 401),
        ]:
            headers = {"X-Experience-API-Version": VERSION}
            if authorization is not None:
                headers["Authorization"] = authorization
            async with session.get(url, params={"limit": "1"}, headers=headers) as resp:
                assert resp.status == expected, authorization
                if expected == 401:
                    assert (await resp.json())["message"] == "Unauthorised"
                    assert resp.headers["X-Experience-API-Version"] == VERSION
                    assert ISO_MILLIS_Z.match(resp.headers[CONSISTENT_THROUGH])


async def test_version_header_must_be_1_0_x(learning_locker: LearningLockerServer) -> None:
    url = learning_locker.url + "statements"
    async with aiohttp.ClientSession() as session:
        for version, expected in [
            ("1.0", 200),
            ("1.0.0", 200),
            ("1.0.3", 200),
            ("1.0.9", 200),
            ("1.1", 400),
            ("2.0.0", 400),
            (None, 400),
        ]:
            headers = {"Authorization": learning_locker.authorization}
            if version is not None:
                headers["X-Experience-API-Version"] = version
            async with session.get(url, params={"limit": "1"}, headers=headers) as resp:
                assert resp.status == expected, version
                assert resp.headers["X-Experience-API-Version"] == VERSION


async def test_post_then_get_replaces_authority(learning_locker: LearningLockerServer) -> None:
    ll = learning_locker
    statement = _statement(authority={"objectType": "Agent", "mbox": "mailto:x@example.org"})
    async with aiohttp.ClientSession() as session:
        async with session.post(
            ll.url + "statements", json=statement, headers=_headers(ll)
        ) as resp:
            assert resp.status == 200
            [statement_id] = await resp.json()
            assert resp.headers["X-Experience-API-Version"] == VERSION
            assert CONSISTENT_THROUGH not in resp.headers  # only on GETs and errors
        params = {"statementId": statement_id}
        async with session.get(ll.url + "statements", params=params, headers=_headers(ll)) as resp:
            assert resp.status == 200
            stored = await resp.json()
            assert ISO_MILLIS_Z.match(resp.headers[CONSISTENT_THROUGH])
            assert resp.headers["Last-Modified"] == stored["stored"]  # ISO 8601, not HTTP-date
            assert resp.headers["ETag"].startswith('W/"')  # Express's body ETag
            etag = resp.headers["ETag"]
        async with session.get(
            ll.url + "statements", params=params, headers=_headers(ll, **{"If-None-Match": etag})
        ) as resp:
            assert resp.status == 304
    assert stored["id"] == statement_id
    assert stored["authority"] == ll.authority
    assert stored["version"] == "1.0.0"
    assert ISO_MILLIS_Z.match(stored["stored"])
    assert stored["timestamp"] == stored["stored"]  # filled in when absent
    for key in ("actor", "verb", "object"):
        assert stored[key] == statement[key]


async def test_consistent_through_is_the_request_time(
    learning_locker: LearningLockerServer,
) -> None:
    ll = learning_locker
    async with aiohttp.ClientSession() as session:
        status, [statement_id] = await _post(
            session, ll, json.dumps([_statement()]).encode(), "application/json"
        )
        assert status == 200
        before = datetime.now(UTC)
        params = {"limit": "1"}
        async with session.get(ll.url + "statements", params=params, headers=_headers(ll)) as resp:
            assert resp.status == 200
            document = await resp.json()
            consistent = datetime.fromisoformat(resp.headers[CONSISTENT_THROUGH])
    after = datetime.now(UTC)
    assert before - timedelta(seconds=1) <= consistent <= after + timedelta(seconds=1)
    [latest] = document["statements"]
    assert latest["id"] == statement_id
    assert datetime.fromisoformat(latest["stored"]) <= consistent
    # `more` is a path (no scheme or host): a proxy must map it onto its own prefix.
    assert document["more"].startswith("/xAPI/statements?limit=1&cursor=")


async def test_put_204_and_conflicts_409(learning_locker: LearningLockerServer) -> None:
    ll = learning_locker
    statement_id = str(uuid.uuid4())
    url = ll.url + "statements"
    params = {"statementId": statement_id}
    other = _statement(verb={"id": "http://adlnet.gov/expapi/verbs/passed"})
    async with aiohttp.ClientSession() as session:
        async with session.put(url, params=params, json=_statement(), headers=_headers(ll)) as resp:
            assert resp.status == 204
            assert CONSISTENT_THROUGH not in resp.headers
        async with session.put(url, params=params, json=_statement(), headers=_headers(ll)) as resp:
            assert resp.status == 204  # same content again: accepted
        async with session.put(url, params=params, json=other, headers=_headers(ll)) as resp:
            assert resp.status == 409
            assert (await resp.json())["message"] == f"{statement_id} is conflicting"
            assert ISO_MILLIS_Z.match(resp.headers[CONSISTENT_THROUGH])
        status, body = await _post(
            session, ll, json.dumps([dict(other, id=statement_id)]).encode(), "application/json"
        )
        assert status == 409, body
        status, body = await _post(
            session, ll, json.dumps([_statement(id=statement_id)]).encode(), "application/json"
        )
        assert (status, body) == (200, [statement_id])


async def test_batch_rules(learning_locker: LearningLockerServer) -> None:
    ll = learning_locker
    duplicate = str(uuid.uuid4())
    fresh = str(uuid.uuid4())
    async with aiohttp.ClientSession() as session:
        batch = [_statement(id=duplicate), _statement(id=duplicate)]
        status, body = await _post(session, ll, json.dumps(batch).encode(), "application/json")
        assert status == 400
        assert body["message"] == f"{duplicate} is duplicated in the current batch"

        batch = [_statement(id=fresh), {"actor": 1}]
        status, body = await _post(session, ll, json.dumps(batch).encode(), "application/json")
        assert status == 400
        assert "Expected 'statements.1.actor' to be 'Object'. Received '1'" in body["warnings"]
        params = {"statementId": fresh}
        async with session.get(ll.url + "statements", params=params, headers=_headers(ll)) as resp:
            assert resp.status == 404  # all or nothing: the valid one was not stored

        status, body = await _post(session, ll, b"{", "application/json")
        assert (status, body["message"]) == (400, "Expected valid JSON in body")
        status, body = await _post(session, ll, json.dumps(_statement()).encode(), "text/plain")
        assert (status, body["message"]) == (400, "Content-Type (text/plain) is not supported")
        status, body = await _post(
            session, ll, json.dumps([_statement(version="2.0.0")]).encode(), "application/json"
        )
        assert status == 400
        assert body["warnings"] == ["Problem in 'statements.0.version'. Received '\"2.0.0\"'"]
        async with session.get(
            ll.url + "statements", params={"foo": "1"}, headers=_headers(ll)
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["message"] == "Cannot use unknown params 'foo'"


async def test_voiding(learning_locker: LearningLockerServer) -> None:
    ll = learning_locker
    target = str(uuid.uuid4())
    voiding = _statement(
        verb={"id": "http://adlnet.gov/expapi/verbs/voided"},
        object={"objectType": "StatementRef", "id": target},
    )
    async with aiohttp.ClientSession() as session:
        batch = json.dumps([_statement(id=target)]).encode()
        assert (await _post(session, ll, batch, "application/json"))[0] == 200
        status, [voiding_id] = await _post(
            session, ll, json.dumps([voiding]).encode(), "application/json"
        )
        assert status == 200
        url = ll.url + "statements"
        async with session.get(url, params={"statementId": target}, headers=_headers(ll)) as resp:
            assert resp.status == 404
            assert (await resp.json())["message"] == "No Statement found"
        params = {"voidedStatementId": target}
        async with session.get(url, params=params, headers=_headers(ll)) as resp:
            assert resp.status == 200
            assert (await resp.json())["id"] == target
        assert (await _get_statement(session, ll, voiding_id))["object"]["id"] == target


@pytest.mark.parametrize(
    "path",
    ["activities/state", "activities/profile", "agents/profile", "agents"],
)
async def test_document_apis_are_not_served(
    learning_locker: LearningLockerServer, path: str
) -> None:
    ll = learning_locker
    params = {
        "activityId": "http://example.org/activities/ll",
        "agent": json.dumps({"mbox": "mailto:learner@example.org"}),
        "stateId": "s",
        "profileId": "p",
    }
    async with aiohttp.ClientSession() as session:
        for method in ("GET", "PUT", "POST", "DELETE"):
            async with session.request(
                method, ll.url + path, params=params, json={"a": 1}, headers=_headers(ll)
            ) as resp:
                assert resp.status == 404, (method, path)
                assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
                assert f"Cannot {method} /xAPI/{path}" in await resp.text()


async def test_full_activity_is_served(learning_locker: LearningLockerServer) -> None:
    ll = learning_locker
    activity_id = "http://example.org/activities/full"
    batch = json.dumps([_statement(object={"objectType": "Activity", "id": activity_id})])
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, ll, batch.encode(), "application/json"))[0] == 200
        params = {"activityId": activity_id}
        async with session.get(ll.url + "activities", params=params, headers=_headers(ll)) as resp:
            assert resp.status == 200
            assert (await resp.json())["id"] == activity_id
            assert resp.headers["X-Experience-API-Version"] == VERSION


async def test_attachment_is_stored_and_returned_as_multipart(
    learning_locker: LearningLockerServer,
) -> None:
    ll = learning_locker
    content = b"Attachment text, with a newline.\nAnd a second line.\n"
    statement = _statement(id=str(uuid.uuid4()), attachments=[_attachment(content)])
    async with aiohttp.ClientSession() as session:
        status, body = await _post(session, ll, _multipart([statement], content), _multipart_type())
        assert (status, body) == (200, [statement["id"]])

        params = {"statementId": statement["id"], "attachments": "true"}
        async with session.get(ll.url + "statements", params=params, headers=_headers(ll)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == (
                f"multipart/mixed; charset=UTF-8; boundary={LL_BOUNDARY}"
            )
            assert ISO_MILLIS_Z.match(resp.headers[CONSISTENT_THROUGH])
            raw = await resp.read()
        [(json_headers, json_body), (part_headers, part_body)] = _parse_multipart(raw, LL_BOUNDARY)
        assert raw.startswith(f"\r\n--{LL_BOUNDARY}\r\nContent-Type:application/json".encode())
        assert json_headers == {
            "content-type": "application/json; charset=UTF-8",
            "content-length": str(len(json_body)),
        }
        assert json.loads(json_body)["attachments"] == statement["attachments"]
        assert part_headers == {
            "content-type": "application/octet-stream",
            "content-length": str(len(content)),
            "content-transfer-encoding": "binary",
            "x-experience-api-hash": hashlib.sha256(content).hexdigest(),
        }
        assert part_body == content

        # Without attachments=true: plain JSON, attachment metadata only.
        stored = await _get_statement(session, ll, statement["id"])
        assert stored["attachments"] == statement["attachments"]

        # PUT takes multipart too.
        put_id = str(uuid.uuid4())
        async with session.put(
            ll.url + "statements",
            params={"statementId": put_id},
            data=_multipart(_statement(attachments=[_attachment(content)]), content),
            headers=_headers(ll, **{"Content-Type": _multipart_type()}),
        ) as resp:
            assert resp.status == 204
        assert await _stored_attachment(session, ll, put_id) == content


async def test_attachment_mismatches_are_refused(learning_locker: LearningLockerServer) -> None:
    ll = learning_locker
    content = b"hello"
    sha2 = hashlib.sha256(content).hexdigest()
    with_attachment = _statement(attachments=[_attachment(content)])
    multipart = _multipart_type()
    async with aiohttp.ClientSession() as session:
        status, body = await _post(session, ll, _multipart([with_attachment]), multipart)
        assert (status, body["message"]) == (400, f"Received missing attachments ({sha2})")

        blob = json.dumps([with_attachment]).encode()
        status, body = await _post(session, ll, blob, "application/json")
        assert (status, body["message"]) == (400, f"Received missing attachments ({sha2})")

        status, body = await _post(session, ll, _multipart([_statement()], content), multipart)
        assert (status, body["message"]) == (400, f"Received extra attachments ({sha2})")

        no_encoding = _multipart([with_attachment], content).replace(
            b"Content-Transfer-Encoding: binary\r\n", b""
        )
        status, body = await _post(session, ll, no_encoding, multipart)
        assert (status, body["message"]) == (
            400,
            "Content-Transfer-Encoding (undefined) is not supported",
        )

        attachment_first = (
            f"--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"
            f"X-Experience-API-Hash: {sha2}\r\n\r\nhello\r\n--B\r\n"
            f"Content-Type: application/json\r\n\r\n{json.dumps([with_attachment])}\r\n--B--"
        ).encode()
        status, body = await _post(session, ll, attachment_first, _multipart_type("B"))
        assert (status, body["message"]) == (400, "No statements in request content")

        # A fileUrl attachment needs no part.
        remote = dict(_attachment(content), fileUrl="http://example.org/files/hello")
        blob = json.dumps([_statement(attachments=[remote])]).encode()
        assert (await _post(session, ll, blob, "application/json"))[0] == 200


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        # Part bodies are decoded as UTF-8 text: other bytes become U+FFFD.
        (b"\x00\x7f\x80\xff", b"\x00\x7f" + "\ufffd\ufffd".encode()),
        # Leading CR, LF and "s" characters are stripped (lodash trimStart(content, "\r\ns")).
        (b"sss middle sss", b" middle sss"),
        (b"\r\nbody\r\n", b"body\r\n"),
        # UTF-8 text survives.
        ("naïve ✓ 日本".encode(), "naïve ✓ 日本".encode()),
    ],
)
async def test_attachment_bodies_are_not_byte_safe(
    learning_locker: LearningLockerServer, sent: bytes, stored: bytes
) -> None:
    """The service does not check the content's sha2 either: the mangled body is accepted."""
    ll = learning_locker
    statement = _statement(id=str(uuid.uuid4()), attachments=[_attachment(sent)])
    async with aiohttp.ClientSession() as session:
        status, _ = await _post(session, ll, _multipart([statement], sent), _multipart_type())
        assert status == 200
        assert await _stored_attachment(session, ll, statement["id"]) == stored


async def test_attachment_content_is_not_checked_against_its_hash(
    learning_locker: LearningLockerServer,
) -> None:
    ll = learning_locker
    statement = _statement(id=str(uuid.uuid4()), attachments=[_attachment(b"hello")])
    body = _multipart([statement], b"hello").replace(b"\r\n\r\nhello\r\n", b"\r\n\r\nHELLO\r\n")
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, ll, body, _multipart_type()))[0] == 200
        assert await _stored_attachment(session, ll, statement["id"]) == b"HELLO"


def _signed(payload: dict[str, Any], sent: dict[str, Any], key: rsa.RSAPrivateKey) -> bytes:
    token = jwt.encode(payload, key, algorithm="RS256").encode()
    statement = dict(sent, attachments=[_attachment(token, SIGNATURE_USAGE)])
    return _multipart([statement], token)


async def test_signed_statement_payload_must_match_authority_and_id(
    learning_locker: LearningLockerServer,
) -> None:
    """LL compares the JWS payload with the statement received, authority and id included.

    A gateway that sets `authority` (or adds an `id`) on a signed statement before passing it
    on gets 400 "Signed statement should match original statement for '<id>'".
    """
    ll = learning_locker
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    someone = {"objectType": "Agent", "mbox": "mailto:someone@example.org"}
    gateway = {"objectType": "Agent", "mbox": "mailto:gateway@example.org"}

    def fresh(**fields: Any) -> dict[str, Any]:
        return _statement(id=str(uuid.uuid4()), **fields)

    same = fresh()
    with_authority = fresh(authority=someone)
    without_id = _statement()
    reordered = fresh()
    no_authority = fresh()
    replaced = fresh(authority=someone)
    tampered = fresh()
    id_added = _statement()
    cases: list[tuple[str, dict[str, Any], dict[str, Any], int]] = [
        ("identical", same, same, 200),
        ("identical with authority", with_authority, with_authority, 200),
        ("identical without id", without_id, without_id, 200),
        ("keys reordered", reordered, dict(reversed(list(reordered.items()))), 200),
        ("authority added", no_authority, dict(no_authority, authority=gateway), 400),
        ("authority replaced", replaced, dict(replaced, authority=gateway), 400),
        ("id added", id_added, dict(id_added, id=str(uuid.uuid4())), 400),
        ("verb changed", tampered, dict(tampered, verb={"id": "http://example.org/v"}), 400),
    ]
    async with aiohttp.ClientSession() as session:
        for label, payload, sent, expected in cases:
            status, body = await _post(session, ll, _signed(payload, sent, key), _multipart_type())
            assert status == expected, (label, body)
            if expected == 400:
                assert body["message"].startswith("Signed statement should match original"), label


async def test_alternate_request_syntax(learning_locker: LearningLockerServer) -> None:
    ll = learning_locker
    url = ll.url + "statements"
    statement_id = str(uuid.uuid4())
    form_headers = {"Authorization": ll.authorization, "X-Experience-API-Version": VERSION}
    content = json.dumps(_statement())
    async with aiohttp.ClientSession() as session:
        form = {
            **form_headers,
            "Content-Type": "application/json",
            "content": content,
            "statementId": statement_id,
        }
        async with session.post(url, params={"method": "PUT"}, data=form) as resp:
            assert resp.status == 204
            assert resp.headers["X-Experience-API-Version"] == VERSION
        assert (await _get_statement(session, ll, statement_id))["id"] == statement_id

        form = {**form_headers, "Content-Type": "application/json", "content": content}
        async with session.post(url, params={"method": "POST"}, data=form) as resp:
            assert resp.status == 200
            [posted_id] = await resp.json()
        await _get_statement(session, ll, posted_id)

        # GET reads its query parameters from the whole form, so headers in the form are
        # refused as unknown parameters; with real headers it works.
        form = {**form_headers, "statementId": statement_id}
        async with session.post(url, params={"method": "GET"}, data=form) as resp:
            assert resp.status == 400
            assert (await resp.json())["message"] == (
                "Cannot use unknown params 'Authorization, X-Experience-API-Version'"
            )
        async with session.post(
            url, params={"method": "GET"}, data={"statementId": statement_id}, headers=_headers(ll)
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["id"] == statement_id

        async with session.post(url, params={"method": "DELETE"}, data=form_headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["message"] == (
                "Method (DELETE) is invalid for alternate request syntax"
            )
        async with session.post(url, data=form_headers) as resp:  # form body, no ?method
            assert resp.status == 400
            assert (await resp.json())["message"] == (
                "Method (undefined) is invalid for alternate request syntax"
            )
        form = {"X-Experience-API-Version": VERSION, "content": content}
        async with session.post(url, params={"method": "POST"}, data=form) as resp:
            assert resp.status == 401  # no Authorization in the form nor the headers
        form = {**form_headers, "content": content}
        params = {"method": "PUT", "statementId": statement_id}
        async with session.post(url, params=params, data=form) as resp:
            assert resp.status == 400  # only `method` may be in the query string
            assert (await resp.json())["message"] == "Cannot use unknown params 'statementId'"
