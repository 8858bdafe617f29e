"""The backend Protocol, and the one place that asks each enabled backend in turn."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Protocol

from gateway.auth.oauth1 import SCHEME as OAUTH_SCHEME
from gateway.auth.oauth1 import OAuthBackend, SignedRequest
from gateway.auth.principal import Principal
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import Unauthorized
from gateway.ttlcache import TtlCache

__all__ = ["AuthBackend", "Authenticator", "decode_basic"]


class AuthBackend(Protocol):
    """One authentication scheme.

    `authenticate` has three outcomes: None (not my scheme), a Principal, or Unauthorized
    raised (my scheme, bad credentials).
    """

    @property
    def challenge(self) -> str:
        """The WWW-Authenticate value this backend asks for."""
        ...

    async def authenticate(self, scheme: str, credentials: str) -> Principal | None:
        """Check `credentials` given with `scheme` (already lower-cased)."""
        ...


def decode_basic(credentials: str) -> tuple[str, str]:
    """Decode `user:password` from a Basic credential, or raise Unauthorized."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unauthorized("the Basic credentials are not valid base64 of user:password") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username or "\0" in username:
        raise Unauthorized("the Basic credentials are not in the form user:password")
    return username, password


class Authenticator:
    """Asks the enabled backends in order; a 401 names every enabled scheme."""

    def __init__(
        self,
        backends: Sequence[AuthBackend],
        *,
        bearer_cache_size: int = 10_000,
        bearer_cache_ttl: float = 300.0,
        clock: Clock = SYSTEM_CLOCK,
        oauth: OAuthBackend | None = None,
    ) -> None:
        self._backends = tuple(backends)
        self._oauth = oauth
        self._clock = clock
        self.challenges = tuple(backend.challenge for backend in self._backends) + (
            () if oauth is None else (oauth.challenge,)
        )
        # A verified bearer token is good until its exp: verifying a JWT on every request
        # was a third of a request's cost (bench/). Keyed on a digest, bounded, and never
        # longer than `bearer_cache_ttl`.
        self._bearer: TtlCache[bytes, Principal] = TtlCache(bearer_cache_size, clock=clock)
        self._bearer_ttl = bearer_cache_ttl

    @property
    def takes_oauth(self) -> bool:
        """Whether OAuth 1.0a signatures are checked (the oauth backend is on)."""
        return self._oauth is not None

    async def authenticate(
        self, authorization: str | None, signed: SignedRequest | None = None
    ) -> Principal:
        """Return the caller's Principal or raise Unauthorized.

        When two backends take the same scheme (Basic from the file, then the callback), a
        failure of the first lets the next one try; the last failure is the answer. An
        OAuth signature covers the whole request: `signed` says what was signed.
        """
        if not authorization:
            raise Unauthorized("authentication is required")
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == OAUTH_SCHEME and self._oauth is not None:
            if signed is None:
                raise Unauthorized("OAuth signatures are checked on xAPI requests only")
            return await self._oauth.authenticate(signed)
        digest = b""
        if scheme == "bearer":
            digest = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
            found, cached = self._bearer.get(digest)
            if found and cached is not None:
                return cached
        failure: Unauthorized | None = None
        for backend in self._backends:
            try:
                principal = await backend.authenticate(scheme, credentials.strip())
            except Unauthorized as exc:
                failure = exc
                continue
            if principal is not None:
                if digest and principal.expires_at is not None:
                    ttl = min(principal.expires_at - self._clock.now(), self._bearer_ttl)
                    self._bearer.put(digest, principal, ttl)
                return principal
        raise failure or Unauthorized("no enabled authentication scheme accepts these credentials")

    def forget_tokens(self) -> None:
        """Verify every bearer token again on its next use (e.g. its user may be gone)."""
        self._bearer.clear()

    def readiness_problems(self) -> list[str]:
        """What keeps a backend from working yet (e.g. OIDC discovery pending)."""
        problems = (getattr(backend, "readiness_problem", None) for backend in self._backends)
        return [problem for problem in problems if problem]
