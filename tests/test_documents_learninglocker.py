"""The document API through the gateway, against a real service: Learning Locker's activity
profiles (`@learninglocker/xapi-activities` 4.4.4, the `learning_locker_profiles` fixture).

The gateway claims documents pass through untouched both ways: bodies byte for byte,
`ETag`, `If-Match`, `If-None-Match`, `Content-Type`, `Last-Modified`, query parameters, and
the LRS's own answers (204, 400, 404, 409, 412 with its bodies). Each test goes client ->
gateway -> service and, where it matters, compares with what the service says when asked
directly: a gateway that dropped a precondition header would turn a 204 or 412 into the
service's 400/409, one that touched a body, type or ETag would no longer match the direct
read. State and agent profiles share the gateway's code path but have no installable real
service; they are covered by the scripted LRS in tests/test_gateway_http.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from realparts.learninglocker import LearningLockerServer
from support import XAPI, basic, credential, storage_config
from yarl import URL

from gateway.http.app import create_app

pytestmark = pytest.mark.learninglocker
Client = TestClient[web.Request, web.Application]
PROFILE_PATH = "activities/profile"
BINARY = bytes(range(256)) * 256  # every byte value, 64 KiB

ADMIN = ("admin", "admin-pw")
PROFILER = ("profiler", "profiler-pw")
READER = ("reader", "reader-pw")
STATEMENT_WRITER = ("lms", "lms-pw")
STATE_KEEPER = ("state-keeper", "state-keeper-pw")
USERS = [
    credential(*ADMIN, ["all"]),
    credential(*PROFILER, ["profile"]),
    credential(*READER, ["all/read"]),
    credential(*STATEMENT_WRITER, ["statements/write"]),
    credential(*STATE_KEEPER, ["state"]),
]

# The service's own messages (translatorFactory/en.js), passed on unchanged.
MISSING_PRECONDITION = "IfMatch and IfNoneMatch header are missing"
ALREADY_PRESENT = "IfNoneMatch was used to detect that the resource was already present"
STALE_ETAG = (
    "IfMatch does not match Etag because a modification has been made since it was retrieved"
)
CONFLICT = "Get the profile to retrieve the Etag, then set the If-Match header to the Etag"
NOT_AN_OBJECT = "Expected a JSON object to be provided and stored (if it exists)"
NOT_FOUND = "No Activity Profile found"


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def message(self) -> str:
        """The service's error message; fails unless the body is the service's own error
        shape (a gateway error body has `error` and `request_id` instead)."""
        document = json.loads(self.body)
        assert set(document) == {"errorId", "message"}, document
        message: str = document["message"]
        return message


@dataclass(frozen=True)
class Profile:
    """One activity profile document's address: a fresh activity per test."""

    activity_id: str
    profile_id: str

    @classmethod
    def fresh(cls, profile_id: str = "notes ü/1") -> Profile:
        """A profile of a new activity (the service lives for the whole session)."""
        return cls(f"http://lrs-gateway.example.org/activities/{uuid.uuid4()}", profile_id)

    def sibling(self, profile_id: str) -> Profile:
        """Another profile of the same activity."""
        return Profile(self.activity_id, profile_id)

    @property
    def activity_query(self) -> str:
        return "activityId=" + quote(self.activity_id, safe="")

    @property
    def query(self) -> str:
        return f"{self.activity_query}&profileId={quote(self.profile_id, safe='')}"


async def start_gateway(ll: LearningLockerServer, tmp_path: Path, aiohttp_client: Any) -> Client:
    """The gateway with the service's xAPI root as storage, the service's credential upstream."""
    config = storage_config(ll, tmp_path, USERS)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


@pytest.fixture
async def gateway(
    learning_locker_profiles: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> Client:
    return await start_gateway(learning_locker_profiles, tmp_path, aiohttp_client)


async def via_gateway(
    gateway: Client,
    method: str,
    query: str,
    user: tuple[str, str],
    body: bytes | None = None,
    **headers: str,
) -> Answer:
    """`method` /xAPI/activities/profile?`query` through the gateway, query sent as is."""
    url = URL(f"{gateway.make_url('/xAPI/' + PROFILE_PATH)}?{query}", encoded=True)
    all_headers = {**basic(*user), **_header_names(headers)}
    async with gateway.session.request(method, url, data=body, headers=all_headers) as resp:
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.read())


