"""Two-legged OAuth 1.0a, as xAPI 1.0.x clients sign (xAPI 1.0.3 Communication, section 4).

A client signs every request with its consumer key and secret (a credential of auth type
OAUTH: the Rustici Engine shape); there is no user token. oauthlib builds the signature
base string and compares signatures; this module decides everything around it, in an
order that keeps forgeries cheap:

1. the parameters (`oauth_consumer_key`, `_signature_method`, `_signature`, `_timestamp`,
   `_nonce`, `oauth_version` 1.0 if given) are all there, once;
2. the request is not xAPI 2.0 (2.0 dropped OAuth);
3. the timestamp is within the window of the gateway's clock;
4. the signature verifies (HMAC-SHA1 or HMAC-SHA256; an unknown consumer is checked
   against a dummy secret, so timing does not tell which keys exist);
5. only then the nonce is remembered, in the credential database every process and
   replica shares, for the window: a replay anywhere is refused. An unsigned flood
   writes nothing.

Consumer secrets must be read back to check a signature, so the database holds them
sealed (Fernet) with a key from the configuration (`auth.oauth.encryption_key`), never
in the clear: the database alone does not give them away.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.request import parse_http_list

from cryptography.fernet import Fernet, InvalidToken

from gateway.auth.principal import Principal
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import BadRequest, Unauthorized
from gateway.secret import Secret
from gateway.xapi.scopes import ScopeSet

try:
    from oauthlib.common import Request as OAuthRequest
    from oauthlib.oauth1.rfc5849 import signature, utils
except ImportError:  # the `oauth1` extra is not installed: no OAuth backend
    OAuthRequest = None

__all__ = [
    "SCHEME",
    "Consumer",
    "ConsumerSecrets",
    "NonceBook",
    "OAuthBackend",
    "SignedRequest",
    "oauthlib_missing",
]

SCHEME = "oauth"
_METHODS = ("HMAC-SHA1", "HMAC-SHA256")
_REQUIRED = (
    "oauth_consumer_key",
    "oauth_signature_method",
    "oauth_signature",
    "oauth_timestamp",
    "oauth_nonce",
)
_MAX_NONCE = 128
_DUMMY_SECRET = "an unknown consumer's secret, never anyone's"  # noqa: S105


def oauthlib_missing() -> bool:
    """Whether oauthlib is absent (install `lrs-gateway[oauth1]`)."""
    return OAuthRequest is None


class ConsumerSecrets:
    """Seals consumer secrets for the database and opens them again (Fernet).

    The Fernet key is derived from the configured key, so any long random string will do.
    """

    def __init__(self, key: Secret) -> None:
        digest = hashlib.sha256(b"lrs-gateway oauth consumer secrets\0" + key.reveal().encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(digest.digest()))

    def seal(self, secret: str) -> Secret:
        """The secret as the database keeps it."""
        return Secret(self._fernet.encrypt(secret.encode()).decode())

    def open(self, sealed: Secret) -> Secret | None:
        """The secret again; None when another key sealed it."""
        try:
            return Secret(self._fernet.decrypt(sealed.reveal().encode()).decode())
        except (InvalidToken, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Consumer:
    """An OAuth consumer as requests are checked against it."""

    key: str
    secret: Secret
    agent: dict[str, Any]
    scopes: ScopeSet
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a signature covers: the method, the URI the client addressed, the form body."""

    method: str
    uri: str
    authorization: str
    form_body: str | None = None  # an application/x-www-form-urlencoded body's text
    xapi_version: str | None = None


class NonceBook(Protocol):
    """Where nonces are remembered (the credential database)."""

    async def remember_nonce(self, key: str, expires_at: float) -> bool:
        """Remember `key` until `expires_at`; False when it is remembered already."""
        ...


