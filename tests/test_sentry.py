"""Optional Sentry: off unless a DSN is set; on, logged errors reach the DSN."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config.settings import load_config


def test_ralph_sentry_variables_are_honoured(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("")
    config = load_config(
        tmp_path / "c.yaml",
        {
            "RALPH_SENTRY_DSN": "http://key@127.0.0.1:9/1",
            "RALPH_EXECUTION_ENVIRONMENT": "staging",
            "RALPH_SENTRY_LRS_TRACES_SAMPLE_RATE": "0.3",
            "RALPH_SENTRY_IGNORE_HEALTH_CHECKS": "False",
        },
    )
    assert config.sentry.dsn is not None
    assert config.sentry.environment == "staging"
    assert config.sentry.traces_sample_rate == 0.3
    assert config.sentry.ignore_health_checks is False
    assert "key@" not in repr(config)


def test_no_dsn_means_no_sentry_import(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        from gateway.config.settings import SentryConfig
        from gateway.runtime.sentry import setup_sentry
        assert setup_sentry(SentryConfig()) is False
        assert "sentry_sdk" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_errors_reach_the_dsn(aiohttp_server: Any) -> None:
    received: list[bytes] = []

    async def ingest(request: web.Request) -> web.Response:
        received.append(await request.read())  # aiohttp undoes the Content-Encoding
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/1/envelope/", ingest)
    server: TestServer = await aiohttp_server(app)
    dsn = f"http://publickey@127.0.0.1:{server.port}/1"
    code = textwrap.dedent(f"""
        import logging, sentry_sdk
        from gateway.config.settings import SentryConfig
        from gateway.secret import Secret
        from gateway.runtime.sentry import setup_sentry
        assert setup_sentry(SentryConfig(dsn=Secret({dsn!r}), environment="test"))
        logging.getLogger("gateway").error("unexpected error (request abc)")
        sentry_sdk.flush(timeout=5)
    """)
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await process.wait() == 0
    assert received, "nothing reached the Sentry endpoint"
    assert b"unexpected error (request abc)" in b"".join(received)
    assert b'"environment":"test"' in b"".join(received)