async def direct(
    ll: LearningLockerServer, method: str, query: str, body: bytes | None = None, **headers: str
) -> Answer:
    """The same request straight to the service, with its own credential (no gateway)."""
    url = URL(f"{ll.url}{PROFILE_PATH}?{query}", encoded=True)
    all_headers = {"Authorization": ll.authorization, **XAPI, **_header_names(headers)}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=all_headers) as resp,
    ):
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.read())


def _header_names(headers: dict[str, str]) -> dict[str, str]:
    """`If_Match="x"` keyword arguments to `If-Match: x` headers."""
    return {name.replace("_", "-"): value for name, value in headers.items()}


async def create(
    gateway: Client, profile: Profile, body: bytes, content_type: str, user: tuple[str, str] = ADMIN
) -> None:
    """Create the document through the gateway (If-None-Match: *), expecting 204."""
    answer = await via_gateway(
        gateway, "PUT", profile.query, user, body, Content_Type=content_type, If_None_Match="*"
    )
    assert answer.status == 204, answer


def assert_same_document(through: Answer, straight: Answer, body: bytes) -> None:
    """A read through the gateway is the service's own read: status, bytes, headers."""
    assert (through.status, straight.status) == (200, 200)
    assert through.body == straight.body == body
    for name in ("ETag", "Last-Modified", "Content-Type", "X-Experience-API-Version"):
        assert through.headers[name] == straight.headers[name], name


async def test_create_read_and_update_with_etags(
    gateway: Client, learning_locker_profiles: LearningLockerServer
) -> None:
    ll = learning_locker_profiles
    profile = Profile.fresh()
    first = b'{"progress":0.5,"bookmark":"page-3"}'  # compact: the service re-serialises JSON
    await create(gateway, profile, first, "application/json")

    again = await via_gateway(
        gateway,
        "PUT",
        profile.query,
        ADMIN,
        b'{"other":1}',
        Content_Type="application/json",
        If_None_Match="*",
    )
    assert (again.status, again.message()) == (412, ALREADY_PRESENT)
    assert again.headers["X-Experience-API-Version"] == "1.0.3"

    read = await via_gateway(gateway, "GET", profile.query, ADMIN)
    assert_same_document(read, await direct(ll, "GET", profile.query), first)
    etag = read.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{40}"', etag)  # a quoted sha1
    assert read.headers["Content-Type"] == "application/json"
    assert datetime.fromisoformat(read.headers["Last-Modified"]).tzinfo is not None

    # No precondition on an existing document: the service's 409, unchanged.
    blind = await via_gateway(
        gateway, "PUT", profile.query, ADMIN, b'{"blind":1}', Content_Type="application/json"
    )
    assert (blind.status, blind.message()) == (409, CONFLICT)

    second = b'{"progress":1,"bookmark":"end"}'
    update = await via_gateway(
        gateway, "PUT", profile.query, ADMIN, second, Content_Type="application/json", If_Match=etag
    )
    assert update.status == 204, update
    stale = await via_gateway(
        gateway,
        "PUT",
        profile.query,
        ADMIN,
        b'{"lost":1}',
        Content_Type="application/json",
        If_Match=etag,
    )
    assert (stale.status, stale.message()) == (412, STALE_ETAG)

    reread = await via_gateway(gateway, "GET", profile.query, ADMIN)
    assert_same_document(reread, await direct(ll, "GET", profile.query), second)
    assert reread.headers["ETag"] != etag
    assert reread.headers["Last-Modified"] >= read.headers["Last-Modified"]  # ISO: sortable


async def test_put_without_precondition_is_the_services_400(
    gateway: Client, learning_locker_profiles: LearningLockerServer
) -> None:
    profile = Profile.fresh()
    answer = await via_gateway(
        gateway, "PUT", profile.query, ADMIN, b'{"a":1}', Content_Type="application/json"
    )
    assert (answer.status, answer.message()) == (400, MISSING_PRECONDITION)
    both = await via_gateway(
        gateway,
        "PUT",
        profile.query,
        ADMIN,
        b'{"a":1}',
        Content_Type="application/json",
        If_Match='"x"',
        If_None_Match="*",
    )
    assert (both.status, both.message()) == (
        400,
        "IfMatch and IfNoneMatch cannot be used at the same time",
    )
    assert (await direct(learning_locker_profiles, "GET", profile.query)).status == 404


