"""What every bearer-token backend shares: an unverified peek at the issuer, claim mapping."""

from __future__ import annotations

from typing import Any

import jwt

__all__ = ["peek_issuer", "token_scopes"]


def peek_issuer(token: str) -> str | None:
    """The `iss` a JWT claims, unverified: only to pick the backend that will verify it."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


def token_scopes(claims: dict[str, Any]) -> list[str]:
    """Scopes from `scope` (space separated) or `scp` (a list or a string)."""
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return [item for item in raw if isinstance(item, str)]
    return []
