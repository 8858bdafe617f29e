"""The credential APIs our users' scripts already speak: Rustici Engine's and SQL LRS's.

Both work on the same database as /admin/credentials, need the same `admin` scope, and
show a secret only in the answer that made it.

Rustici Engine (`/admin/xapi/credentials`): a credential's `id` is its Basic username and
`secret` its password; `permissionsLevel` USER, ROOT, READONLY, WRITEONLY map onto the
scopes of Rustici's roles. PUT takes one credential or a list (bare, or as
`{"xapiCredentials": [...]}`); an `id` that exists is updated, any other is created.
`OAUTH` makes an OAuth 1.0a consumer (`id` its key, `secret` its secret; needs the oauth
backend); a credential's auth type does not change (delete it and create it). As in Engine,
the `engineTenantName` header names the tenant a call works in ("default": the default
tenant); without it, a tenant's admin works in its own and the gateway's admin lists every
tenant's credentials and creates in the default tenant.

SQL LRS (`/admin/creds`): `api-key` is the Basic username and `secret-key` the password.
PUT and DELETE name a pair by both, as SQL LRS does; the gateway checks the secret-key
against its hash. GET lists keys and scopes, never secret keys (the gateway keeps only
hashes; SQL LRS would show them); `?tenant=` limits it to one tenant. A tenant's admin
sees and makes its own tenant's pairs only.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import BadRequest, NotFound
from gateway.http.admin_scope import Admin
from gateway.http.bodies import read_limited
from gateway.http.handlers.admin_credentials import (
    admin_database,
    changed,
    create_checked,
    json_object,
    rotated_secret,
)
from gateway.http.keys import PASSWORDS
from gateway.store.credentials import (
    BASIC,
    OAUTH,
    CredentialDatabase,
    OfTenant,
    StoredCredential,
    check_changes,
)
from gateway.xapi.scopes import ROLE_SCOPES
from gateway.xapi.statements import parse_json_body

__all__ = [
    "rustici_delete",
    "rustici_get",
    "rustici_list",
    "rustici_put",
    "sqllrs_create",
    "sqllrs_delete",
    "sqllrs_list",
    "sqllrs_update",
]

# Rustici's permission levels, as its credentials-file roles.
_LEVELS = {"USER": "user", "ROOT": "root", "READONLY": "read-only", "WRITEONLY": "write-only"}
_MAX_REQUEST = 256 * 1024
_AUTH_TYPES = {"BASICAUTH": BASIC, "OAUTH": OAUTH}
_RUSTICI_FIELDS = ("id", "name", "info", "secret", "isEnabled", "auth", "permissionsLevel")


def _enum(body: dict[str, Any], key: str, inner: str) -> str | None:
    """`{"auth": {"xapiCredentialAuthType": "X"}}` as the seed shows it, or `{"auth": "X"}`."""
    value = body.get(key)
    if isinstance(value, dict):
        value = value.get(inner)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key}: must be a string or {{{inner!r}: string}}")
    return value.upper()


def _rustici_shape(stored: StoredCredential) -> dict[str, Any]:
    scopes = set(stored.scopes)
    level = next((lvl for lvl, role in _LEVELS.items() if set(ROLE_SCOPES[role]) == scopes), None)
    return {
        "id": stored.username,
        "name": stored.name,
        "info": stored.info or "",
        "isEnabled": stored.enabled,
        "auth": {"xapiCredentialAuthType": "OAUTH" if stored.auth_type == OAUTH else "BASICAUTH"},
        # None when the scopes are no Rustici role's (set through the native API).
        "permissionsLevel": {"xapiCredentialPermissionsLevel": level},
        "scopes": list(stored.scopes),
        "created": stored.created_at,
        "updated": stored.updated_at,
    }


def _rustici_fields(body: object, where: str) -> dict[str, Any]:
    """A Rustici credential object as the native fields (checked)."""
    if not isinstance(body, dict):
        raise BadRequest(f"{where}: must be an object")
    unknown = sorted(set(body) - set(_RUSTICI_FIELDS))
    if unknown:
        raise BadRequest(f"{where}: unknown field {unknown[0][:40]!r}")
    auth = _enum(body, "auth", "xapiCredentialAuthType")
    if auth not in (None, *_AUTH_TYPES):
        raise BadRequest(f"{where}: auth: must be BASICAUTH or OAUTH")
    fields: dict[str, Any] = {}
    if auth is not None:
        fields["auth_type"] = _AUTH_TYPES[auth]
    if body.get("name") is not None:
        fields["name"] = body["name"]
    if body.get("info"):
        fields["info"] = body["info"]
    if "isEnabled" in body:
        fields["enabled"] = body["isEnabled"]
    level = _enum(body, "permissionsLevel", "xapiCredentialPermissionsLevel")
    if level is not None:
        if level not in _LEVELS:
            raise BadRequest(f"{where}: permissionsLevel: must be one of {', '.join(_LEVELS)}")
        fields["scopes"] = list(ROLE_SCOPES[_LEVELS[level]])
    if body.get("secret"):
        fields["secret"] = body["secret"]
    if body.get("id"):
        fields["username"] = body["id"]
    try:
        return check_changes(fields, sorted(fields))
    except BadRequest as exc:
        raise BadRequest(f"{where}: {exc.message}") from None


def _engine_tenant(request: web.Request, admin: Admin) -> OfTenant | None:
    """The tenant Engine's `engineTenantName` header names (None: every tenant)."""
    return admin.within(request.headers.get("engineTenantName"), request)