async def test_post_merges_json_objects(
    gateway: Client, learning_locker_profiles: LearningLockerServer
) -> None:
    ll = learning_locker_profiles
    profile = Profile.fresh()
    await create(gateway, profile, b'{"a":1,"nested":{"x":1}}', "application/json")
    merged = await via_gateway(
        gateway,
        "POST",
        profile.query,
        ADMIN,
        b'{"b":2,"nested":{"y":2}}',
        Content_Type="application/json; charset=utf-8",
    )
    assert merged.status == 204, merged
    read = await via_gateway(gateway, "GET", profile.query, ADMIN)
    # A shallow merge: top-level keys of the POSTed object replace the stored ones.
    assert_same_document(
        read, await direct(ll, "GET", profile.query), b'{"a":1,"nested":{"y":2},"b":2}'
    )

    stale = await via_gateway(
        gateway,
        "POST",
        profile.query,
        ADMIN,
        b'{"c":3}',
        Content_Type="application/json",
        If_Match='"0000"',
    )
    assert (stale.status, stale.message()) == (412, STALE_ETAG)
    # Not an object: refused by the gateway itself (Comm 2.2.s8.b1), as the service would.
    not_object = await via_gateway(
        gateway, "POST", profile.query, ADMIN, b"[1,2]", Content_Type="application/json"
    )
    assert not_object.status == 400
    assert "not an object" in json.loads(not_object.body)["message"]

    # POST creates a document that is absent (no precondition needed).
    other = profile.sibling("created-by-post")
    assert (
        await via_gateway(
            gateway, "POST", other.query, PROFILER, b'{"n":1}', Content_Type="application/json"
        )
    ).status == 204
    assert (await direct(ll, "GET", other.query)).body == b'{"n":1}'


@pytest.mark.parametrize(
    "content_type", ["application/octet-stream", "image/png", "text/plain; charset=iso-8859-1"]
)
async def test_non_json_documents_are_byte_exact(
    gateway: Client, learning_locker_profiles: LearningLockerServer, content_type: str
) -> None:
    ll = learning_locker_profiles
    profile = Profile.fresh("blob")
    await create(gateway, profile, BINARY, content_type)

    stored = await direct(ll, "GET", profile.query)  # what reached the service
    assert stored.body == BINARY
    assert stored.headers["Content-Type"] == content_type  # the request's type, as sent
    read = await via_gateway(gateway, "GET", profile.query, ADMIN)
    assert_same_document(read, stored, BINARY)

    # Merging is for JSON: the service refuses it, through the gateway too.
    post = await via_gateway(
        gateway, "POST", profile.query, ADMIN, b'{"a":1}', Content_Type="application/json"
    )
    assert (post.status, post.message()) == (400, NOT_AN_OBJECT)
    assert (await direct(ll, "GET", profile.query)).body == BINARY


async def test_profile_ids_since(
    gateway: Client, learning_locker_profiles: LearningLockerServer
) -> None:
    first = Profile.fresh("first")
    second = first.sibling("second ü")
    await create(gateway, first, b'{"n":1}', "application/json")
    first_modified = datetime.fromisoformat(
        (await direct(learning_locker_profiles, "GET", first.query)).headers["Last-Modified"]
    )
    # `since` means strictly after, in milliseconds: let the clock pass first's time.
    await asyncio.sleep(max(0.0, (first_modified - datetime.now(UTC)).total_seconds()) + 0.002)
    await create(gateway, second, BINARY, "application/octet-stream")

    async def listed(query: str) -> list[str]:
        answer = await via_gateway(gateway, "GET", query, READER)
        assert answer.status == 200, answer
        assert answer.body == (await direct(learning_locker_profiles, "GET", query)).body
        ids: list[str] = json.loads(answer.body)
        return ids

    assert await listed(first.activity_query) == ["first", "second ü"]
    # An offset with "+" (percent-encoded): a gateway that re-decoded the query would hand
    # the service a space and get its 400.
    since = quote(first_modified.isoformat(timespec="milliseconds"), safe="")
    assert "%2B00%3A00" in since
    assert await listed(f"{first.activity_query}&since={since}") == ["second ü"]
    assert await listed(f"{first.activity_query}&since=2999-01-01T00%3A00%3A00Z") == []
    bad = await via_gateway(gateway, "GET", f"{first.activity_query}&since=yesterday", READER)
    assert bad.status == 400  # from the gateway itself, naming the parameter
    assert "'since'" in json.loads(bad.body)["message"]


