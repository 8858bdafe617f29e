"""Smoke test of the `ralph` fixture, talking to Ralph directly (no gateway)."""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid
from typing import Any

import aiohttp
import pytest
from realparts.ralph import RalphServer

pytestmark = pytest.mark.ralph

XAPI_HEADERS = {"X-Experience-API-Version": "1.0.3"}
SUBMITTED_AUTHORITY = {"mbox": "mailto:someone-else@example.com", "objectType": "Agent"}


def _statement(statement_id: str, activity: str = "http://example.com/activities/1") -> Any:
    return {
        "id": statement_id,
        "actor": {"mbox": "mailto:learner@example.com", "objectType": "Agent"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
        "object": {"id": activity, "objectType": "Activity"},
        "timestamp": "2024-05-01T12:00:00+00:00",
        "authority": SUBMITTED_AUTHORITY,
    }


def basic_auth(username: str, password: str) -> str:
    """Return a Basic `Authorization` value (aiohttp 3.14 deprecates `BasicAuth`)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _session(ralph: RalphServer, password: str | None = None) -> aiohttp.ClientSession:
    authorization = basic_auth(ralph.username, ralph.password if password is None else password)
    return aiohttp.ClientSession(headers={**XAPI_HEADERS, "Authorization": authorization})


async def test_heartbeat(ralph: RalphServer) -> None:
    async with _session(ralph) as session, session.get(ralph.root_url + "__heartbeat__") as resp:
        assert resp.status == 200
        assert await resp.json() == {"database": "ok"}


async def test_post_then_get_keeps_submitted_authority(ralph: RalphServer) -> None:
    statement_id = str(uuid.uuid4())
    async with _session(ralph) as session:
        async with session.post(ralph.url + "statements", json=_statement(statement_id)) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == [statement_id]
        async with session.get(
            ralph.url + "statements", params={"statementId": statement_id}
        ) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    statements = body["statements"]
    assert [s["id"] for s in statements] == [statement_id]
    # Ralph 5.1 keeps a submitted authority for a credential with `all` (authority/write).
    assert statements[0]["authority"] == SUBMITTED_AUTHORITY
    assert statements[0]["authority"] != ralph.agent


async def test_second_write_is_accepted(ralph: RalphServer) -> None:
    """The fs backend appends (ralph 5.1.0 refuses the 2nd write unless the launcher fixes it)."""
    async with _session(ralph) as session:
        for _ in range(2):
            statement_id = str(uuid.uuid4())
            async with session.post(
                ralph.url + "statements", json=_statement(statement_id)
            ) as resp:
                assert resp.status == 200, await resp.text()


async def test_duplicate_ids(ralph: RalphServer) -> None:
    statement_id = str(uuid.uuid4())
    async with _session(ralph) as session:
        async with session.post(ralph.url + "statements", json=_statement(statement_id)) as resp:
            assert resp.status == 200, await resp.text()
        # The same statement again: nothing new stored, 204.
        async with session.post(ralph.url + "statements", json=_statement(statement_id)) as resp:
            assert resp.status == 204, await resp.text()
        # Same id, different content: conflict.
        conflicting = _statement(statement_id, activity="http://example.com/activities/other")
        async with session.post(ralph.url + "statements", json=conflicting) as resp:
            assert resp.status == 409, await resp.text()


async def test_wrong_password_is_refused(ralph: RalphServer) -> None:
    async with (
        _session(ralph, password="wrong") as session,
        session.get(ralph.url + "statements") as resp,
    ):
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Basic"


async def test_more_links_page_through_the_fs_backend(ralph: RalphServer) -> None:
    """Ralph's `more` is path-only and carries `pit_id`/`search_after`; it pages fs too."""
    # Filter on a fresh actor: in ralph 5.1.0 the fs backend's `verb` and `activity`
    # filters never match (it compares an IRI object with a str), `agent` works.
    actor = {"mbox": f"mailto:pager-{uuid.uuid4().hex[:12]}@example.com"}
    posted = [str(uuid.uuid4()) for _ in range(5)]
    seen: list[str] = []
    async with _session(ralph) as session:
        for statement_id in posted:
            statement = {**_statement(statement_id), "actor": actor}
            async with session.post(ralph.url + "statements", json=statement) as resp:
                assert resp.status == 200, await resp.text()
        query = urllib.parse.urlencode({"agent": json.dumps(actor), "limit": 2})
        url = f"{ralph.url}statements?{query}"
        for _ in range(5):
            async with session.get(url) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            seen += [s["id"] for s in body["statements"]]
            more = body.get("more")
            if not more:
                break
            assert more.startswith("/xAPI/statements?")
            assert "search_after=" in more
            url = ralph.root_url + more.removeprefix("/")
    # The fs backend returns oldest first (not the xAPI newest-first order).
    assert seen == posted
