"""xAPI 1.0.x alternate request syntax: `POST ?method=X` with a form carrying the request.

The form's header fields (Authorization included) and `content` become an ordinary
request, which goes through authentication and everything else like any other; the
storage LRS sees only that ordinary request.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from gateway.bodies import read_stream
from gateway.errors import BadRequest
from gateway.keys import ALTERNATE_BODY, CONFIG
from gateway.routes import XAPI_PREFIX
from gateway.xapiversion import VERSION_HEADER

__all__ = ["alternate_syntax_middleware"]

_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "HEAD"})
_HEADER_FIELDS = {name.lower(): name for name in (
    "Authorization", VERSION_HEADER, "Content-Type", "Content-Length", "If-Match",
    "If-None-Match")}


@web.middleware
async def alternate_syntax_middleware(request: web.Request,
                                      handler: Handler) -> web.StreamResponse:
    """Turn an alternate-syntax request into the ordinary one it stands for."""
    if request.method != "POST" or "method" not in request.query or not request.path.startswith(
            XAPI_PREFIX):
        return await handler(request)
    method = request.query["method"].upper()
    if method not in _METHODS:
        raise BadRequest(f"method={request.query['method'][:20]!r} is not an HTTP method")
    if set(request.query) != {"method"}:
        raise BadRequest("with ?method= every other parameter goes in the form body")
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("the alternate request syntax needs an "
                         "application/x-www-form-urlencoded body")
    # Read from the stream: aiohttp refuses to clone a request once read() was used.
    raw = await read_stream(request, request.app[CONFIG].server.max_body_size)
    try:
        fields = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the form body is not UTF-8") from None
    headers: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in request.headers.items()
        if k.lower() not in ("content-type", "content-length"))
    query: list[tuple[str, str]] = []
    content = b""
    for name, value in fields:
        header = _HEADER_FIELDS.get(name.lower())
        if header is not None:
            headers[header] = value
        elif name == "content":
            content = value.encode("utf-8")
        else:
            query.append((name, value))
    if headers.get(VERSION_HEADER, "").startswith("2."):
        raise BadRequest("xAPI 2.0 has no alternate request syntax")
    headers["Content-Length"] = str(len(content))
    path = request.rel_url.path + (f"?{urlencode(query)}" if query else "")
    ordinary = request.clone(method=method, rel_url=path, headers=headers)
    ordinary[ALTERNATE_BODY] = content
    return await handler(ordinary)
