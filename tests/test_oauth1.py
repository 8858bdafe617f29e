"""OAuth 1.0a, two-legged, for xAPI 1.0.x clients: signed by a real client library.

`requests-oauthlib` signs every request (HMAC-SHA1, and HMAC-SHA256) as an xAPI 1.0.3
client would; the gateway runs as `lrs-gateway serve --workers 2` in front of a real
Ralph, its OAuth consumer made through Rustici Engine's credential API. A replayed
request is refused whichever worker it reaches (the nonces are in the shared database).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from realparts.process import free_port
from realparts.ralph import RalphServer
from requests_oauthlib import OAuth1
from support import Served, basic, credential, served_gateway, write_config
from test_forwarding_real import ralph_one

from gateway.auth.oauth1 import ConsumerSecrets
from gateway.secret import Secret

pytestmark = pytest.mark.ralph

XAPI = {"X-Experience-API-Version": "1.0.3"}
ADMIN = basic("admin", "admin-password")
KEY = "a-32-character-or-longer-encryption-key-for-tests"


def statement() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"mbox": "mailto:oauth-learner@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/oauth"},
    }


@pytest.fixture
async def gateway(ralph: RalphServer, tmp_path: Path) -> AsyncIterator[Served]:
    port = free_port()
    write_config(
        tmp_path,
        ralph.url,
        [credential("admin", "admin-password", ["all", "admin"])],
        {
            "server": {"port": port, "host": "127.0.0.1"},
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "data_dir": "data",
            "auth": {
                "backends": ["basic", "oauth"],
                "oauth": {"encryption_key": KEY, "timestamp_window": 300},
            },
        },
    )
    async with served_gateway(tmp_path, port, workers=2) as served:
        yield served


async def consumer(served: Served, level: str = "ROOT") -> tuple[str, str]:
    """An OAUTH credential made through Rustici's API: (consumer key, consumer secret)."""
    key = f"lms-{uuid.uuid4().hex[:8]}"
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{served.base}/admin/xapi/credentials",
            json={
                "id": key,
                "name": "an xAPI 1.0 LMS",
                "auth": {"xapiCredentialAuthType": "OAUTH"},
                "permissionsLevel": {"xapiCredentialPermissionsLevel": level},
            },
            headers=ADMIN,
        ) as answer,
    ):
        assert answer.status == 200, await answer.text()
        made = (await answer.json())["xapiCredentials"][0]
    assert made["auth"] == {"xapiCredentialAuthType": "OAUTH"}
    return key, made["secret"]


def send(method: str, url: str, auth: OAuth1, **kwargs: Any) -> requests.Response:
    headers = {**XAPI, **kwargs.pop("headers", {})}
    return requests.request(method, url, auth=auth, headers=headers, timeout=30, **kwargs)


async def test_a_signed_client_writes_and_reads_and_is_the_authority(
    gateway: Served, ralph: RalphServer
) -> None:
    key, secret = await consumer(gateway)
    auth = OAuth1(key, secret)
    item = statement()
    wrote = await asyncio.to_thread(
        send, "POST", f"{gateway.base}/xAPI/statements", auth, json=item
    )
    assert wrote.status_code == 200, wrote.text
    async with aiohttp.ClientSession() as session:
        stored = await ralph_one(session, ralph, item["id"])
    assert stored is not None
    assert stored["authority"]["account"]["name"] == key  # the consumer is the authority
    # A query string is signed too: a read with parameters verifies.
    query = {"agent": json.dumps(item["actor"]), "limit": "5"}
    read = await asyncio.to_thread(
        send, "GET", f"{gateway.base}/xAPI/statements", auth, params=query
    )
    assert read.status_code == 200, read.text
    assert item["id"] in {s["id"] for s in read.json()["statements"]}
    sha256 = OAuth1(key, secret, signature_method="HMAC-SHA256")
    again = await asyncio.to_thread(
        send, "GET", f"{gateway.base}/xAPI/statements", sha256, params={"statementId": item["id"]}
    )
    assert again.status_code == 200, again.text


