"""The baseline of the benchmarks (issue 8, setup b): the naive aiohttp pass-through proxy.

    python bench/baseline_proxy.py --port 8200 --upstream http://127.0.0.1:8100/xAPI/

One ClientSession with aiohttp's defaults; for POST /xAPI/statements: read the body, parse
it (stdlib json, like the gateway), set one field (`authority`) on each statement, forward,
and return the upstream's answer. The "auth" is a dict lookup of the Authorization header
(what a cached credential costs at best): the agent it maps to becomes the authority.
Same event loop as the gateway (asyncio's default, no uvloop), no access log.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
USERS = web.AppKey("users", dict)


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[SESSION] = session
        yield


async def post_statements(request: web.Request) -> web.Response:
    agent = request.app[USERS].get(request.headers.get("Authorization", ""))
    if agent is None:
        return web.json_response({"error": "unauthorized"}, status=401)
    data: Any = json.loads(await request.read())
    for statement in data if isinstance(data, list) else [data]:
        statement["authority"] = agent
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Experience-API-Version": request.headers.get("X-Experience-API-Version", "1.0.3"),
    }
    async with request.app[SESSION].post(
        request.app[UPSTREAM] + "statements", data=payload, headers=headers
    ) as upstream:
        body = await upstream.read()
        return web.Response(
            status=upstream.status,
            body=body,
            content_type=upstream.content_type,
            headers={
                "X-Experience-API-Version": upstream.headers.get("X-Experience-API-Version", "")
            },
        )


def create_app(
    upstream: str, username: str, password: str, agent: dict[str, Any]
) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream if upstream.endswith("/") else upstream + "/"
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    app[USERS] = {f"Basic {token}": agent}
    app.cleanup_ctx.append(_session)
    app.router.add_post("/xAPI/statements", post_statements)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--upstream", default="http://127.0.0.1:8100/xAPI/")
    parser.add_argument("--username", default="bench")
    parser.add_argument("--password", default="bench-password")
    parser.add_argument(
        "--agent",
        help="the authority to set, as JSON",
        default='{"objectType":"Agent","mbox":"mailto:bench@example.com"}',
    )
    args = parser.parse_args()
    app = create_app(args.upstream, args.username, args.password, json.loads(args.agent))
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
