"""xAPI 1.0.x alternate request syntax: `POST ?method=X` with a form carrying the request.

The form's header fields (Authorization included) and `content` become an ordinary
request, which goes through authentication and everything else like any other; the
storage LRS sees only that ordinary request.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from gateway.errors import BadRequest
from gateway.http.bodies import read_stream
from gateway.http.keys import ALTERNATE_BODY, CONFIG
from gateway.http.route_info import XAPI_PREFIX
from gateway.xapi.paths import check_origin_form
from gateway.xapi.versions import VERSION_HEADER

__all__ = ["alternate_syntax_middleware"]

_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "HEAD"})
_HEADER_FIELDS = {
    name.lower(): name
    for name in (
        "Authorization",
        VERSION_HEADER,
        "Content-Type",
        "Content-Length",
        "If-Match",
        "If-None-Match",
    )
}
# A control character (CR, LF, NUL, ...) in a header value would split or end the header
# line in the request to storage: refused here, once for every route.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Comm 1.3: `content` without a form Content-Type is JSON.
_DEFAULT_CONTENT_TYPE = "application/json"
# A form holds a few headers, the query parameters and `content`: far fewer fields than
# this. The cap is checked before anything is split, so a form of a million fields costs
# nothing (it runs before authentication: the credential is in the form).
_MAX_FIELDS = 64
# Encoded "?", "#" or "/" in the path would become real ones in the ordinary request.
_ENCODED_DELIMITER = re.compile(r"%(?:3f|23|2f)", re.IGNORECASE)


@web.middleware
async def alternate_syntax_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn an alternate-syntax request into the ordinary one it stands for."""
    if (
        request.method != "POST"
        or "method" not in request.query
        or not request.path.startswith(XAPI_PREFIX)
    ):
        return await handler(request)
    check_origin_form(request.raw_path)  # the clone below would forward the parsed path
    raw_path = request.raw_path.partition("?")[0]
    if _ENCODED_DELIMITER.search(raw_path):
        raise BadRequest("the request path is not allowed")
    method = request.query["method"].upper()
    if method not in _METHODS:
        raise BadRequest(f"method={request.query['method'][:20]!r} is not an HTTP method")
    if set(request.query) != {"method"}:
        raise BadRequest("with ?method= every other parameter goes in the form body")
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest(
            "the alternate request syntax needs an application/x-www-form-urlencoded body"
        )
    # Read from the stream: aiohttp refuses to clone a request once read() was used.
    raw = await read_stream(request, request.app[CONFIG].server.max_body_size)
    try:
        fields = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=_MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise BadRequest("the form body is not UTF-8") from None
    except ValueError:
        raise BadRequest(f"the form has more than {_MAX_FIELDS} fields") from None
    headers: CIMultiDict[str] = CIMultiDict(
        (k, v)
        for k, v in request.headers.items()
        if k.lower() not in ("content-type", "content-length")
    )
    query: list[tuple[str, str]] = []
    content: bytes | None = None
    for name, value in fields:
        header = _HEADER_FIELDS.get(name.lower())
        if header is not None:
            headers[header] = _header_value(header, value)
        elif name == "content":
            content = value.encode("utf-8")
        else:
            query.append((name, value))
    if content is not None and "Content-Type" not in headers:
        headers["Content-Type"] = _DEFAULT_CONTENT_TYPE
    content = content or b""
    if headers.get(VERSION_HEADER, "").startswith("2."):
        raise BadRequest("xAPI 2.0 has no alternate request syntax")
    headers["Content-Length"] = str(len(content))
    path = raw_path + (f"?{urlencode(query)}" if query else "")
    ordinary = request.clone(method=method, rel_url=path, headers=headers)
    ordinary[ALTERNATE_BODY] = content
    return await handler(ordinary)


def _header_value(name: str, value: str) -> str:
    """A form field's value as a header value, or 400 if it holds a control character."""
    if _CONTROL.search(value):
        raise BadRequest(
            f"the form field {name} holds a control character (CR, LF, ...), "
            "which no header value may"
        )
    return value
