"""Readiness: what /__heartbeat__ answers, also checked in the background for the metric."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import GatewayError
from gateway.keys import AUTHENTICATOR, METRICS, STORAGE, VERSIONS
from gateway.xapiversion import VERSION_HEADER

__all__ = ["INTERVAL", "check_readiness", "readiness_loop"]

INTERVAL = 15.0  # seconds between background checks (the `lrs_gateway_ready` gauge)


async def check_readiness(app: web.Application) -> tuple[bool, dict[str, str]]:
    """(ready, detail per check); also sets the `ready` gauge.

    Storage counts as ready when it answers HTTP below 500 other than 401/403: some LRSes
    (Ralph) have no /about and say 404.
    """
    storage = app[STORAGE]
    try:
        async with storage.request("GET", "about", headers={
                VERSION_HEADER: app[VERSIONS].default}) as answer:
            ready = answer.status < 500 and answer.status not in (401, 403)
            detail = "ok" if ready else f"answered {answer.status}"
    except GatewayError as error:
        ready, detail = False, error.message
    checks = {"storage": detail}
    problems = app[AUTHENTICATOR].readiness_problems()
    if problems:
        ready = False
        checks["auth"] = "; ".join(problems)
    app[METRICS].ready.set(1 if ready else 0)
    return ready, checks


async def readiness_loop(app: web.Application) -> AsyncIterator[None]:
    """Keep the gauge current even when nothing probes /__heartbeat__ (systemd installs)."""

    async def loop() -> None:
        while True:
            with contextlib.suppress(Exception):
                await check_readiness(app)
            await asyncio.sleep(INTERVAL)

    task = asyncio.create_task(loop(), name="readiness")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
