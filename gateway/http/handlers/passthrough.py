"""Stream a request to the storage LRS and its answer back, rewriting nothing."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from gateway.errors import UpstreamError
from gateway.http.bodies import LimitedStream, check_declared_length
from gateway.http.forwarded_headers import forwarded_headers
from gateway.http.keys import CONFIG, PRINCIPAL, REQUEST_ID
from gateway.http.route_info import raw_query, xapi_tail
from gateway.http.tenancy import storage_for
from gateway.upstream.storage import (
    hide_failure,
    read_capped,
    refuse_unprocessable,
    request_headers,
    response_headers,
)
from gateway.xapi.paths import check_not_a_resource, check_origin_form, check_relative_path

__all__ = ["proxy"]

# Answers up to this size are read whole and sent in one write: cheaper than streaming.
_BUFFER_LIMIT = 256 * 1024
_CHUNK = 64 * 1024
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


async def proxy(request: web.Request) -> web.StreamResponse:
    """Documents, activities, agents and any other /xAPI/ path: both bodies streamed."""
    check_origin_form(request.raw_path)
    tail = check_relative_path(xapi_tail(request))
    if request.match_info.route.name == "xapi.other":
        check_not_a_resource(tail)
    limit = request.app[CONFIG].server.max_body_size
    check_declared_length(request, limit)
    has_body = request.method not in _BODYLESS or request.body_exists
    body = LimitedStream(request, limit) if has_body else None
    headers = request_headers(
        request.headers, extra={**forwarded_headers(request), "X-Request-ID": request[REQUEST_ID]}
    )
    if has_body and _decoded_by_server(request):
        # aiohttp hands us the decoded body: pass that on (chunked), without the encoding
        # or the encoded length.
        headers.popall("Content-Encoding", None)
    elif has_body and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    try:
        return await _exchange(request, tail, headers, body)
    except UpstreamError:
        if body is not None and body.exceeded:
            raise body.error() from None
        raise


async def _exchange(
    request: web.Request, tail: str, headers: CIMultiDict[str], body: LimitedStream | None
) -> web.StreamResponse:
    response = await _send(request, request.method, tail, headers, body)
    if response is None:  # storage has no HEAD here: answer it from a GET (Comm 1.1)
        response = await _send(request, "GET", tail, headers, body)
        assert response is not None  # only a HEAD can be answered None
    return response


async def _send(
    request: web.Request,
    method: str,
    tail: str,
    headers: CIMultiDict[str],
    body: LimitedStream | None,
) -> web.StreamResponse | None:
    """Storage's answer to `method`, or None for a 405 to a HEAD."""
    storage = storage_for(request)
    data = body.__aiter__() if body is not None else None
    head = request.method == "HEAD"
    # What no caller proved itself for (an OPTIONS: a CORS preflight, let through without
    # auth) must not go with the gateway's identity either.
    async with storage.request(
        method,
        tail,
        raw_query=raw_query(request),
        headers=headers,
        data=data,
        authenticated=PRINCIPAL in request,
    ) as upstream:
        await hide_failure(upstream, storage, request[REQUEST_ID])
        if upstream.status == 405 and method == "HEAD":
            return None
        if upstream.status == 422:
            refuse_unprocessable(422, await read_capped(upstream, _BUFFER_LIMIT))
        out_headers = response_headers(upstream.headers, decoded=False)
        length = upstream.content_length
        if head:
            # GET's headers without its body; web.Response keeps a Content-Length it is
            # given for a HEAD (the property itself cannot be set on it).
            if length is not None:
                out_headers["Content-Length"] = str(length)
            return web.Response(status=upstream.status, reason=upstream.reason, headers=out_headers)
        if length is not None and length <= _BUFFER_LIMIT:
            return web.Response(
                status=upstream.status,
                reason=upstream.reason,
                body=await upstream.read(),
                headers=out_headers,
            )
        streamed = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=out_headers
        )
        if length is not None:
            streamed.content_length = length
        await streamed.prepare(request)
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            await streamed.write(chunk)
        await streamed.write_eof()
        return streamed


# The request body encodings aiohttp's server decodes before the handler reads the body.
_SERVER_DECODED = frozenset({"gzip", "deflate", "br", "zstd"})


def _decoded_by_server(request: web.Request) -> bool:
    encoding = request.headers.get("Content-Encoding", "")
    return encoding.isascii() and encoding.strip().lower() in _SERVER_DECODED
