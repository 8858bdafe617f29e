"""/xAPI/statements: writes get ids and authority; reads get `more` mapped and read/mine."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import jsoncodec
from gateway.bodies import read_limited
from gateway.errors import BadRequest, NotFound, UnsupportedMediaType, UpstreamUnavailable
from gateway.keys import CONFIG, FORWARDER, METRICS, PRINCIPAL, REQUEST_ID, STORAGE
from gateway.principal import Principal
from gateway.routes import raw_query, xapi_tail
from gateway.scopes import statements_read_mode
from gateway.statement_results import gateway_more, keep_own, upstream_tail_of_more
from gateway.statements import parse_json_body, prepare_post, prepare_put
from gateway.upstream import (
    Upstream,
    hide_failure,
    read_capped,
    request_headers,
    response_headers,
)

__all__ = ["get_statements", "post_statements", "put_statements"]

# A read/mine caller whose statements are rare would otherwise page through empty pages;
# fetch a few upstream pages per answer, then hand back a `more` that continues.
_MINE_MAX_PAGES = 10


def _check_plain_write(request: web.Request) -> None:
    if "method" in request.query:
        raise BadRequest("the alternate request syntax (?method=) is not supported yet")
    if request.content_type == "multipart/mixed":
        raise UnsupportedMediaType(
            "statements with attachments (multipart/mixed) are not supported by this gateway yet"
        )
    if request.content_type != "application/json":
        raise BadRequest(f"statements are sent as application/json (or multipart/mixed with "
                         f"attachments), not {request.content_type[:60]}")


def _encode(statement: Any) -> bytes:
    return jsoncodec.dumps(statement)


async def _send_write(request: web.Request, method: str, statements: list[Any],
                      batch: bool) -> web.Response:
    """Send to storage; with forwarding on, record the statements ahead and settle them after.

    Each statement is encoded once: storage and every forwarding target get the same bytes.
    """
    parts = [_encode(statement) for statement in statements]
    payload = b"[" + b",".join(parts) + b"]" if batch else parts[0]
    forwarder = request.app.get(FORWARDER)
    seqs = (await forwarder.record_pending([(s["id"], b) for s, b in zip(statements, parts,
                                                                          strict=True)])
            if forwarder is not None else [])
    headers = request_headers(request.headers, extra={
        "X-Request-ID": request[REQUEST_ID], "Content-Type": "application/json",
    })
    # If storage's answer is lost (timeout, crash), the pending record stays and the
    # resolver asks storage about each statement later.
    try:
        async with request.app[STORAGE].request(method, xapi_tail(request),
                                                raw_query=raw_query(request),
                                                headers=headers, data=payload) as upstream:
            await hide_failure(upstream, "storage", request[REQUEST_ID])
            answer = await upstream.read()
        accepted = 200 <= upstream.status < 300
        if accepted:
            request.app[METRICS].statements_accepted.inc(len(statements))
        if forwarder is not None:
            await (forwarder.accepted(seqs) if accepted else forwarder.refused(seqs))
    finally:
        if forwarder is not None:
            forwarder.settled(seqs)
    return web.Response(status=upstream.status, reason=upstream.reason, body=answer,
                        headers=response_headers(upstream.headers, decoded=False))


async def post_statements(request: web.Request) -> web.Response:
    """Store one statement or a batch, each with an id and the caller as authority."""
    _check_plain_write(request)
    body = await read_limited(request, request.app[CONFIG].server.max_body_size)
    data, _ = prepare_post(parse_json_body(body), request[PRINCIPAL].agent,
                           request.app[CONFIG].limits.max_batch_statements)
    batch = isinstance(data, list)
    return await _send_write(request, "POST", data if batch else [data], batch)


async def put_statements(request: web.Request) -> web.Response:
    """Store one statement under the `statementId` the client chose."""
    _check_plain_write(request)
    body = await read_limited(request, request.app[CONFIG].server.max_body_size)
    statement = prepare_put(parse_json_body(body), request.query.get("statementId"),
                            request[PRINCIPAL].agent)
    return await _send_write(request, "PUT", [statement], batch=False)


async def _fetch_json(storage: Upstream, request: web.Request, tail: str,
                      query: str) -> tuple[web.Response | None, Any, Any]:
    """GET from storage; (passthrough response, None, headers) when not a JSON 200."""
    headers = request_headers(request.headers, extra={"X-Request-ID": request[REQUEST_ID]})
    headers.pop("Accept-Encoding", None)
    async with storage.request("GET", tail, raw_query=query, headers=headers,
                               decompress=True) as upstream:
        await hide_failure(upstream, storage.name, request[REQUEST_ID])
        body = await read_capped(upstream, request.app[CONFIG].limits.max_upstream_response)
        out_headers = response_headers(upstream.headers, decoded=True)
        if upstream.status != 200 or upstream.content_type != "application/json":
            return web.Response(status=upstream.status, reason=upstream.reason, body=body,
                                headers=out_headers), None, out_headers
    try:
        return None, jsoncodec.loads(body), out_headers
    except jsoncodec.JSONDecodeError:
        raise UpstreamUnavailable("the storage LRS answered with invalid JSON") from None


def _json_response(data: Any, headers: Any) -> web.Response:
    headers.pop("Content-Type", None)
    return web.Response(body=jsoncodec.dumps(data),
                        headers=headers, content_type="application/json")


def _asks_for_one(request: web.Request) -> bool:
    return "statementId" in request.query or "voidedStatementId" in request.query


async def get_statements(request: web.Request) -> web.StreamResponse:
    """Proxy a statement query; map `more`; for read/mine keep only the caller's."""
    principal: Principal = request[PRINCIPAL]
    mine = statements_read_mode(principal.scopes) == "mine"
    if mine and request.query.get("attachments", "false").lower() == "true":
        raise BadRequest("attachments=true is not available to statements/read/mine callers yet")
    storage = request.app[STORAGE]
    public_url = request.app[CONFIG].server.public_url
    tail, query = xapi_tail(request), raw_query(request)
    passthrough, data, headers = await _fetch_json(storage, request, tail, query)
    if passthrough is not None:
        if mine and passthrough.status == 200:  # not JSON: cannot be filtered, so not shown
            raise UpstreamUnavailable("the storage LRS answered in a form read/mine cannot filter")
        return passthrough
    if not isinstance(data, dict):
        raise UpstreamUnavailable("the storage LRS answered with an unexpected document")
    if "statements" not in data:  # a single statement (statementId / voidedStatementId)
        if mine and not keep_own([data], principal.agent_key):
            raise NotFound("no statement with that id")
        return _json_response(data, headers)
    statements = data.get("statements")
    if not isinstance(statements, list):
        raise UpstreamUnavailable("the storage LRS answered with an unexpected document")
    more = data.get("more") or ""
    if mine:
        statements = keep_own(statements, principal.agent_key)
        if not statements and _asks_for_one(request):
            # Some LRSes (Ralph) answer a statementId query with a StatementResult.
            raise NotFound("no statement with that id")
        pages = 1
        while not statements and more and pages < _MINE_MAX_PAGES:
            next_tail = upstream_tail_of_more(more, storage.base_path)
            if next_tail is None:
                break
            path, _, next_query = next_tail.partition("?")
            passthrough, data, headers = await _fetch_json(storage, request, path, next_query)
            if passthrough is not None or not isinstance(data, dict):
                raise UpstreamUnavailable("the storage LRS failed while paging")
            statements = keep_own(data.get("statements") or [], principal.agent_key)
            more = data.get("more") or ""
            pages += 1
    if more:
        more_tail = upstream_tail_of_more(more, storage.base_path)
        if more_tail is None:
            raise UpstreamUnavailable("the storage LRS gave a `more` link outside its xAPI base")
        more = gateway_more(more_tail, public_url)
    result = dict(data, statements=statements, more=more)
    return _json_response(result, headers)
