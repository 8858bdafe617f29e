"""Credentials as database rows, the same for every database: columns, values, audit text.

Scopes and agents are stored as JSON text and times as Unix seconds, so a row reads the
same from SQLite and PostgreSQL (and `store copy` moves rows between them unchanged).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.secret import Secret
from gateway.store.credentials import AuditEntry, NewCredential, StoredCredential

__all__ = [
    "AUDITED_ON_CREATE",
    "AUDIT_COLUMNS",
    "COLUMNS",
    "Row",
    "audit_entry",
    "audit_row",
    "column_value",
    "create_changes",
    "created",
    "credential",
    "insert_values",
    "update_changes",
]


class Row(Protocol):
    """A database row read by column name (sqlite3.Row, asyncpg.Record, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


COLUMNS = (
    "id, username, secret_hash, name, scopes, agent, enabled, expires_at, info, "
    "created_at, updated_at, last_used_at, tenant, auth_type, sealed_secret"
)
AUDITED_ON_CREATE = (
    "name",
    "scopes",
    "agent",
    "enabled",
    "expires_at",
    "info",
    "tenant",
    "auth_type",
)


def credential(row: Row) -> StoredCredential:
    """The credential in a row (sqlite3.Row, asyncpg.Record or a dict)."""
    return StoredCredential(
        id=row["id"],
        username=row["username"],
        secret_hash=Secret(row["secret_hash"]),
        name=row["name"],
        scopes=tuple(json.loads(row["scopes"])),
        agent=json.loads(row["agent"]) if row["agent"] is not None else None,
        enabled=bool(row["enabled"]),
        expires_at=row["expires_at"],
        info=row["info"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_used_at=row["last_used_at"],
        tenant=row["tenant"],
        auth_type=row["auth_type"],
        sealed_secret=None if row["sealed_secret"] is None else Secret(row["sealed_secret"]),
    )


def column_value(key: str, value: Any) -> Any:
    """A field's value as its column holds it."""
    if key == "scopes":
        return json.dumps(list(value))
    if key == "agent":
        return None if value is None else json.dumps(value)
    if key == "enabled":
        return bool(value)
    return value


def created(new: NewCredential, now: float) -> StoredCredential:
    """The credential `new` becomes, with a fresh id, made `now`."""
    return StoredCredential(
        id=str(uuid.uuid4()),
        username=new.username,
        secret_hash=new.secret_hash,
        name=new.name,
        scopes=new.scopes,
        agent=new.agent,
        enabled=new.enabled,
        expires_at=new.expires_at,
        info=new.info,
        created_at=now,
        updated_at=now,
        tenant=new.tenant,
        auth_type=new.auth_type,
        sealed_secret=new.sealed_secret,
    )


def insert_values(stored: StoredCredential) -> dict[str, Any]:
    """Column -> value of a new row (last_used_at starts empty)."""
    values = {
        "id": stored.id,
        "username": stored.username,
        "secret_hash": stored.secret_hash.reveal(),
        "name": stored.name,
        "scopes": stored.scopes,
        "agent": stored.agent,
        "enabled": stored.enabled,
        "expires_at": stored.expires_at,
        "info": stored.info,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
        "tenant": stored.tenant,
        "auth_type": stored.auth_type,
        "sealed_secret": None if stored.sealed_secret is None else stored.sealed_secret.reveal(),
    }
    return {key: column_value(key, value) for key, value in values.items()}


def create_changes(done: StoredCredential) -> dict[str, Any]:
    """What the audit says a new credential holds (never its secret or hash)."""
    shown = done.public()
    return {key: shown[key] for key in AUDITED_ON_CREATE}


def update_changes(
    before: Mapping[str, Any], after: StoredCredential, changed: Mapping[str, Any]
) -> dict[str, Any]:
    """Each changed field's old and new value, as the audit shows them."""
    now = after.public()
    return {
        key: {"from": before[key], "to": now[key]} for key in changed if before[key] != now[key]
    }


def audit_entry(row: Row) -> AuditEntry:
    """An audit row as the admin API shows it."""
    return AuditEntry(
        row["id"],
        row["at"],
        row["actor"],
        row["action"],
        row["credential_id"],
        row["username"],
        json.loads(row["changes"]),
        row["tenant"],
    )


AUDIT_COLUMNS = "at, actor, action, credential_id, username, changes, tenant"


def audit_row(
    entry: AuditEntry,
) -> tuple[float, str, str, str | None, str | None, str, str | None]:
    """The values of AUDIT_COLUMNS for an entry, to insert."""
    return (
        entry.at,
        entry.actor,
        entry.action,
        entry.credential_id,
        entry.username,
        json.dumps(entry.changes),
        entry.tenant,
    )
