"""The resolver's question to storage ("do you hold this statement?"), as a review found it.

It must ask in a version storage speaks (the served list, narrowed to storage's /about),
and take an id storage gives back in another case as the same id: otherwise a statement
whose answer was lost stays pending for ever, or is dropped though storage kept it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import FakeLRS, FakeTarget, credential, write_config

from gateway.http.app import create_app
from gateway.http.keys import FORWARDER

Client = TestClient[web.Request, web.Application]
KEPT = str(uuid.uuid4()).upper()


async def storage(request: web.Request, body: bytes) -> web.StreamResponse:
    """A 1.0.3-only LRS that stores ids lower-cased."""
    if request.path.rstrip("/").endswith("/about"):
        return web.json_response({"version": ["1.0.3"]})
    if not request.headers.get("X-Experience-API-Version", "").startswith("1.0"):
        return web.json_response({"message": "version not supported"}, status=400)
    wanted = request.query.get("statementId", "")
    if wanted.lower() == KEPT.lower():
        return web.json_response({"id": KEPT.lower(), "actor": {"mbox": "mailto:a@b.org"}})
    return web.json_response({"message": "not found"}, status=404)


async def test_the_resolver_asks_in_storages_version_and_ignores_the_ids_case(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    lrs: TestServer = await aiohttp_server(FakeLRS(storage).app())
    target = FakeTarget()
    target_server: TestServer = await aiohttp_server(target.app())
    config = write_config(
        tmp_path,
        str(lrs.make_url("/xAPI/")),
        [credential("u", "p", ["all"])],
        {
            "xapi": {"versions": ["2.0.0", "1.0.3"]},  # 2.0 first: storage only speaks 1.0.3
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
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    forwarder = client.app[FORWARDER]  # the private question is the unit under test
    assert await forwarder._in_storage(KEPT) is True
    assert await forwarder._in_storage(str(uuid.uuid4())) is False