async def test_delete_then_404(
    gateway: Client, learning_locker_profiles: LearningLockerServer
) -> None:
    ll = learning_locker_profiles
    profile = Profile.fresh()
    await create(gateway, profile, b'{"a":1}', "application/json")
    etag = (await direct(ll, "GET", profile.query)).headers["ETag"]

    stale = await via_gateway(gateway, "DELETE", profile.query, ADMIN, If_Match='"0000"')
    assert (stale.status, stale.message()) == (412, STALE_ETAG)
    assert (await direct(ll, "GET", profile.query)).status == 200  # still there

    deleted = await via_gateway(gateway, "DELETE", profile.query, ADMIN, If_Match=etag)
    assert (deleted.status, deleted.body) == (204, b"")
    gone = await via_gateway(gateway, "GET", profile.query, ADMIN)
    assert (gone.status, gone.message()) == (404, NOT_FOUND)
    listed = await via_gateway(gateway, "GET", profile.activity_query, ADMIN)
    assert (listed.status, listed.body) == (200, b"[]")
    # Deleting what is not there is the service's 204 (idempotent), passed on.
    assert (await via_gateway(gateway, "DELETE", profile.query, ADMIN)).status == 204


@pytest.mark.parametrize("user", [STATEMENT_WRITER, STATE_KEEPER], ids=["statements", "state"])
async def test_other_scopes_are_refused_before_the_service(
    gateway: Client, learning_locker_profiles: LearningLockerServer, user: tuple[str, str]
) -> None:
    ll = learning_locker_profiles
    profile = Profile.fresh()
    for method, body in [("PUT", b'{"a":1}'), ("POST", b'{"a":1}'), ("GET", None)]:
        answer = await via_gateway(
            gateway,
            method,
            profile.query,
            user,
            body,
            Content_Type="application/json",
            If_None_Match="*",
        )
        assert answer.status == 403, (method, answer)
        assert json.loads(answer.body)["error"] == "forbidden"  # the gateway's, not the LRS's
    assert (await direct(ll, "GET", profile.query)).status == 404  # nothing reached it

    await create(gateway, profile, b'{"a":1}', "application/json")
    refused = await via_gateway(gateway, "DELETE", profile.query, user)
    assert refused.status == 403
    assert (await direct(ll, "GET", profile.query)).body == b'{"a":1}'


async def test_read_only_scope_reads_but_does_not_write(
    gateway: Client, learning_locker_profiles: LearningLockerServer
) -> None:
    ll = learning_locker_profiles
    profile = Profile.fresh()
    await create(gateway, profile, b'{"a":1}', "application/json", user=PROFILER)
    read = await via_gateway(gateway, "GET", profile.query, READER)
    assert_same_document(read, await direct(ll, "GET", profile.query), b'{"a":1}')

    etag = read.headers["ETag"]
    for method in ("PUT", "POST"):
        answer = await via_gateway(
            gateway,
            method,
            profile.query,
            READER,
            b'{"b":2}',
            Content_Type="application/json",
            If_Match=etag,
        )
        assert answer.status == 403, (method, answer)
    assert (await via_gateway(gateway, "DELETE", profile.query, READER)).status == 403
    after = await direct(ll, "GET", profile.query)
    assert (after.body, after.headers["ETag"]) == (b'{"a":1}', etag)


async def test_profile_scope_may_do_everything(
    gateway: Client, learning_locker_profiles: LearningLockerServer
) -> None:
    ll = learning_locker_profiles
    profile = Profile.fresh()
    await create(gateway, profile, b'{"a":1}', "application/json", user=PROFILER)
    read = await via_gateway(gateway, "GET", profile.query, PROFILER)
    assert read.status == 200
    merged = await via_gateway(
        gateway,
        "POST",
        profile.query,
        PROFILER,
        b'{"b":2}',
        Content_Type="application/json",
        If_Match=read.headers["ETag"],
    )
    assert merged.status == 204
    assert (await direct(ll, "GET", profile.query)).body == b'{"a":1,"b":2}'
    assert (await via_gateway(gateway, "DELETE", profile.query, PROFILER)).status == 204
    assert (await direct(ll, "GET", profile.query)).status == 404
