"""/xAPI/statements: writes get ids and authority; reads get `more` mapped and read/mine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from gateway import jsoncodec
from gateway.auth.principal import Principal
from gateway.errors import BadRequest, NotFound, UpstreamUnavailable
from gateway.http.bodies import read_limited
from gateway.http.forwarded_headers import forwarded_headers
from gateway.http.handlers import passthrough
from gateway.http.keys import CONFIG, METRICS, PRINCIPAL, REQUEST_ID, VERSIONS
from gateway.http.route_info import raw_query, xapi_tail
from gateway.http.tenancy import forwarder_for, storage_for, tenant_label
from gateway.upstream.storage import (
    StorageClient,
    hide_failed_answer,
    hide_failure,
    read_capped,
    refuse_unprocessable,
    request_headers,
    response_headers,
)
from gateway.xapi.attachments import (
    AttachmentBody,
    canonical_body,
    pack_parts,
    parts_for,
    read_attachment_body,
)
from gateway.xapi.multipart import Multipart, boundary_of, parse_answer
from gateway.xapi.paths import check_origin_form
from gateway.xapi.results import gateway_more, keep_own, upstream_tail_of_more
from gateway.xapi.scopes import statements_read_mode
from gateway.xapi.statements import encode_statement, parse_json_body, prepare_post, prepare_put
from gateway.xapi.versions import VERSION_HEADER

__all__ = ["get_statements", "post_statements", "put_statements", "statements"]

# A read/mine caller whose statements are rare would otherwise page through empty pages;
# fetch a few upstream pages per answer, then hand back a `more` that continues.
_MINE_MAX_PAGES = 10


async def statements(request: web.Request) -> web.StreamResponse:
    """/xAPI/statements, by method."""
    check_origin_form(request.raw_path)
    method = request.method
    if method in ("GET", "HEAD"):
        return await get_statements(request)
    if method == "POST":
        return await post_statements(request)
    if method == "PUT":
        return await put_statements(request)
    if method == "OPTIONS":  # a CORS preflight: the LRS's to answer
        return await passthrough.proxy(request)
    raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD", "POST", "PUT"])


async def _read_write_body(request: web.Request) -> tuple[Any, AttachmentBody | None]:
    """The statements of a write, JSON or multipart/mixed with attachments."""
    content_type = request.content_type
    if content_type not in ("application/json", "multipart/mixed"):
        raise BadRequest(
            f"statements are sent as application/json (or multipart/mixed with "
            f"attachments), not {content_type[:60]}"
        )
    body = await read_limited(request, request.app[CONFIG].server.max_body_size)
    if content_type == "application/json":
        return parse_json_body(body), None
    attached = read_attachment_body(body, request.headers["Content-Type"])
    return attached.statements, attached


async def _send_write(
    request: web.Request,
    method: str,
    statements: list[Any],
    batch: bool,
    attached: AttachmentBody | None,
) -> web.Response:
    """Send to storage; with forwarding on, record the statements ahead and settle them after.

    Each statement is encoded once: storage and every forwarding target get the same bytes,
    attachment parts included.
    """
    parts = [encode_statement(statement) for statement in statements]
    encoded = b"[" + b",".join(parts) + b"]" if batch else parts[0]
    if attached is None:
        payload, content_type = encoded, "application/json"
        packed: list[bytes | None] = [None] * len(statements)
    else:
        wanted = parts_for(statements, attached.by_hash)
        packed = [pack_parts(found) for found in wanted]
        # What storage gets is built here from what was checked, never the client's body.
        payload, content_type = canonical_body(encoded, wanted)
    forwarder = forwarder_for(request)
    version = request.app[VERSIONS].answer_for(request.headers.get(VERSION_HEADER))
    seqs = (
        await forwarder.record_pending(
            [(s["id"], b, p) for s, b, p in zip(statements, parts, packed, strict=True)], version
        )
        if forwarder is not None
        else []
    )
    headers = request_headers(
        request.headers,
        extra={
            **forwarded_headers(request),
            "X-Request-ID": request[REQUEST_ID],
            "Content-Type": content_type,
        },
    )
    # The body is ours, re-encoded from what aiohttp already decoded: never compressed.
    headers.popall("Content-Encoding", None)
    # If storage's answer is lost (timeout, crash), the pending record stays and the
    # resolver asks storage about each statement later.
    storage = storage_for(request)
    try:
        upstream = await storage.exchange(
            method,
            xapi_tail(request),
            raw_query=raw_query(request),
            headers=headers,
            body=payload,
            limit=request.app[CONFIG].limits.max_upstream_response,
        )
        hide_failed_answer(upstream, storage, request[REQUEST_ID])
        accepted = 200 <= upstream.status < 300
        if accepted:
            request.app[METRICS].accepted(tenant_label(request[PRINCIPAL].tenant), len(statements))
        if forwarder is not None:
            await (
                forwarder.accepted(seqs, statements, version)
                if accepted
                else forwarder.refused(seqs)
            )
    finally:
        if forwarder is not None:
            forwarder.settled(seqs)
    refuse_unprocessable(upstream.status, upstream.body)
    return web.Response(
        status=upstream.status,
        reason=upstream.reason,
        body=upstream.body,
        headers=response_headers(upstream.headers, decoded=False),
    )


def _write_rules(request: web.Request, attached: AttachmentBody | None) -> dict[str, Any]:
    """How statements are checked and completed for this request (prepare_* keywords)."""
    xapi = request.app[CONFIG].xapi
    verbatim = (
        {sha2: part.body for sha2, part in attached.by_hash.items()}
        if attached is not None and xapi.signed_statements == "verbatim"
        else None
    )
    return {
        "verbatim": verbatim,
        "version": request.app[VERSIONS].answer_for(request.headers.get(VERSION_HEADER)),
        "strict": xapi.validation == "strict",
    }


async def post_statements(request: web.Request) -> web.Response:
    """Store one statement or a batch, each with an id and the caller as authority."""
    data, attached = await _read_write_body(request)
    data, _ = prepare_post(
        data,
        request[PRINCIPAL].agent,
        request.app[CONFIG].limits.max_batch_statements,
        **_write_rules(request, attached),
    )
    batch = isinstance(data, list)
    statements = data if batch else [data]
    _check_restriction(request[PRINCIPAL], statements)
    return await _send_write(request, "POST", statements, batch, attached)


async def put_statements(request: web.Request) -> web.Response:
    """Store one statement under the `statementId` the client chose."""
    data, attached = await _read_write_body(request)
    statement = prepare_put(
        data,
        request.query.get("statementId"),
        request[PRINCIPAL].agent,
        **_write_rules(request, attached),
    )
    _check_restriction(request[PRINCIPAL], [statement])
    return await _send_write(request, "PUT", [statement], False, attached)


def _check_restriction(principal: Principal, statements: list[Any]) -> None:
    """A launch token writes only inside its restriction (403 otherwise)."""
    if principal.restriction is not None:
        principal.restriction.check_write(statements)


@dataclass
class _Page:
    """One storage answer to a statement query: a JSON document, perhaps inside multipart."""

    data: Any
    headers: Any
    multipart: Multipart | None = None

    def response(self, data: Any, filtered: bool) -> web.Response:
        """Our answer: `data` as JSON, or as the multipart it came in.

        When statements were filtered out, so are the attachment parts only they used.
        """
        try:
            encoded = jsoncodec.dumps(data)
        except jsoncodec.JSONEncodeError:
            raise UpstreamUnavailable(
                "the storage LRS answered with a statement nested too deeply to pass on"
            ) from None
        if self.multipart is None:
            self.headers.pop("Content-Type", None)
            return web.Response(body=encoded, headers=self.headers, content_type="application/json")
        parts = self.multipart.parts
        if filtered:
            kept = data.get("statements", [data]) if isinstance(data, dict) else []
            wanted = {
                a.get("sha2", "").lower()
                for s in kept
                if isinstance(s, dict)
                for a in s.get("attachments", [])
                if isinstance(a, dict)
            }
            parts = [parts[0]] + [
                p for p in parts[1:] if (p.header("X-Experience-API-Hash") or "").lower() in wanted
            ]
        self.multipart.parts = [parts[0].with_body(encoded), *parts[1:]]
        self.multipart.paddings = self.multipart.paddings[: len(self.multipart.parts)]
        return web.Response(body=self.multipart.serialize(), headers=self.headers)


async def _fetch(
    storage: StorageClient, request: web.Request, tail: str, query: str
) -> tuple[web.Response | None, _Page | None]:
    """GET from storage: (its answer to pass on as is, None) unless it is a 200 we read."""
    headers = request_headers(
        request.headers, extra={**forwarded_headers(request), "X-Request-ID": request[REQUEST_ID]}
    )
    headers.pop("Accept-Encoding", None)
    async with storage.request(
        "GET", tail, raw_query=query, headers=headers, decompress=True
    ) as upstream:
        await hide_failure(upstream, storage, request[REQUEST_ID])
        body = await read_capped(upstream, request.app[CONFIG].limits.max_upstream_response)
        out_headers = response_headers(upstream.headers, decoded=True)
        content_type = upstream.content_type
        raw_type = upstream.headers.get("Content-Type", "")
        refuse_unprocessable(upstream.status, body)
        if upstream.status != 200 or content_type not in ("application/json", "multipart/mixed"):
            return web.Response(
                status=upstream.status, reason=upstream.reason, body=body, headers=out_headers
            ), None
    try:
        if content_type == "application/json":
            return None, _Page(jsoncodec.loads(body), out_headers)
        multipart = parse_answer(body, boundary_of(raw_type))
        return None, _Page(jsoncodec.loads(multipart.parts[0].body), out_headers, multipart)
    except (jsoncodec.JSONDecodeError, BadRequest):
        raise UpstreamUnavailable("the storage LRS answered with an unreadable document") from None


def _asked_id(request: web.Request) -> str | None:
    """The id of a statementId/voidedStatementId query (None for other queries)."""
    return request.query.get("statementId", request.query.get("voidedStatementId"))


def _the_statement(data: dict[str, Any], wanted: str) -> tuple[Any, bool]:
    """(the statement asked for by id or None, whether it was unwrapped from a list).

    xAPI answers such a query with the Statement itself; some LRSes (Ralph) answer with a
    StatementResult, whose list holds it or is empty.
    """
    if "statements" not in data:
        return data, False
    listed = data["statements"]
    if not isinstance(listed, list):
        raise UpstreamUnavailable("the storage LRS answered with an unexpected document")
    wanted = wanted.lower()
    found = [s for s in listed if isinstance(s, dict) and str(s.get("id", "")).lower() == wanted]
    return (found[0] if found else None), True


def _keeper(principal: Principal) -> Callable[[list[Any]], list[Any]] | None:
    """What a page of statements is narrowed to for this caller; None: nothing to narrow."""
    mine = statements_read_mode(principal.scopes) == "mine"
    restriction = principal.restriction
    if not mine and restriction is None:
        return None

    def keep(statements: list[Any]) -> list[Any]:
        kept = keep_own(statements, principal.agent_key) if mine else statements
        return [s for s in kept if restriction.allows(s)] if restriction is not None else kept

    return keep


def _query_for(request: web.Request, principal: Principal, tail: str) -> str:
    """The query storage is asked: a restricted token's filters added (fewer empty pages)."""
    query = raw_query(request)
    if principal.restriction is None or tail.rstrip("/") != "statements":
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(principal.restriction.statement_query(pairs))


