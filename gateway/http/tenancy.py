"""Which tenant a request is for, and that tenant's storage and forwarder.

A credential's tenant (credentials file, auth callback, OIDC claim, gateway token) picks
the storage LRS and forwarding targets of every request it makes; a tenant the
configuration does not name is refused, never served by the default tenant instead.
"""

from __future__ import annotations

from aiohttp import web

from gateway.auth.principal import Principal
from gateway.config.settings import DEFAULT_TENANT
from gateway.errors import Forbidden
from gateway.forwarding.forwarder import Forwarder
from gateway.http.keys import CONFIG, FORWARDERS, PRINCIPAL, STORAGES
from gateway.upstream.storage import StorageClient

__all__ = [
    "all_forwarders",
    "check_tenant",
    "forwarder_for",
    "storage_for",
    "tenant_label",
    "tenant_label_of",
]


def tenant_label(tenant: str | None) -> str:
    """A tenant as people and metrics name it: the default tenant is "default"."""
    return DEFAULT_TENANT if tenant is None else tenant


def tenant_label_of(request: web.Request) -> str:
    """The metrics label of a request's tenant: "" when no caller was authenticated."""
    principal = request.get(PRINCIPAL)
    if principal is None:
        return ""
    # An unconfigured tenant is refused (403) but must not make a label of its own.
    tenant = principal.tenant
    if tenant is not None and tenant not in request.app[STORAGES]:
        return ""
    return tenant_label(tenant)


def check_tenant(app: web.Application, principal: Principal) -> None:
    """403 for a caller whose tenant is not configured."""
    tenant = principal.tenant
    if tenant is not None and tenant not in {t.name for t in app[CONFIG].tenants}:
        raise Forbidden(f"no tenant {tenant[:60]!r} is configured for these credentials")


def storage_for(request: web.Request) -> StorageClient:
    """The storage LRS of the caller's tenant (the default's for a request without one)."""
    principal = request.get(PRINCIPAL)
    return request.app[STORAGES][principal.tenant if principal is not None else None]


def forwarder_for(request: web.Request) -> Forwarder | None:
    """The forwarder of the caller's tenant; None when it forwards nowhere."""
    forwarders = request.app.get(FORWARDERS)
    return None if forwarders is None else forwarders.get(request[PRINCIPAL].tenant)


def all_forwarders(app: web.Application) -> list[Forwarder]:
    """Every tenant's forwarder, the default tenant's first."""
    return list(app.get(FORWARDERS, {}).values())
