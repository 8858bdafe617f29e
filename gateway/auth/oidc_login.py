"""People signing in to the web admin: OpenID Connect Authorization Code with PKCE.

A public client (no secret): the browser goes to the provider with a fresh `state`,
`nonce` and S256 code challenge, comes back with a code, and the gateway exchanges the
code (with the verifier) for an ID token and an access token. The ID token is checked
like any signed token of the issuer (key, `iss`, `aud` = the client, times) plus the
`nonce`; whether the person is an admin is decided by the access token's scopes (checked
exactly as a bearer token is) or by a configured ID token claim.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt

from gateway.auth.jwks import ProviderKeys
from gateway.auth.oidc import OidcBackend
from gateway.config.settings import OidcConfig
from gateway.errors import AuthUnavailable, Unauthorized

__all__ = ["AuthorizationCodeLogin", "PendingLogin", "SignedIn"]


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """What the callback must see again: kept in the browser, encrypted, between the legs."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str

    @classmethod
    def new(cls, redirect_uri: str) -> PendingLogin:
        """Fresh random values (RFC 7636: a 43+ character verifier)."""
        return cls(
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
            redirect_uri,
        )

    @property
    def challenge(self) -> str:
        """The S256 code challenge of the verifier."""
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def state_matches(self, given: str | None) -> bool:
        """Whether the callback's `state` is this login's (constant time)."""
        return given is not None and hmac.compare_digest(given, self.state)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """Who came back from the provider, and whether they may administer."""

    issuer: str
    subject: str
    admin: bool
    display_name: str
    tenant: str | None = None  # the tenant claim (`auth.oidc.tenant_claim`): a tenant's admin

    @property
    def id(self) -> str:
        """The same id a bearer token of this person gets (`ISSUER/SUBJECT`)."""
        return f"{self.issuer.rstrip('/')}/{self.subject}"


def _claim_holds(value: Any, wanted: str) -> bool:
    if isinstance(value, list):
        return wanted in value
    if isinstance(value, bool):
        return value and wanted == "true"
    if isinstance(value, str):
        return value == wanted or wanted in value.split()
    return False


class AuthorizationCodeLogin:
    """The provider's side of the web admin's sign-in, for one public client."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        keys: ProviderKeys,
        config: OidcConfig,
        bearer: OidcBackend,
        scope_prefix: str,
    ) -> None:
        assert config.admin_client_id is not None
        assert config.issuer is not None
        self._session = session
        self._keys = keys
        self._config = config
        self._bearer = bearer
        self._client_id = config.admin_client_id
        self._issuer = config.issuer
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        wanted = ["openid", f"{scope_prefix}admin", *config.admin_scopes]
        self._scope = " ".join(dict.fromkeys(wanted))

    @property
    def redirect_uri(self) -> str | None:
        """The configured redirect URI, if any (else the caller derives it)."""
        return self._config.admin_redirect_uri

    def authorization_url(self, pending: PendingLogin) -> str:
        """Where to send the browser (503 until the provider has been discovered)."""
        endpoint = self._keys.authorization_endpoint
        if endpoint is None or self._keys.token_endpoint is None:
            raise AuthUnavailable("the OpenID provider has not been reached yet; try again")
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._client_id,
                "redirect_uri": pending.redirect_uri,
                "scope": self._scope,
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": pending.challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def finish(self, pending: PendingLogin, code: str) -> SignedIn:
        """Exchange the code, check the ID token, decide admin; 401/503 when it fails."""
        tokens = await self._exchange(pending, code)
        claims = await self._id_token_claims(tokens.get("id_token"), pending.nonce)
        access_token = tokens.get("access_token")
        tenant_claim = self._config.tenant_claim
        tenant = claims.get(tenant_claim) if tenant_claim else None
        if tenant is not None and not isinstance(tenant, str):
            raise Unauthorized(f"the ID token's {tenant_claim} claim is not a name")
        if self._config.admin_claim is not None:
            admin = _claim_holds(
                claims.get(self._config.admin_claim), self._config.admin_claim_value
            )
        elif isinstance(access_token, str):
            principal = await self._bearer.authenticate("bearer", access_token)
            admin = principal is not None and "admin" in principal.scopes
            if principal is not None and tenant is None:
                tenant = principal.tenant
        else:
            admin = False
        name = claims.get("preferred_username") or claims.get("email") or claims["sub"]
        return SignedIn(claims["iss"], claims["sub"], admin, str(name), tenant)

    async def _exchange(self, pending: PendingLogin, code: str) -> dict[str, Any]:
        endpoint = self._keys.token_endpoint
        if endpoint is None:
            raise AuthUnavailable("the OpenID provider has not been reached yet; try again")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "client_id": self._client_id,
            "code_verifier": pending.verifier,
        }
        try:
            async with self._session.post(
                endpoint,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AuthUnavailable(
                f"the OpenID provider's token endpoint failed: {type(exc).__name__}"
            ) from None
        if status >= 500:
            raise AuthUnavailable(f"the OpenID provider's token endpoint answered {status}")
        if status != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise Unauthorized(f"the OpenID provider refused the login ({error or status})")
        return answer

    async def _id_token_claims(self, token: object, nonce: str) -> dict[str, Any]:
        if not isinstance(token, str):
            raise Unauthorized("the OpenID provider sent no ID token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the ID token is not a valid JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._config.algorithms:
            raise Unauthorized("the ID token's algorithm is not accepted")
        kid = header.get("kid")
        key = await self._keys.key(kid if isinstance(kid, str) else None)
        if key is None:
            raise Unauthorized("the ID token is signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._client_id,
                leeway=self._config.leeway,
                options={"require": ["exp", "iat", "iss", "sub", "aud", "nonce"]},
            )
        except jwt.PyJWTError:
            raise Unauthorized("the ID token is not valid") from None
        given = claims.get("nonce")
        if not isinstance(given, str) or not hmac.compare_digest(given, nonce):
            raise Unauthorized("the ID token is not for this login (nonce)")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise Unauthorized("the ID token has no subject")
        return claims