class OAuthBackend:
    """Checks OAuth 1.0a signed requests against the consumers the database holds."""

    def __init__(
        self,
        consumers: Callable[[str], Consumer | None],
        nonces: NonceBook,
        *,
        window: float = 300.0,
        clock: Clock = SYSTEM_CLOCK,
        refresh_on_miss: Callable[[], Awaitable[bool]] | None = None,
        on_used: Callable[[str], None] | None = None,
    ) -> None:
        self._consumers = consumers
        self._on_used = on_used  # when a consumer was last used (written back coarsely)
        self._nonces = nonces
        self._window = window
        self._clock = clock
        self._refresh_on_miss = refresh_on_miss

    @property
    def challenge(self) -> str:
        """The WWW-Authenticate value for OAuth."""
        return 'OAuth realm="xAPI"'

    async def authenticate(self, signed: SignedRequest) -> Principal:
        """The consumer's Principal, or Unauthorized (BadRequest for a malformed header)."""
        params = _parameters(signed.authorization)
        if signed.xapi_version is not None and signed.xapi_version.startswith("2."):
            raise Unauthorized(
                "xAPI 2.0 dropped OAuth 1.0a: sign in with Basic or a bearer token, or send "
                "X-Experience-API-Version 1.0.3"
            )
        if params.get("oauth_version", "1.0") != "1.0":
            raise Unauthorized("oauth_version must be 1.0")
        if params["oauth_signature_method"] not in _METHODS:
            raise Unauthorized(
                f"oauth_signature_method: {params['oauth_signature_method'][:20]!r} is not "
                f"accepted ({', '.join(_METHODS)})"
            )
        if params.get("oauth_token"):
            raise Unauthorized("three-legged OAuth (oauth_token) is not supported: sign two-legged")
        nonce = params["oauth_nonce"]
        if not nonce or len(nonce) > _MAX_NONCE:
            raise Unauthorized(f"oauth_nonce must be 1 to {_MAX_NONCE} characters")
        try:
            stamp = int(params["oauth_timestamp"])
        except ValueError:
            raise Unauthorized("oauth_timestamp must be whole seconds") from None
        if abs(self._clock.now() - stamp) > self._window:
            raise Unauthorized(
                f"oauth_timestamp is more than {self._window:g} s from the gateway's clock"
            )
        key = params["oauth_consumer_key"]
        consumer = self._consumers(key)
        if consumer is None and self._refresh_on_miss is not None and await self._refresh_on_miss():
            consumer = self._consumers(key)  # made by another process a moment ago
        secret = _DUMMY_SECRET if consumer is None else consumer.secret.reveal()
        if not _verifies(signed, params, secret) or consumer is None:
            raise Unauthorized("the OAuth signature does not verify for this consumer")
        # A nonce is one use per consumer and timestamp (RFC 5849 3.3), remembered as long
        # as that timestamp passes the window check (a future one, for longer than now's).
        # Hashed: a fixed length, and no character a database would refuse.
        used = hashlib.sha256(f"{key}\0{stamp}\0{nonce}".encode()).hexdigest()
        if not await self._nonces.remember_nonce(used, stamp + self._window + 1):
            raise Unauthorized("this oauth_nonce was used already: a replayed request")
        if self._on_used is not None:
            self._on_used(consumer.key)
        return Principal(consumer.key, consumer.agent, consumer.scopes, SCHEME, consumer.tenant)


def _parameters(authorization: str) -> dict[str, str]:
    """The `oauth_*` parameters of an `OAuth ...` Authorization header, each once."""
    params: dict[str, str] = {}
    for item in parse_http_list(authorization.partition(" ")[2]):
        name, equals, quoted = item.strip().partition("=")
        if not equals or len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
            raise Unauthorized("the OAuth Authorization header cannot be parsed")
        if name in params:
            raise Unauthorized(f"{name[:40]} is given twice")
        if name.startswith("oauth_"):
            params[name] = utils.unescape(quoted[1:-1])
    missing = [name for name in _REQUIRED if not params.get(name)]
    if missing:
        raise Unauthorized(f"the OAuth header lacks {', '.join(missing)}")
    return params


def _verifies(signed: SignedRequest, params: Mapping[str, str], secret: str) -> bool:
    """Whether the request's signature is the one `secret` makes (RFC 5849 3.4)."""
    headers = {"Authorization": signed.authorization}
    if signed.form_body is not None:  # a form body's parameters are signed too (3.4.1.3.1)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        request = OAuthRequest(signed.uri, signed.method, signed.form_body, headers)
        request.params = signature.collect_parameters(
            uri_query=request.uri_query,
            body=request.decoded_body if signed.form_body is not None else None,
            headers=request.headers,
        )
        request.signature = params["oauth_signature"]
        if params["oauth_signature_method"] == "HMAC-SHA1":
            return bool(signature.verify_hmac_sha1(request, secret, None))
        return bool(signature.verify_hmac_sha256(request, secret, None))
    except (ValueError, TypeError, KeyError):
        raise BadRequest("the OAuth-signed request cannot be read") from None
