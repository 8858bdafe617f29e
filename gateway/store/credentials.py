"""Credentials kept in a database, and the audit of every change: the model and its rules.

What the admin API, the CLI and Basic authentication share, whatever the database: a
credential's fields, which of them a change may touch, and how a change is described in
the audit (never a secret or a hash). The databases themselves live beside this module.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import BadRequest
from gateway.secret import Secret
from gateway.xapi.agents import AgentError, validate_agent
from gateway.xapi.scopes import KNOWN_SCOPES, normalize_scopes

__all__ = [
    "BASIC",
    "EDITABLE",
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "OAUTH",
    "AuditEntry",
    "CredentialConflict",
    "CredentialDatabase",
    "NewCredential",
    "OfTenant",
    "StoredCredential",
    "check_agent",
    "check_scopes",
    "check_secret",
    "check_username",
    "new_secret",
    "new_username",
]

BASIC, OAUTH = "basic", "oauth"  # a credential's auth type: a Basic password, an OAuth consumer
MIN_SECRET_BYTES = 12  # a chosen secret shorter than this is refused
MAX_SECRET_BYTES = 72  # bcrypt reads no further
# Fields a PATCH may change; the username and the secret have their own ways (rotate).
EDITABLE = frozenset({"name", "scopes", "agent", "enabled", "expires_at", "info", "tenant"})
_USERNAME = re.compile(r"[A-Za-z0-9._~@+-]{1,128}")


class CredentialConflict(Exception):
    """The username is taken (by the database, or by the credentials file)."""


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """One credential of the database; `secret_hash` is a bcrypt hash, never shown."""

    id: str
    username: str
    secret_hash: Secret = field(repr=False)
    name: str
    scopes: tuple[str, ...]
    agent: dict[str, Any] | None
    enabled: bool
    expires_at: float | None  # Unix time; None: never
    info: str | None  # a URL or note about who holds it
    created_at: float
    updated_at: float
    last_used_at: float | None = None  # coarse: written at most once a minute
    tenant: str | None = None  # its tenant's storage and targets (None: the default's)
    auth_type: str = BASIC  # BASIC (a password, hashed) or OAUTH (a consumer secret, sealed)
    sealed_secret: Secret | None = field(default=None, repr=False)  # OAUTH's, encrypted

    def usable(self, now: float) -> bool:
        """Enabled and not expired at `now`."""
        return self.enabled and (self.expires_at is None or now < self.expires_at)

    def public(self) -> dict[str, Any]:
        """What an admin sees of it: everything but the hash."""
        return {
            "id": self.id,
            "username": self.username,
            "name": self.name,
            "scopes": list(self.scopes),
            "agent": self.agent,
            "enabled": self.enabled,
            "expires_at": self.expires_at,
            "info": self.info,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_used_at": self.last_used_at,
            "tenant": self.tenant,
            "auth_type": self.auth_type,
        }


@dataclass(frozen=True, slots=True)
class NewCredential:
    """A credential to create: every field checked, the secret already hashed."""

    username: str
    secret_hash: Secret = field(repr=False)
    name: str
    scopes: tuple[str, ...]
    agent: dict[str, Any] | None = None
    enabled: bool = True
    expires_at: float | None = None
    info: str | None = None
    tenant: str | None = None
    auth_type: str = BASIC
    sealed_secret: Secret | None = field(default=None, repr=False)

    @classmethod
    def from_checked(
        cls,
        checked: Mapping[str, Any],
        *,
        username: str,
        secret_hash: Secret,
        sealed_secret: Secret | None = None,
    ) -> NewCredential:
        """From fields `check_changes` passed (name and scopes required).

        An OAUTH credential has a sealed consumer secret and no password hash.
        """
        return cls(
            auth_type=BASIC if sealed_secret is None else OAUTH,
            sealed_secret=sealed_secret,
            username=username,
            secret_hash=secret_hash,
            name=checked["name"],
            scopes=checked["scopes"],
            agent=checked.get("agent"),
            enabled=checked.get("enabled", True),
            expires_at=checked.get("expires_at"),
            info=checked.get("info"),
            tenant=checked.get("tenant"),
        )


@dataclass(frozen=True, slots=True)
class OfTenant:
    """A listing limited to one tenant's rows (`name` None: the default tenant's)."""

    name: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: who made it, when, to which credential, and what changed (no secrets)."""

    id: int
    at: float
    actor: str
    action: str  # create, update, rotate, delete, import
    credential_id: str | None
    username: str | None
    changes: Mapping[str, Any]
    tenant: str | None = None  # the credential's tenant after the change (before a delete)

    def public(self) -> dict[str, Any]:
        """The entry as the admin API shows it."""
        return {
            "tenant": self.tenant,
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "credential_id": self.credential_id,
            "username": self.username,
            "changes": dict(self.changes),
        }