async def test_forgeries_replays_and_stale_requests_are_401(gateway: Served) -> None:
    key, secret = await consumer(gateway)
    url = f"{gateway.base}/xAPI/statements"

    wrong = await asyncio.to_thread(send, "GET", url, OAuth1(key, "not-the-secret"))
    assert wrong.status_code == 401
    assert "does not verify" in wrong.json()["message"]
    unknown = await asyncio.to_thread(send, "GET", url, OAuth1("nobody", secret))
    assert unknown.status_code == 401

    # A request signed once, sent twice: whichever worker gets the copy refuses it.
    signed = requests.Request("GET", url, auth=OAuth1(key, secret), headers=XAPI).prepare()
    with requests.Session() as session:
        first = await asyncio.to_thread(session.send, signed, timeout=30)
        replays = [await asyncio.to_thread(session.send, signed, timeout=30) for _ in range(4)]
    assert first.status_code == 200, first.text
    assert [r.status_code for r in replays] == [401] * 4
    assert "replayed" in replays[0].json()["message"]

    # A query changed after signing does not verify.
    signed = requests.Request(
        "GET", url, params={"limit": "1"}, auth=OAuth1(key, secret), headers=XAPI
    ).prepare()
    signed.url = str(signed.url).replace("limit=1", "limit=2")
    with requests.Session() as session:
        tampered = await asyncio.to_thread(session.send, signed, timeout=30)
    assert tampered.status_code == 401

    stale = OAuth1(key, secret, timestamp=str(int(time.time()) - 3600))
    old = await asyncio.to_thread(send, "GET", url, stale)
    assert old.status_code == 401
    assert "from the gateway's clock" in old.json()["message"]

    # The consumer's key and secret are no Basic credential.
    as_basic = await asyncio.to_thread(
        requests.get, url, headers={**XAPI, **basic(key, secret)}, timeout=30
    )
    assert as_basic.status_code == 401


async def test_xapi_2_requests_and_the_alternate_syntax_are_refused(gateway: Served) -> None:
    key, secret = await consumer(gateway)
    url = f"{gateway.base}/xAPI/statements"
    two = await asyncio.to_thread(
        send, "GET", url, OAuth1(key, secret), headers={"X-Experience-API-Version": "2.0.0"}
    )
    assert two.status_code == 401
    assert "xAPI 2.0 dropped OAuth" in two.json()["message"]
    signed = requests.Request("GET", url, auth=OAuth1(key, secret)).prepare()
    form = {
        "Authorization": signed.headers["Authorization"],
        "X-Experience-API-Version": "1.0.3",
    }
    alternate = await asyncio.to_thread(requests.post, f"{url}?method=GET", data=form, timeout=30)
    assert alternate.status_code == 400
    assert "alternate request syntax" in alternate.json()["message"]


async def test_scopes_come_from_the_consumers_permission_level(gateway: Served) -> None:
    key, secret = await consumer(gateway, "READONLY")
    url = f"{gateway.base}/xAPI/statements"
    wrote = await asyncio.to_thread(send, "POST", url, OAuth1(key, secret), json=statement())
    assert wrote.status_code == 403
    read = await asyncio.to_thread(send, "GET", url, OAuth1(key, secret))
    assert read.status_code == 200, read.text


async def test_the_database_holds_consumer_secrets_sealed(gateway: Served, tmp_path: Path) -> None:
    key, secret = await consumer(gateway)
    raw = (tmp_path / "data" / "gateway.sqlite3").read_bytes()
    assert secret.encode() not in raw
    sealed = ConsumerSecrets(Secret(KEY)).seal(secret)
    assert ConsumerSecrets(Secret(KEY)).open(sealed) == Secret(secret)
    assert ConsumerSecrets(Secret("another key of thirty-two or more chars")).open(sealed) is None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.base}/admin/xapi/credentials/{key}", headers=ADMIN) as answer,
    ):
        shown = await answer.json()
    assert "secret" not in shown
