"""Short-lived tokens the gateway signs itself, with scopes narrowed from the issuer's.

Revocation: a token minted for a user of the credentials file is good only while that
user is still there, and only for the scopes the user still holds (checked when the token
is verified, and the verified-token cache is emptied whenever the file changes). Tokens
never mint tokens and never carry `admin` or `tokens/issue`, so a leaked token cannot
outlive its user by renewing itself. Subjects the gateway cannot look up (callback, OIDC)
keep their token until it expires (at most `auth.tokens.max_lifetime`); changing the
secret or key revokes every token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.auth.bearer import peek_issuer, token_scopes
from gateway.auth.principal import Principal
from gateway.config.settings import TokensConfig
from gateway.errors import Forbidden, Unauthorized
from gateway.xapi.agents import AgentError, validate_actor
from gateway.xapi.restrictions import Restriction, RestrictionError
from gateway.xapi.scopes import ScopeSet, covers, normalize_scopes

__all__ = ["NEVER_IN_A_TOKEN", "Subjects", "TokenBackend", "TokenSigner"]

_AUDIENCE = "lrs-gateway"
# Scopes that would let a token act on credentials or mint its own successor.
NEVER_IN_A_TOKEN = frozenset({"admin", "tokens/issue"})
# The schemes whose subject the gateway can look up again when the token comes back.
_LOOKED_UP = "basic"


class Subjects(Protocol):
    """Where the users behind `basic` tokens are looked up again (the credentials file)."""

    def current(self, username: str) -> tuple[dict[str, Any], ScopeSet, str | None] | None:
        """(agent, scopes, tenant) of the user now, or None when the user is gone."""
        ...


class TokenSigner:
    """Signs and verifies gateway tokens: HS256 with a secret, or EdDSA with a private key.

    Changing the secret or key invalidates every outstanding token.
    """

    def __init__(self, config: TokensConfig, base_dir: Path) -> None:
        self.issuer = config.issuer
        self.max_lifetime = config.max_lifetime
        self.sub_activities = config.sub_activities
        self.verifications = 0  # signature checks so far (tests read it)
        if config.secret is not None:
            self._algorithm = "HS256"
            self._signing_key: Any = config.secret.reveal().encode("utf-8")
            self._verifying_key: Any = self._signing_key
        else:
            assert config.private_key_file is not None
            path = Path(config.private_key_file).expanduser()
            path = path if path.is_absolute() else base_dir / path
            key = load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path}: an Ed25519 private key (PEM) is needed")
            self._algorithm = "EdDSA"
            self._signing_key = key
            self._verifying_key = key.public_key()

    def issue(
        self,
        principal: Principal,
        requested: Iterable[str],
        lifetime: float,
        restriction: Restriction | None = None,
    ) -> tuple[str, int]:
        """A token for `principal` with `requested` scopes; 403 when they are not all covered.

        Only a primary credential (Basic, callback, OIDC) mints tokens, and never ones
        holding `admin` or `tokens/issue`.
        """
        if principal.scheme == "token":
            raise Forbidden(
                "a gateway token cannot issue tokens: use the credential it was issued from"
            )
        scopes, unknown = normalize_scopes(requested)
        if unknown:
            raise Forbidden(f"unknown scopes: {', '.join(sorted(unknown))}")
        if not scopes:
            raise Forbidden("a token needs at least one scope")
        withheld = sorted(scopes & NEVER_IN_A_TOKEN)
        if withheld:
            raise Forbidden(f"a token never holds {' or '.join(withheld)}")
        wider = sorted(s for s in scopes if not covers(principal.scopes, s))
        if wider:
            raise Forbidden(f"the caller does not hold: {', '.join(wider)}")
        now = int(time.time())
        expires = now + int(min(lifetime, self.max_lifetime))
        claims = {
            "iss": self.issuer,
            "aud": _AUDIENCE,
            "sub": principal.id,
            "iat": now,
            "exp": expires,
            "jti": uuid.uuid4().hex,
            "scope": " ".join(sorted(scopes)),
            "agent": principal.agent,
            "via": principal.scheme,
        }
        if principal.tenant is not None:
            claims["tenant"] = principal.tenant
        if restriction is not None:
            claims["restrict"] = restriction.as_claim()
        token = jwt.encode(claims, self._signing_key, algorithm=self._algorithm)
        return token, expires

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token, or Unauthorized."""
        self.verifications += 1
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self._algorithm],
                issuer=self.issuer,
                audience=_AUDIENCE,
                leeway=5,
                options={"require": ["exp", "iat", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthorized("the token is not valid") from None
        times = (claims["exp"], claims["iat"])
        if any(isinstance(t, bool) or not isinstance(t, int | float) for t in times):
            raise Unauthorized("the token's times are not numbers")
        if claims["exp"] - claims["iat"] > self.max_lifetime + 1:
            raise Unauthorized("the token outlives the allowed lifetime")
        return claims


class TokenBackend:
    """`Authorization: Bearer <gateway token>`."""

    challenge = 'Bearer realm="xAPI"'

    def __init__(self, signer: TokenSigner, subjects: Subjects | None = None) -> None:
        self._signer = signer
        self._subjects = subjects

    async def authenticate(self, scheme: str, credentials: str) -> Principal | None:
        """Verify a token this gateway issued; None for other schemes or issuers."""
        if scheme != "bearer" or peek_issuer(credentials) != self._signer.issuer:
            return None
        claims = self._signer.verify(credentials)
        agent = claims.get("agent")
        try:
            validate_actor(agent)
        except AgentError:
            raise Unauthorized("the token carries no valid agent") from None
        assert isinstance(agent, dict)
        scopes: ScopeSet = normalize_scopes(token_scopes(claims))[0] - NEVER_IN_A_TOKEN
        via = claims.get("via")
        if via == "token":  # minted by a token before tokens stopped minting tokens
            raise Unauthorized("the token was issued by another token")
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise Unauthorized("the token's tenant is not a name")
        if via == _LOOKED_UP:
            scopes = self._still_granted(str(claims["sub"]), agent, scopes, tenant)
        restriction = None
        if "restrict" in claims:
            try:
                restriction = Restriction.parse(
                    claims["restrict"], sub_activities=self._signer.sub_activities
                )
            except RestrictionError:
                raise Unauthorized("the token carries a restriction that cannot be") from None
        return Principal(
            id=str(claims["sub"]),
            agent=agent,
            scopes=scopes,
            scheme="token",
            expires_at=float(claims["exp"]),
            restriction=restriction,
            tenant=tenant,
        )

    def _still_granted(
        self, username: str, agent: dict[str, Any], scopes: ScopeSet, tenant: str | None
    ) -> ScopeSet:
        """The token's scopes its user still holds; 401 once the user is gone or changed."""
        now = self._subjects.current(username) if self._subjects is not None else None
        if now is None:
            raise Unauthorized("the token's user no longer exists")
        current_agent, current_scopes, current_tenant = now
        if current_agent != agent:
            raise Unauthorized("the token's user has another agent now")
        if current_tenant != tenant:
            raise Unauthorized("the token's user is in another tenant now")
        return frozenset(s for s in scopes if covers(current_scopes, s))
