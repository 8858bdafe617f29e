"""The storage LRS client: its target, one session, the lean pool; errors translated here."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.errors import (
    BadRequest,
    StorageRefused,
    StorageUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.upstream.h1 import (
    AnswerTimeout,
    ConnectionBroken,
    ConnectTimeout,
    H1Error,
    H1Response,
    TooLarge,
)
from gateway.upstream.target import UpstreamTarget, status_class

__all__ = [
    "CLIENT_ASSERTED_HEADERS",
    "CLIENT_ASSERTED_PREFIXES",
    "HOP_BY_HOP",
    "Occasionally",
    "StorageClient",
    "describe_credential",
    "hide_failed_answer",
    "hide_failure",
    "is_client_asserted",
    "read_capped",
    "refuse_unprocessable",
    "request_headers",
    "response_headers",
]


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """An upstream body the gateway must rewrite, refused (502) past `limit` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise UpstreamUnavailable(f"the storage LRS's answer is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise UpstreamUnavailable(f"the storage LRS's answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never sent upstream: ours to handle (auth), recomputed by aiohttp (length, host), or ours
# to decide (encoding).
_REQUEST_DROP = HOP_BY_HOP | {"host", "authorization", "content-length", "expect", "cookie"}
# Headers an LRS, or a proxy in front of it, may believe about who is calling, from where,
# or which URL and method were really asked for (the gateway checked this path, this method).
# A client sends them to be believed, so none reaches storage: the gateway sends its own
# forwarding headers instead (gateway.http.forwarded_headers). Exact names, then name prefixes.
CLIENT_ASSERTED_HEADERS = frozenset(
    {
        # where the request came from
        "forwarded",
        "forwarded-for",
        "x-forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-proxyuser-ip",
        "x-host",
        "x-http-host-override",
        # who is calling (identity-aware proxies, SSO front ends, Kong, Authelia, oauth2-proxy)
        "x-user",
        "x-user-id",
        "x-user-email",
        "x-user-name",
        "x-username",
        "x-email",
        "x-jwt-assertion",
        "x-id-token",
        "x-access-token",
        "x-arr-clientcert",
        "ssl-client-cert",
        # which URL and method: the gateway authorised this request's own
        "x-original-url",
        "x-rewrite-url",
        "x-override-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
CLIENT_ASSERTED_PREFIXES = (
    "x-forwarded-",  # -for, -host, -proto, -port, -prefix, -user, -email, -client-cert, ...
    "x-original-",  # -host, -forwarded-for, -method (ingress controllers)
    "remote-",
    "x-remote-",  # Remote-User, X-Remote-User, -Group, -Email
    "x-auth-",  # X-Auth-User, X-Auth-Request-User/-Email/-Groups (oauth2-proxy)
    "x-authenticated-",
    "x-consumer-",
    "x-credential-",
    "x-anonymous-",  # Kong
    "x-ssl-",
    "x-client-cert",
    "x-client-verify",
    "x-client-dn",
    "x-amzn-mtls-",  # mTLS
    "x-amzn-oidc-",
    "x-goog-iap-",
    "x-goog-authenticated-",
    "x-ms-client-principal",
)
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "server", "date"}
log = logging.getLogger(__name__)
_LOGGED_BODY = 2000


def is_client_asserted(name: str) -> bool:
    """Whether a header (lowercase name) is one a client must not have believed upstream."""
    return name in CLIENT_ASSERTED_HEADERS or name.startswith(CLIENT_ASSERTED_PREFIXES)


def request_headers(incoming: Mapping[str, str], *, extra: Mapping[str, str]) -> CIMultiDict[str]:
    """Client headers fit to send upstream, plus `extra` (the gateway's own, kept as given).

    Every request to storage is built here: hop-by-hop, credentials and client-asserted
    identity and forwarding headers (`CLIENT_ASSERTED_HEADERS`) never pass.
    """
    connection_tokens = {
        token.strip().lower() for token in incoming.get("Connection", "").split(",") if token
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lowered = name.lower()
        if (
            lowered not in _REQUEST_DROP
            and lowered not in connection_tokens
            and not is_client_asserted(lowered)
        ):
            out.add(name, value)
    out.update(extra)
    return out


def response_headers(upstream: CIMultiDictProxy[str], *, decoded: bool) -> CIMultiDict[str]:
    """The storage LRS's answer headers fit to pass to the client."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lowered = name.lower()
        if lowered in _RESPONSE_DROP or (decoded and lowered == "content-encoding"):
            continue
        out.add(name, value)
    return out


class Occasionally:
    """When to log a repeated event: the first time, then at most once per `every` seconds."""

    def __init__(self, every: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._count = 0
        self._logged_at: float | None = None

    def due(self) -> int | None:
        """Count one occurrence; how many since the last log line if one is due now, else None."""
        self._count += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._every:
            return None
        self._logged_at = now
        count, self._count = self._count, 0
        return count


# What an LRS answers a credential it does not accept (401) or one without the needed
# permission (403). The gateway sends its own credential, so either is the operator's to
# fix, never the client's.
_REFUSED = frozenset({401, 403})


async def hide_failure(
    response: aiohttp.ClientResponse, upstream: StorageClient, request_id: str
) -> None:
    """Keep an upstream failure from the client as the LRS said it: log it, raise ours.

    A 5xx body may hold stack traces and internal host names. A 401/403 to the gateway's
    credential would tell the client, with the LRS's `WWW-Authenticate`, that *its*
    password is wrong: it becomes a 502 (`StorageRefused`). A request deliberately sent
    without the credential (an unauthenticated CORS preflight) keeps the LRS's answer.
    """
    if response.status >= 500:
        _report_failure(
            response.status, await response.content.read(_LOGGED_BODY), upstream, request_id
        )
    sent_credential = "Authorization" in response.request_info.headers
    if response.status in _REFUSED and (sent_credential or upstream.username is None):
        _report_refusal(
            response.status, await response.content.read(_LOGGED_BODY), upstream, request_id
        )


def hide_failed_answer(response: H1Response, upstream: StorageClient, request_id: str) -> None:
    """`hide_failure` for a whole answer of the lean client (always sent with the credential)."""
    if response.status >= 500:
        _report_failure(response.status, response.body[:_LOGGED_BODY], upstream, request_id)
    if response.status in _REFUSED:
        _report_refusal(response.status, response.body[:_LOGGED_BODY], upstream, request_id)


def describe_credential(upstream: StorageClient) -> str:
    """The storage credential as an operator finds it in the config (never the password)."""
    if upstream.username is None:
        return "no credential (storage.basic_username is not set)"
    return f"the credential of storage.basic_username {upstream.username!r}"


def _report_refusal(status: int, body: bytes, upstream: StorageClient, request_id: str) -> None:
    # One line a minute, with how many: an outage is one event, not one line per request.
    count = upstream.refusals.due()
    if count is not None:
        said = upstream.target.redact(body.decode("utf-8", "replace"))
        log.error(
            "the storage LRS refused the gateway's credential: %s answered HTTP %d to "
            "%s (request %s; %d such answer(s) since the last line like this); clients "
            "get 502 until the credential or its permissions in the LRS are fixed: %s",
            upstream.name,
            status,
            describe_credential(upstream),
            request_id,
            count,
            said[:200],
        )
    raise StorageRefused()


def _report_failure(status: int, body: bytes, upstream: StorageClient, request_id: str) -> None:
    said = body.decode("utf-8", "replace")
    log.warning(
        "%s answered HTTP %d (request %s): %s",
        upstream.name,
        status,
        request_id,
        upstream.target.redact(said),
    )
    raise UpstreamFailed(status)


# At most this many of a 422's validation errors are named in the client's 400.
_NAMED_ERRORS = 3


def refuse_unprocessable(status: int, body: bytes) -> None:
    """A storage 422 becomes the gateway's 400, with the LRS's message summarised.

    xAPI has no 422 (Ralph's FastAPI answers it for invalid input): a client of an xAPI
    LRS expects 400 and an error body like the gateway's own.
    """
    if status == 422:
        raise BadRequest("the storage LRS refused the request: " + _summary(body))


def _summary(body: bytes) -> str:
    """FastAPI's `{"detail": [{"loc": [...], "msg": ...}]}` (or a message) in one line."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    said = document.get("detail", document.get("message")) if isinstance(document, dict) else None
    if isinstance(said, str) and said:
        return said[:300]
    if isinstance(said, list):
        named = [
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}"
            for e in said[:_NAMED_ERRORS]
            if isinstance(e, dict)
        ]
        more = f" (and {len(said) - _NAMED_ERRORS} more)" if len(said) > _NAMED_ERRORS else ""
        if named:
            return ("; ".join(named) + more)[:500]
    return "it found the request invalid (HTTP 422)"


class StorageClient:
    """The storage LRS at its target's URL (ending with `/`); answers are the caller's."""

    def __init__(
        self, session: aiohttp.ClientSession, target: UpstreamTarget, *, queue_timeout: float = 5.0
    ) -> None:
        self._session = session
        self.target = target
        self.name = target.name
        self._observe = target.observe
        # A slot per connection: past them, wait a little, then a clean 503.
        self._slots = asyncio.Semaphore(target.max_connections)
        self._queue_timeout = queue_timeout
        self.base = target.url
        self.base_path = self.base.raw_path
        self._auth = dict(target.headers)
        self.username = target.username  # named in logs; the password never is
        self.refusals = Occasionally(60.0)  # when to log storage refusing the credential
        self._timeout = aiohttp.ClientTimeout(
            total=target.total_timeout, sock_connect=target.connect_timeout
        )
        self._total_timeout = target.total_timeout
        # Statement writes take the lean client (bench/: the ClientSession path is the
        # largest cost of a proxied write); everything streamed stays on the session.
        self._lean = target.lean_pool()

    def close(self) -> None:
        """Close the lean client's idle connections (the session is its owner's to close)."""
        self._lean.close()

    async def _slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: no need for a timer
            return
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise StorageUnavailable("the storage LRS is saturated; try again shortly") from None

    async def exchange(
        self,
        method: str,
        raw_tail: str,
        *,
        raw_query: str = "",
        headers: Mapping[str, str],
        body: bytes,
        limit: int,
    ) -> H1Response:
        """Send a buffered request, read the whole answer (at most `limit` bytes).

        For requests that may be sent twice (see gateway.upstream.h1): statement writes.
        Connection errors become 502 and timeouts 504, as for `request`.
        """
        sent = CIMultiDict(headers)
        sent.update(self._auth)
        target = self.base_path + raw_tail + (f"?{raw_query}" if raw_query else "")
        await self._slot()
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self._lean.request(
                method, target, sent, body, limit=limit, within=self._total_timeout
            )
            outcome = status_class(response.status)
            return response
        except (AnswerTimeout, ConnectTimeout):
            outcome = "timeout"
            raise UpstreamTimeout("the storage LRS did not answer in time") from None
        except TooLarge as exc:
            outcome = "2xx"  # it answered; the answer is ours to refuse
            raise UpstreamUnavailable(str(exc)) from None
        except ConnectionBroken:
            raise UpstreamUnavailable("the storage LRS sent a broken answer") from None
        except H1Error as exc:
            raise UpstreamUnavailable(str(exc)) from None
        except ValueError as exc:  # a client's header we cannot send on
            raise BadRequest(str(exc)) from None
        finally:
            self._slots.release()
            if self._observe is not None:
                self._observe(self.name, outcome, time.perf_counter() - started)

    def url(self, raw_tail: str, raw_query: str = "") -> URL:
        """The upstream URL for a path relative to the xAPI base (still encoded)."""
        target = str(self.base) + raw_tail + (f"?{raw_query}" if raw_query else "")
        return URL(target, encoded=True)

    @asynccontextmanager
    async def request(
        self,
        method: str,
        raw_tail: str,
        *,
        raw_query: str = "",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        decompress: bool = False,
        authenticated: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; connection errors become 502 and timeouts 504, in here only.

        `authenticated=False` sends it without the gateway's storage credential: for what a
        client sends without proving who it is (CORS preflights).
        """
        sent = CIMultiDict(headers or {})
        if authenticated:
            sent.update(self._auth)
        else:
            sent.popall("Authorization", None)  # whatever the caller passed: no identity at all
        await self._slot()
        try:
            async with self._exchange(
                method, raw_tail, raw_query, sent, data, decompress
            ) as response:
                yield response
        finally:
            self._slots.release()

    @asynccontextmanager
    async def _exchange(
        self,
        method: str,
        raw_tail: str,
        raw_query: str,
        sent: CIMultiDict[str],
        data: Any,
        decompress: bool,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        started = time.perf_counter()
        answered = False
        try:
            async with self._session.request(
                method,
                self.url(raw_tail, raw_query),
                headers=sent,
                data=data,
                timeout=self._timeout,
                allow_redirects=False,
                auto_decompress=decompress,
            ) as response:
                answered = True
                if self._observe is not None:
                    self._observe(
                        self.name, status_class(response.status), time.perf_counter() - started
                    )
                yield response
        except TimeoutError:
            if not answered and self._observe is not None:
                self._observe(self.name, "timeout", time.perf_counter() - started)
            raise UpstreamTimeout("the storage LRS did not answer in time") from None
        except aiohttp.ClientPayloadError:
            raise UpstreamUnavailable("the storage LRS sent a broken answer") from None
        except aiohttp.ClientError as exc:
            if not answered and self._observe is not None:
                self._observe(self.name, "error", time.perf_counter() - started)
            raise UpstreamUnavailable(
                f"the storage LRS cannot be reached ({type(exc).__name__})"
            ) from None
