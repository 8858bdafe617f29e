"""How far an admin reaches: the whole gateway, or one tenant.

A credential holding `admin` and no tenant administers everything. One holding `admin` and
a tenant is that tenant's admin: it lists, creates and changes only its tenant's
credentials (what it creates is in its tenant, whatever the body says), reads only their
audit, sees and replays only its tenant's forwarding targets, and lifts only its
credentials' lockouts. Anything outside is answered as if it did not exist (404), so a
tenant's admin cannot learn another tenant's usernames or targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.auth.principal import Principal
from gateway.config.settings import DEFAULT_TENANT, Config
from gateway.errors import BadRequest, Forbidden
from gateway.http.keys import CONFIG, PRINCIPAL
from gateway.store.credentials import OfTenant

__all__ = ["Admin", "actor_of", "admin_of", "request_admin"]


def actor_of(principal: Principal) -> str:
    """Who made a change, as the audit names them: `basic:alice`, `oidc:ISSUER/SUBJECT`, ..."""
    return f"{principal.scheme}:{principal.id}"


@dataclass(frozen=True, slots=True)
class Admin:
    """Who administers, and the tenant they are bound to (None: every tenant)."""

    actor: str  # as the audit names them: `basic:alice`, `oidc:ISSUER/SUBJECT`
    tenant: str | None

    @property
    def bound(self) -> bool:
        """Whether this admin's reach ends at one tenant."""
        return self.tenant is not None

    def reaches(self, tenant: str | None) -> bool:
        """Whether something of `tenant` (None: the default tenant) is this admin's."""
        return not self.bound or tenant == self.tenant

    def listing(self, request: web.Request) -> OfTenant | None:
        """Which tenant a listing shows: `?tenant=` (see `within`)."""
        return self.within(request.query.get("tenant"), request)

    def within(self, asked: str | None, request: web.Request) -> OfTenant | None:
        """The tenant a call asked for (None: a bound admin's own, else every tenant).

        "default" names the default tenant; a tenant the configuration does not have is a
        400, another tenant than a bound admin's a 403.
        """
        if not asked:
            return OfTenant(self.tenant) if self.bound else None
        known = {t.name for t in request.app[CONFIG].tenants}
        if asked != DEFAULT_TENANT and asked not in known:
            raise BadRequest(
                f"tenant: no tenant {asked[:63]!r} is configured (tenants: "
                f"{', '.join([DEFAULT_TENANT, *sorted(known)])})"
            )
        name = None if asked == DEFAULT_TENANT else asked
        if not self.reaches(name):
            raise Forbidden(f"an admin of tenant {self.tenant!r} sees only its own")
        return OfTenant(name)

    def targets(self, config: Config) -> set[str]:
        """The forwarding targets this admin sees: its tenant's, or every tenant's."""
        if self.bound:
            return {
                t.label
                for tenant in config.tenants
                if tenant.name == self.tenant
                for t in tenant.forwardings
            }
        return {t.label for t in config.forwardings} | {
            t.label for tenant in config.tenants for t in tenant.forwardings
        }

    def tenant_of_new(self, given: object) -> object:
        """The tenant a credential this admin creates or moves gets (403 for another's).

        "default" names the default tenant (stored as none); a bound admin's credential
        is in its tenant when the body names none.
        """
        if not self.bound:
            return None if given == DEFAULT_TENANT else given
        if given is not None and given != self.tenant:
            raise Forbidden(
                f"tenant: an admin of tenant {self.tenant!r} manages only its credentials"
            )
        return self.tenant


def admin_of(principal: Principal, doing: str) -> Admin:
    """The admin `principal` is; 403 "`doing` needs the admin scope" if it is none."""
    if "admin" not in principal.scopes:
        raise Forbidden(f"{doing} needs the admin scope")
    return Admin(actor_of(principal), principal.tenant)


def request_admin(request: web.Request, doing: str) -> Admin:
    """The admin making this request (403 without the admin scope)."""
    return admin_of(request[PRINCIPAL], doing)