async def get_statements(request: web.Request) -> web.StreamResponse:
    """Proxy a statement query; map `more`; for read/mine and restricted tokens narrow it."""
    principal: Principal = request[PRINCIPAL]
    keep = _keeper(principal)
    mine = keep is not None
    storage = storage_for(request)
    public_url = request.app[CONFIG].server.public_url
    tail = xapi_tail(request)
    passthrough, page = await _fetch(storage, request, tail, _query_for(request, principal, tail))
    if page is None:
        assert passthrough is not None
        return passthrough
    data = page.data
    if not isinstance(data, dict):
        raise UpstreamUnavailable("the storage LRS answered with an unexpected document")
    asked = _asked_id(request)
    if asked is not None:
        found, unwrapped = _the_statement(data, asked)
        if found is None or (keep is not None and not keep([found])):
            raise NotFound("no statement with that id")
        return page.response(found, mine or unwrapped)
    if "statements" not in data:  # a single statement nobody asked for by id: as it came
        if keep is not None and not keep([data]):
            raise NotFound("no statement with that id")
        return page.response(data, False)
    statements = data.get("statements")
    if not isinstance(statements, list):
        raise UpstreamUnavailable("the storage LRS answered with an unexpected document")
    more = data.get("more") or ""
    if keep is not None:
        statements = keep(statements)
        pages = 1
        while not statements and more and pages < _MINE_MAX_PAGES:
            next_tail = upstream_tail_of_more(more, storage.base_path)
            if next_tail is None:
                break
            path, _, next_query = next_tail.partition("?")
            _, next_page = await _fetch(storage, request, path, next_query)
            if next_page is None or not isinstance(next_page.data, dict):
                raise UpstreamUnavailable("the storage LRS failed while paging")
            page, data = next_page, next_page.data
            statements = keep(data.get("statements") or [])
            more = data.get("more") or ""
            pages += 1
    if more:
        more_tail = upstream_tail_of_more(more, storage.base_path)
        if more_tail is None:
            raise UpstreamUnavailable("the storage LRS gave a `more` link outside its xAPI base")
        more = gateway_more(more_tail, public_url)
    result = dict(data, statements=statements, more=more)
    return page.response(result, mine)
