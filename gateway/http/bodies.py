"""Request bodies read with a size limit, before anything is buffered past it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import PayloadTooLarge
from gateway.http.keys import ALTERNATE_BODY

__all__ = ["LimitedStream", "check_declared_length", "read_limited", "read_stream"]


def check_declared_length(request: web.Request, limit: int) -> None:
    """413 at once when Content-Length already says the body is too large."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it passes `limit`."""
    if ALTERNATE_BODY in request:
        return request[ALTERNATE_BODY]
    check_declared_length(request, limit)
    if request.content_length is not None:  # within the limit: one read, no chunk list
        return await request.read()
    return await read_stream(request, limit)


async def read_stream(request: web.Request, limit: int) -> bytes:
    """The body from the stream itself (leaves the request clonable), 413 past `limit`."""
    check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class LimitedStream:
    """The body as chunks for an upstream request, cut off once it passes `limit`.

    The HTTP client wraps whatever a body iterator raises in its own connection error, so
    `exceeded` tells the caller afterwards that the cut-off, not the upstream, failed.
    """

    def __init__(self, request: web.Request, limit: int) -> None:
        self._request = request
        self._limit = limit
        self.exceeded = False

    def error(self) -> PayloadTooLarge:
        """The error to answer with when `exceeded`."""
        return PayloadTooLarge(f"the request body is larger than {self._limit} bytes")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if ALTERNATE_BODY in self._request:
            yield self._request[ALTERNATE_BODY]
            return
        size = 0
        async for chunk in self._request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._limit:
                self.exceeded = True
                raise self.error()
            yield chunk
