"""/admin/credentials and /admin/audit: credentials in the database, managed over HTTP.

Every call needs the `admin` scope; an admin bound to a tenant works within it alone
(gateway.http.admin_scope). A secret is shown once, in the answer that made it
(create with a generated secret, rotate); no answer ever holds a hash. A change is in
effect in the answering process when the answer leaves, and in every other worker within
the database poll interval (`store.poll_interval`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.auth.passwords import hash_new_password
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.http.admin_scope import Admin, request_admin
from gateway.http.bodies import read_limited
from gateway.http.keys import CONFIG, CONSUMER_SECRETS, CREDENTIAL_SOURCES
from gateway.secret import Secret
from gateway.store.credentials import (
    EDITABLE,
    OAUTH,
    CredentialConflict,
    CredentialDatabase,
    NewCredential,
    StoredCredential,
    check_changes,
    check_secret,
    new_secret,
    new_username,
)
from gateway.xapi.statements import parse_json_body

__all__ = [
    "admin_database",
    "audit",
    "changed",
    "create_checked",
    "create_credential",
    "delete_credential",
    "get_credential",
    "json_object",
    "list_credentials",
    "rotate_credential",
    "rotated_secret",
    "update_credential",
]

_MAX_REQUEST = 64 * 1024
_CREATE_FIELDS = (
    "name",
    "scopes",
    "agent",
    "username",
    "secret",
    "expires_at",
    "enabled",
    "info",
    "tenant",
    "auth_type",
)
_DEFAULT_PAGE, _MAX_PAGE = 50, 500


def admin_database(request: web.Request) -> tuple[CredentialDatabase, Admin]:
    """The database and the admin asking, for a caller holding `admin` (else 403)."""
    admin = request_admin(request, "managing credentials")
    database = request.app[CREDENTIAL_SOURCES].database
    if database is None:  # pragma: no cover - the app always opens one with basic auth
        raise NotFound("no credential database: the basic backend is not enabled")
    return database, admin


def _page(request: web.Request) -> tuple[int, int]:
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(_DEFAULT_PAGE)))
    except ValueError:
        raise BadRequest("offset and limit must be whole numbers") from None
    if offset < 0 or not 1 <= limit <= _MAX_PAGE:
        raise BadRequest(f"offset must be 0 or more and limit 1 to {_MAX_PAGE}")
    return offset, limit


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's body, which must be one JSON object."""
    body = parse_json_body(await read_limited(request, _MAX_REQUEST))
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def _found(
    database: CredentialDatabase, request: web.Request, admin: Admin
) -> StoredCredential:
    found = await database.get(request.match_info["id"])
    if found is None or not admin.reaches(found.tenant):  # another tenant's: not there
        raise NotFound("no credential with this id")
    return found


async def changed(request: web.Request) -> None:
    """Make this process see the change now (the others poll for it)."""
    await request.app[CREDENTIAL_SOURCES].check_for_change()


async def create_checked(
    request: web.Request, checked: dict[str, Any]
) -> tuple[StoredCredential, str | None]:
    """Create from checked fields; (the credential, its secret when the gateway made it).

    Shared by every shape of the API: a username of the credentials file, or one the
    database has, is a 409. A bound admin's credential is in its tenant.
    """
    database, admin = admin_database(request)
    checked["tenant"] = admin.tenant_of_new(checked.get("tenant"))
    generated = "secret" not in checked
    secret = new_secret() if generated else check_secret(checked["secret"])
    username = checked.get("username") or new_username()
    if request.app[CREDENTIAL_SOURCES].file.get(username) is not None:
        raise Conflict(f"username: {username!r} is taken (by the credentials file)")
    _check_tenant(request, checked)
    if checked.get("auth_type") == OAUTH:
        # A consumer secret is read back to check signatures: sealed, never hashed.
        new = NewCredential.from_checked(
            checked, username=username, secret_hash=Secret(""), sealed_secret=_seal(request, secret)
        )
    else:
        hashed = Secret(await hash_new_password(secret))
        new = NewCredential.from_checked(checked, username=username, secret_hash=hashed)
    try:
        stored = await database.create(new, actor=admin.actor)
    except CredentialConflict:
        raise Conflict(f"username: {username!r} is taken") from None
    await changed(request)
    return stored, secret if generated else None


def _seal(request: web.Request, secret: str) -> Secret:
    """A consumer secret as the database keeps it; 400 while OAuth is off."""
    secrets = request.app.get(CONSUMER_SECRETS)
    if secrets is None:
        raise BadRequest(
            "auth_type: OAuth consumers need the oauth backend (auth.backends and "
            "auth.oauth.encryption_key)"
        )
    return secrets.seal(secret)