async def rustici_put(request: web.Request) -> web.Response:
    """PUT /admin/xapi/credentials: create or update each credential given."""
    database, admin = admin_database(request)
    tenant = _engine_tenant(request, admin)
    body = await _json(request)
    items = body
    if isinstance(body, dict):
        items = body.get("xapiCredentials", [body])
    if not isinstance(items, list) or not items:
        raise BadRequest("the body must be a credential, a list of them, or {xapiCredentials}")
    checked = [_rustici_fields(item, f"credential {n + 1}") for n, item in enumerate(items)]
    answers = []
    for fields in checked:  # all checked before any is written
        existing = await database.by_username(fields["username"]) if "username" in fields else None
        if existing is not None and not _in(existing, admin, tenant):
            existing = None  # another tenant's: creating it is a 409 (usernames are global)
        if existing is None:
            fields.setdefault("name", fields.get("username") or "rustici credential")
            fields.setdefault("scopes", tuple(ROLE_SCOPES["user"]))  # Engine's default level
            if tenant is not None:
                fields["tenant"] = tenant.name
            stored, secret = await create_checked(request, fields)
            shown = _rustici_shape(stored)
            if secret is not None:
                shown["secret"] = secret
        else:
            if fields.pop("auth_type", existing.auth_type) != existing.auth_type:
                raise BadRequest(
                    f"credential {existing.username!r}: auth: its type does not change "
                    "(delete it and create it again)"
                )
            secret = fields.pop("secret", None)
            fields.pop("username", None)
            stored = await _update(request, database, existing, fields, secret, admin.actor)
            shown = _rustici_shape(stored)
        answers.append(shown)
    return web.json_response({"xapiCredentials": answers})


async def _update(
    request: web.Request,
    database: CredentialDatabase,
    existing: StoredCredential,
    fields: dict[str, Any],
    secret: str | None,
    actor: str,
) -> StoredCredential:
    from_update = await database.update(existing.id, fields, actor=actor)
    if from_update is None:
        raise NotFound("the credential was deleted meanwhile")
    if secret is not None:
        from_update, _ = await rotated_secret(request, database, from_update, actor, secret)
    await changed(request)
    return from_update


async def _json(request: web.Request) -> object:
    """The body as JSON of any shape (Rustici's PUT may be a bare list)."""
    body = parse_json_body(await read_limited(request, _MAX_REQUEST))
    return body


def _in(found: StoredCredential, admin: Admin, tenant: OfTenant | None) -> bool:
    """Whether a credential is the admin's to see, in the tenant the call names."""
    return admin.reaches(found.tenant) and (tenant is None or found.tenant == tenant.name)


async def _by_id(
    database: CredentialDatabase, request: web.Request, admin: Admin
) -> StoredCredential:
    found = await database.by_username(request.match_info["id"])
    if found is None or not _in(found, admin, _engine_tenant(request, admin)):
        raise NotFound("no credential with this id")
    return found