class CredentialDatabase(Protocol):
    """Where credentials live (SQLite by default; the same interface for any other).

    `generation` grows with every change, so each process learns of another's change by
    reading one number; `last used` writes do not count as changes. `migrated` lists
    the schema versions the last `open` applied.
    """

    migrated: list[int]

    async def open(self) -> None:
        """Open it (creating or migrating its schema)."""
        ...

    async def close(self) -> None:
        """Close it."""
        ...

    async def generation(self) -> int:
        """The change counter: another value means something changed."""
        ...

    async def all(self) -> list[StoredCredential]:
        """Every credential (for the in-memory copy Basic authentication reads)."""
        ...

    async def get(self, credential_id: str) -> StoredCredential | None:
        """The credential with this id."""
        ...

    async def by_username(self, username: str) -> StoredCredential | None:
        """The credential with this username."""
        ...

    async def page(
        self,
        *,
        offset: int,
        limit: int,
        search: str | None = None,
        tenant: OfTenant | None = None,
    ) -> tuple[list[StoredCredential], int]:
        """One page, oldest first, and the total; `search` matches name or username.

        `tenant`: that tenant's credentials only (None: every tenant's).
        """
        ...

    async def create(
        self, new: NewCredential, *, actor: str, action: str = "create"
    ) -> StoredCredential:
        """Insert it; CredentialConflict when the username is taken."""
        ...

    async def update(
        self, credential_id: str, changes: Mapping[str, Any], *, actor: str
    ) -> StoredCredential | None:
        """Apply checked changes of editable fields; None when there is no such id."""
        ...

    async def rotate(
        self,
        credential_id: str,
        secret_hash: Secret,
        *,
        actor: str,
        sealed_secret: Secret | None = None,
    ) -> StoredCredential | None:
        """Replace the secret (already hashed, or sealed for OAUTH); None: no such id."""
        ...

    async def remember_nonce(self, key: str, expires_at: float) -> bool:
        """Remember an OAuth nonce until `expires_at`; False when it is remembered already.

        Every process and replica using the database shares them (a replay is refused
        wherever it lands); expired ones are dropped as new ones come.
        """
        ...

    async def delete(self, credential_id: str, *, actor: str) -> StoredCredential | None:
        """Remove it; None when there is no such id."""
        ...

    async def touch(self, used: Mapping[str, float]) -> None:
        """Record when usernames were last used (not a change: the generation stays)."""
        ...

    async def audit(
        self, *, offset: int, limit: int, tenant: OfTenant | None = None
    ) -> tuple[list[AuditEntry], int]:
        """One page of the audit, newest first, and the total (`tenant`: its entries only)."""
        ...

    async def shared_key(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The key called `name` that everyone using this database shares (made once)."""
        ...

    async def restore(
        self, credentials: Sequence[StoredCredential], audit: Sequence[AuditEntry]
    ) -> list[str]:
        """Copy rows from another database as they are; the usernames it holds already.

        Ids, hashes and times are kept; `audit` comes oldest first.
        """
        ...

    async def describe(self) -> dict[str, Any]:
        """What `lrs-gateway store status` shows: kind, where (no secret), schema, counts."""
        ...


def new_secret() -> str:
    """A secret the gateway makes: 256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def new_username() -> str:
    """A username the gateway makes: random, URL-safe, never a person's name."""
    return "gw-" + secrets.token_urlsafe(12)


def check_username(value: object) -> str:
    """A username a credential may have (no ':', which Basic cannot carry)."""
    if not isinstance(value, str) or _USERNAME.fullmatch(value) is None:
        raise BadRequest(
            "username: 1 to 128 of letters, digits and . _ ~ @ + - (no ':', no spaces)"
        )
    return value


def check_secret(value: object) -> str:
    """A chosen secret: 12 to 72 bytes (bcrypt reads no further), no NUL."""
    if not isinstance(value, str):
        raise BadRequest("secret: must be a string")
    size = len(value.encode("utf-8"))
    if "\0" in value:  # C bcrypt implementations stop reading at a NUL byte
        raise BadRequest("secret: must not contain a NUL character")
    if size < MIN_SECRET_BYTES or size > MAX_SECRET_BYTES:
        raise BadRequest(
            f"secret: must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (UTF-8), not {size}"
        )
    return value


def check_scopes(value: object) -> tuple[str, ...]:
    """Known scope names (aliases included), at least one, each once."""
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise BadRequest("scopes: must be a list of strings")
    _, unknown = normalize_scopes(value)  # aliases (SQL LRS, Learning Locker) are known too
    if unknown:
        shown = ", ".join(repr(s[:40]) for s in unknown[:5])
        raise BadRequest(f"scopes: unknown {shown}; known: {', '.join(sorted(KNOWN_SCOPES))}")
    if not value:
        raise BadRequest("scopes: at least one")
    return tuple(dict.fromkeys(value))


def check_agent(value: object) -> dict[str, Any] | None:
    """A valid xAPI Agent or Group, or None (an account agent is then made)."""
    if value is None:
        return None
    try:
        validate_agent(value, "agent")
    except AgentError as exc:
        raise BadRequest(str(exc)) from None
    assert isinstance(value, dict)
    return value


def check_text(key: str, value: object, limit: int) -> str:
    """A short printable string."""
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
        raise BadRequest(f"{key}: must be a string of at most {limit} printable characters")
    return value


def check_expiry(value: object) -> float | None:
    """A Unix time, or None for never."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequest("expires_at: must be a Unix time in seconds, or null")
    return float(value)


def check_changes(body: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """The checked values of `body`, which may hold only `allowed` fields."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:40]!r}; allowed: {', '.join(allowed)}")
    checked: dict[str, Any] = {}
    for key, value in body.items():
        if key == "name":
            checked[key] = check_text("name", value, 200)
        elif key == "info":
            checked[key] = None if value is None else check_text("info", value, 2000)
        elif key == "scopes":
            checked[key] = check_scopes(value)
        elif key == "agent":
            checked[key] = check_agent(value)
        elif key == "enabled":
            if not isinstance(value, bool):
                raise BadRequest("enabled: must be true or false")
            checked[key] = value
        elif key == "expires_at":
            checked[key] = check_expiry(value)
        elif key == "username":
            checked[key] = check_username(value)
        elif key == "secret":
            checked[key] = check_secret(value)
        elif key == "tenant":
            # Whether it is configured is the caller's to check (the store has no config).
            checked[key] = None if value is None else check_text("tenant", value, 63)
        elif key == "auth_type":
            if value not in (BASIC, OAUTH):
                raise BadRequest(f"auth_type: {BASIC!r} (a password) or {OAUTH!r} (a consumer)")
            checked[key] = value
    return checked