async def rotated_secret(
    request: web.Request,
    database: CredentialDatabase,
    found: StoredCredential,
    actor: str,
    secret: str | None = None,
) -> tuple[StoredCredential, str]:
    """A new secret for `found` (`secret`, else one made): hashed, or sealed (OAuth).

    404 if it went meanwhile. The old one stops at once here, elsewhere within the poll
    interval.
    """
    secret = new_secret() if secret is None else check_secret(secret)
    if found.auth_type == OAUTH:
        rotated = await database.rotate(
            found.id, Secret(""), actor=actor, sealed_secret=_seal(request, secret)
        )
    else:
        hashed = Secret(await hash_new_password(secret))
        rotated = await database.rotate(found.id, hashed, actor=actor)
    if rotated is None:
        raise NotFound("no credential with this id")
    await changed(request)
    return rotated, secret


def _check_tenant(request: web.Request, checked: dict[str, Any]) -> None:
    """400 for a tenant the configuration does not have: never the default instead."""
    tenant = checked.get("tenant")
    known = {t.name for t in request.app[CONFIG].tenants}
    if tenant is not None and tenant not in known:
        raise BadRequest(
            f"tenant: no tenant {tenant!r} is configured (tenants: "
            f"{', '.join(sorted(known)) or 'none'})"
        )


async def create_credential(request: web.Request) -> web.Response:
    """POST /admin/credentials: 201 with the credential; its secret only if generated."""
    admin_database(request)
    checked = check_changes(await json_object(request), _CREATE_FIELDS)
    for required in ("name", "scopes"):
        if required not in checked:
            raise BadRequest(f"{required}: required")
    stored, secret = await create_checked(request, checked)
    answer = stored.public()
    if secret is not None:
        answer["secret"] = secret  # shown this once
    return web.json_response(answer, status=201)


async def list_credentials(request: web.Request) -> web.Response:
    """GET /admin/credentials?offset=&limit=&search=&tenant=: one page, oldest first."""
    database, admin = admin_database(request)
    offset, limit = _page(request)
    search = request.query.get("search") or None
    found, total = await database.page(
        offset=offset, limit=limit, search=search, tenant=admin.listing(request)
    )
    return web.json_response(
        {
            "credentials": [c.public() for c in found],
            "total": total,
            "offset": offset,
            "limit": limit,
        }
    )


async def get_credential(request: web.Request) -> web.Response:
    """GET /admin/credentials/{id}."""
    database, admin = admin_database(request)
    return web.json_response((await _found(database, request, admin)).public())


async def update_credential(request: web.Request) -> web.Response:
    """PATCH /admin/credentials/{id}: name, scopes, agent, enabled, expires_at, info, tenant."""
    database, admin = admin_database(request)
    changes = check_changes(await json_object(request), sorted(EDITABLE))
    await _found(database, request, admin)
    if "tenant" in changes:
        changes["tenant"] = admin.tenant_of_new(changes["tenant"])
    _check_tenant(request, changes)
    updated = await database.update(request.match_info["id"], changes, actor=admin.actor)
    if updated is None:
        raise NotFound("no credential with this id")
    await changed(request)
    return web.json_response(updated.public())


async def rotate_credential(request: web.Request) -> web.Response:
    """POST /admin/credentials/{id}/rotate: a new secret, shown once; the old one stops."""
    database, admin = admin_database(request)
    found = await _found(database, request, admin)
    rotated, secret = await rotated_secret(request, database, found, admin.actor)
    return web.json_response({**rotated.public(), "secret": secret})


async def delete_credential(request: web.Request) -> web.Response:
    """DELETE /admin/credentials/{id}: 204; the credential stops at once."""
    database, admin = admin_database(request)
    await _found(database, request, admin)
    if await database.delete(request.match_info["id"], actor=admin.actor) is None:
        raise NotFound("no credential with this id")
    await changed(request)
    return web.Response(status=204)


async def audit(request: web.Request) -> web.Response:
    """GET /admin/audit?offset=&limit=&tenant=: every change, newest first (no secret)."""
    database, admin = admin_database(request)
    offset, limit = _page(request)
    entries, total = await database.audit(offset=offset, limit=limit, tenant=admin.listing(request))
    return web.json_response(
        {"entries": [e.public() for e in entries], "total": total, "offset": offset, "limit": limit}
    )