async def rustici_list(request: web.Request) -> web.Response:
    """GET /admin/xapi/credentials: every credential, in Rustici's shape (no secrets)."""
    database, admin = admin_database(request)
    found, _total = await database.page(
        offset=0, limit=1_000_000, tenant=_engine_tenant(request, admin)
    )
    return web.json_response({"xapiCredentials": [_rustici_shape(c) for c in found]})


async def rustici_get(request: web.Request) -> web.Response:
    """GET /admin/xapi/credentials/{id}."""
    database, admin = admin_database(request)
    return web.json_response(_rustici_shape(await _by_id(database, request, admin)))


async def rustici_delete(request: web.Request) -> web.Response:
    """DELETE /admin/xapi/credentials/{id}: 204."""
    database, admin = admin_database(request)
    found = await _by_id(database, request, admin)
    await database.delete(found.id, actor=admin.actor)
    await changed(request)
    return web.Response(status=204)


# -- SQL LRS ----------------------------------------------------------------------------


def _sqllrs_shape(stored: StoredCredential) -> dict[str, Any]:
    return {"api-key": stored.username, "scopes": list(stored.scopes)}


def _scopes_of(body: dict[str, Any]) -> tuple[str, ...]:
    checked: tuple[str, ...] = check_changes({"scopes": body.get("scopes")}, ["scopes"])["scopes"]
    return checked


async def _pair(request: web.Request, body: dict[str, Any]) -> StoredCredential:
    """The credential an `api-key` + `secret-key` pair names (404 when none matches)."""
    database, admin = admin_database(request)
    key, secret = body.get("api-key"), body.get("secret-key")
    if not isinstance(key, str) or not isinstance(secret, str):
        raise BadRequest("api-key and secret-key: both required, strings")
    found = await database.by_username(key)
    # The same answer whether the key or the secret is wrong: no key can be probed for.
    if (
        found is None
        or found.auth_type != BASIC  # an OAuth consumer is no SQL LRS key pair
        or not admin.reaches(found.tenant)
        or not await request.app[PASSWORDS].check(secret, found.secret_hash.reveal())
    ):
        raise NotFound("no credential with this api-key and secret-key")
    return found


async def sqllrs_create(request: web.Request) -> web.Response:
    """POST /admin/creds {"scopes"}: a new pair, its secret-key shown this once."""
    admin_database(request)
    body = await json_object(request)
    unknown = sorted(set(body) - {"scopes"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:40]!r}; allowed: scopes")
    scopes = _scopes_of(body)
    fields: dict[str, Any] = {"name": "sql-lrs credential", "scopes": scopes}
    stored, secret = await create_checked(request, fields)
    return web.json_response({**_sqllrs_shape(stored), "secret-key": secret})


async def sqllrs_list(request: web.Request) -> web.Response:
    """GET /admin/creds?tenant=: every pair's api-key and scopes."""
    database, admin = admin_database(request)
    found, _total = await database.page(offset=0, limit=1_000_000, tenant=admin.listing(request))
    return web.json_response([_sqllrs_shape(c) for c in found])


async def sqllrs_update(request: web.Request) -> web.Response:
    """PUT /admin/creds {"api-key", "secret-key", "scopes"}: new scopes for the pair."""
    database, admin = admin_database(request)
    body = await json_object(request)
    unknown = sorted(set(body) - {"api-key", "secret-key", "scopes"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:40]!r}")
    scopes = _scopes_of(body)
    found = await _pair(request, body)
    updated = await database.update(found.id, {"scopes": scopes}, actor=admin.actor)
    if updated is None:
        raise NotFound("no credential with this api-key and secret-key")
    await changed(request)
    return web.json_response({**_sqllrs_shape(updated), "secret-key": body["secret-key"]})


async def sqllrs_delete(request: web.Request) -> web.Response:
    """DELETE /admin/creds {"api-key", "secret-key"}: the pair stops at once."""
    database, admin = admin_database(request)
    body = await json_object(request)
    found = await _pair(request, body)
    await database.delete(found.id, actor=admin.actor)
    await changed(request)
    return web.json_response({"api-key": found.username})
