"""Admin sessions in a cookie: encrypted and signed (Fernet), with idle and absolute expiry.

The key lives in the credential database (made once, by whoever comes first), so every
worker process and every replica reads every session. The cookie holds who logged in and
the session's CSRF token; it is checked again on every request, and the person must still
hold `admin` (a disabled admin is out at once).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

from gateway.auth.oidc_login import PendingLogin
from gateway.clock import Clock

__all__ = [
    "COOKIE",
    "PENDING_COOKIE",
    "PENDING_LIFETIME",
    "SESSION_KEY",
    "AdminSession",
    "SessionKeeper",
]

COOKIE = "lrs_gateway_admin"
# A single sign-on between its two legs (state, nonce, PKCE verifier): SameSite=Lax, since
# the provider sends the browser back from another site.
PENDING_COOKIE = "lrs_gateway_sso"
PENDING_LIFETIME = 600  # seconds to sign in at the provider
SESSION_KEY = "admin-session"  # the Fernet key's name in the credential database


@dataclass(frozen=True, slots=True)
class AdminSession:
    """Who is logged in, and the token every form of this session must carry."""

    subject: str  # the principal's id
    scheme: str
    csrf: str
    issued_at: float
    seen_at: float
    tenant: str | None = None  # a single sign-on admin's tenant (a Basic one's is read live)

    def csrf_matches(self, given: str | None) -> bool:
        """Whether a form's CSRF token is this session's (compared in constant time)."""
        return given is not None and hmac.compare_digest(given, self.csrf)


def _tenant(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("a session's tenant is a name")
    return value


class SessionKeeper:
    """Issues, reads and renews session cookies."""

    def __init__(self, key: bytes, *, clock: Clock, idle: float, absolute: float) -> None:
        self._fernet = Fernet(key)
        self._clock = clock
        self._idle = idle
        self._absolute = absolute

    def new(self, subject: str, scheme: str, tenant: str | None = None) -> AdminSession:
        """A fresh session for a person who just logged in."""
        now = self._clock.now()
        return AdminSession(subject, scheme, secrets.token_urlsafe(32), now, now, tenant)

    def seal(self, session: AdminSession) -> str:
        """The cookie value: the session encrypted and signed."""
        payload = {
            "sub": session.subject,
            "scheme": session.scheme,
            "csrf": session.csrf,
            "iat": session.issued_at,
            "seen": session.seen_at,
            "tenant": session.tenant,
        }
        return self._fernet.encrypt(json.dumps(payload).encode()).decode()

    def read(self, cookie: str | None) -> AdminSession | None:
        """The session in a cookie, renewed for this request; None if bad or expired."""
        if not cookie:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(cookie.encode()))
            session = AdminSession(
                str(payload["sub"]),
                str(payload["scheme"]),
                str(payload["csrf"]),
                float(payload["iat"]),
                float(payload["seen"]),
                # A cookie from before tenants has no "tenant": it signs in again rather than
                # be taken for an admin of every tenant.
                _tenant(payload["tenant"]),
            )
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        now = self._clock.now()
        if now - session.issued_at > self._absolute or now - session.seen_at > self._idle:
            return None
        return dataclasses.replace(session, seen_at=now)

    def seal_pending(self, pending: PendingLogin) -> str:
        """The cookie value that carries a single sign-on to its callback."""
        payload = {
            "state": pending.state,
            "nonce": pending.nonce,
            "verifier": pending.verifier,
            "redirect_uri": pending.redirect_uri,
        }
        return self._fernet.encrypt_at_time(
            json.dumps(payload).encode(), int(self._clock.now())
        ).decode()

    def open_pending(self, cookie: str | None) -> PendingLogin | None:
        """The sign-on a callback belongs to; None if absent, forged or too old."""
        if not cookie:
            return None
        try:
            payload = json.loads(
                self._fernet.decrypt_at_time(
                    cookie.encode(), PENDING_LIFETIME, int(self._clock.now())
                )
            )
            return PendingLogin(
                str(payload["state"]),
                str(payload["nonce"]),
                str(payload["verifier"]),
                str(payload["redirect_uri"]),
            )
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
