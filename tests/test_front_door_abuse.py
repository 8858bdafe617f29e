"""What a review found as an attacker would: cheap refusals, no way around the checks.

- An alternate-syntax form is parsed before authentication (the credential is in it): a
  form of a million fields must cost nothing, and come after the rate limit.
- A repeated query parameter is found in linear time (forms make long queries).
- `/xAPI/STATEMENTS` (any case, a trailing slash, encoded) is not a way to reach an LRS's
  statements endpoint past the gateway's checks, stamping and outbox: Learning Locker
  routes without regard to case.
- An encoded `?` in an alternate-syntax path cannot turn into a real one.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import MultiDict
from prometheus_client import CollectorRegistry
from realparts.learninglocker import LearningLockerServer
from support import FakeLRS, basic, credential, storage_config, write_config

from gateway.errors import BadRequest
from gateway.http.app import create_app
from gateway.xapi.request_rules import check_repeats

Client = TestClient[web.Request, web.Application]
ROOT = credential("root", "root-pw", ["all"])
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
STATEMENT = {
    "actor": {"mbox": "mailto:a@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/a"},
    "authority": {"mbox": "mailto:x@x.org"},
    "bogus": 1,
}


@pytest.fixture
async def gateway(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> tuple[Client, FakeLRS]:
    fake = FakeLRS()
    storage: TestServer = await aiohttp_server(fake.app())
    config = write_config(tmp_path, str(storage.make_url("/xAPI/")), [ROOT])
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client, fake


async def test_a_form_of_a_million_fields_is_refused_at_once(
    gateway: tuple[Client, FakeLRS],
) -> None:
    client, fake = gateway
    started = time.perf_counter()
    response = await client.post(
        "/xAPI/statements?method=GET", data=io.BytesIO(b"a&" * 1_000_000), headers=FORM
    )
    assert response.status == 400
    assert "fields" in (await response.json())["message"]
    assert time.perf_counter() - started < 2  # was 25 s and 1 GB for half as many
    assert fake.seen == []


def test_repeated_parameters_are_found_in_linear_time() -> None:
    query: MultiDict[str] = MultiDict((f"k{i}", "v") for i in range(100_000))
    query.add("k0", "again")
    started = time.perf_counter()
    with pytest.raises(BadRequest, match="'k0'"):
        check_repeats(query)
    assert time.perf_counter() - started < 1  # quadratic: minutes


@pytest.mark.parametrize(
    "path",
    [
        "/xAPI/STATEMENTS",
        "/xAPI/Statements/",
        "/xAPI/%73tatements",
        "/xAPI/Activities/State",
        "/xAPI/AGENTS/profile",
        "/xAPI/About",
    ],
)
async def test_a_resource_in_another_spelling_is_refused(
    gateway: tuple[Client, FakeLRS], path: str
) -> None:
    client, fake = gateway
    response = await client.post(path, json=STATEMENT, headers=basic("root", "root-pw"))
    assert response.status == 400
    assert fake.seen == []


async def test_an_encoded_question_mark_stays_in_the_path(gateway: tuple[Client, FakeLRS]) -> None:
    client, fake = gateway
    response = await client.post(
        "/xAPI/statements%3F?method=PUT",
        headers=FORM,
        data={
            "Authorization": basic("root", "root-pw")["Authorization"],
            "X-Experience-API-Version": "1.0.3",
            "content": "{}",
        },
    )
    assert response.status == 400
    assert fake.seen == []


@pytest.mark.learninglocker
async def test_learning_locker_never_gets_a_statement_past_the_gateway(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Learning Locker answers /xAPI/STATEMENTS as /xAPI/statements; the gateway must not."""
    config = storage_config(learning_locker, tmp_path / "gw", [ROOT])
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    auth = basic("root", "root-pw")
    for path in ("/xAPI/STATEMENTS", "/xAPI/Statements/"):
        response = await client.post(
            path,
            json={**STATEMENT, "bogus": None} | {"id": "6f1d3b0e-8a1c-4c6e-9f57-2b7e1d0c9a10"},
            headers=auth,
        )
        assert response.status == 400, await response.text()
    response = await client.get(
        "/xAPI/statements?statementId=6f1d3b0e-8a1c-4c6e-9f57-2b7e1d0c9a10", headers=auth
    )
    assert response.status == 404
