"""OIDC bearer tokens (resource server): signature, iss, aud, times, type, scopes, agent."""

from __future__ import annotations

from typing import Any

import jwt

from gateway.auth.bearer import peek_issuer, token_scopes
from gateway.auth.jwks import ProviderKeys
from gateway.auth.principal import Principal
from gateway.config.settings import OidcConfig
from gateway.errors import AuthUnavailable, Unauthorized
from gateway.xapi.scopes import normalize_scopes

__all__ = ["OidcBackend", "oidc_agent"]

_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")


def _account(issuer: str, name: str) -> dict[str, Any]:
    return {"objectType": "Agent", "account": {"homePage": issuer, "name": name}}


def oidc_agent(mode: str, claims: dict[str, Any]) -> dict[str, Any]:
    """The xAPI agent for a token's claims (`account`, Ralph's `openid`, SQL LRS's `group`)."""
    issuer, subject = claims["iss"], claims["sub"]
    if mode == "openid":
        return {"objectType": "Agent", "openid": f"{issuer.rstrip('/')}/{subject}"}
    if mode == "group":
        client = claims.get("client_id") or claims.get("azp")
        if not isinstance(client, str) or client == subject:
            return _account(issuer, subject)  # client credentials: the client is the user
        return {
            "objectType": "Group",
            "member": [_account(issuer, client), _account(issuer, subject)],
        }
    return _account(issuer, subject)


class OidcBackend:
    """`Authorization: Bearer <JWT>` from the configured issuer."""

    def __init__(self, keys: ProviderKeys, config: OidcConfig, scope_prefix: str) -> None:
        self._keys = keys
        self._config = config
        self._prefix = scope_prefix
        self._algorithms = list(config.algorithms)
        self.challenge = 'Bearer realm="xAPI"'

    def key_refreshes(self) -> int:
        """Fetches of the provider's keys so far, for metrics."""
        return self._keys.refreshes

    @property
    def readiness_problem(self) -> str | None:
        """Why OIDC tokens cannot be checked yet, if so."""
        return self._keys.problem

    async def authenticate(self, scheme: str, credentials: str) -> Principal | None:
        """Verify a bearer JWT from our issuer; None for other schemes or issuers."""
        if scheme != "bearer" or peek_issuer(credentials) != self._config.issuer:
            return None
        if not self._keys.ready:
            raise AuthUnavailable("the OpenID provider has not been reached yet; try again")
        claims = await self._verify(credentials)
        scopes, _ = normalize_scopes(
            (s for s in token_scopes(claims) if s.startswith(self._prefix)), self._prefix
        )
        issuer, subject = claims["iss"], claims["sub"]
        tenant = claims.get(self._config.tenant_claim) if self._config.tenant_claim else None
        if tenant is not None and not isinstance(tenant, str):
            raise Unauthorized(f"the token's {self._config.tenant_claim} claim is not a name")
        return Principal(
            id=f"{issuer.rstrip('/')}/{subject}",
            scheme="oidc",
            scopes=scopes,
            agent=oidc_agent(self._config.agent, claims),
            expires_at=float(claims["exp"]),
            tenant=tenant,
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the bearer token is not a valid JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise Unauthorized("the bearer token's algorithm is not accepted")
        typ = header.get("typ")
        if typ is not None and str(typ).lower() not in _ACCESS_TOKEN_TYPES:
            raise Unauthorized("the bearer token is not an access token")
        kid = header.get("kid")
        key = await self._keys.key(kid if isinstance(kid, str) else None)
        if key is None:
            raise Unauthorized("the bearer token is signed by an unknown key")
        required = ["exp", "iat", "iss", "sub"] + (["aud"] if self._config.audience else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                issuer=self._config.issuer,
                audience=self._config.audience,
                leeway=self._config.leeway,
                options={"require": required, "verify_aud": self._config.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the bearer token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the bearer token is not valid yet") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthorized("the bearer token is not valid") from None
        if any(name in claims for name in _ID_TOKEN_CLAIMS) or claims.get("typ") == "ID":
            raise Unauthorized("an ID token is not an access token")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise Unauthorized("the bearer token has no subject")
        return claims
