"""Every typed key for state kept on the app or on a request, in one place.

The types are named for the type checker only: importing the keys loads nothing else, so
any module of the app can import them without pulling in what the keys hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.auth.base import Authenticator
    from gateway.auth.oauth1 import ConsumerSecrets
    from gateway.auth.oidc_login import AuthorizationCodeLogin
    from gateway.auth.passwords import PasswordChecker
    from gateway.auth.principal import Principal
    from gateway.auth.sources import CredentialSources
    from gateway.auth.tokens import TokenSigner
    from gateway.clock import Clock
    from gateway.config.settings import Config
    from gateway.forwarding.forwarder import Forwarder
    from gateway.http.abuse_guard import Admission, Guard
    from gateway.http.admin_ui.activity import Activity
    from gateway.http.admin_ui.pages import AdminUi
    from gateway.http.cors import CorsPolicy
    from gateway.http.metrics import Metrics
    from gateway.http.readiness import Readiness
    from gateway.http.requestids import RequestIds
    from gateway.http.storage_about import StorageAbout
    from gateway.runtime.workers import WorkerRole
    from gateway.upstream.storage import StorageClient
    from gateway.xapi.versions import VersionPolicy

__all__ = [
    "ACTIVITY",
    "ADMIN_UI",
    "ADMISSION",
    "ALTERNATE_BODY",
    "AUTHENTICATOR",
    "CLOCK",
    "CONFIG",
    "CONSUMER_SECRETS",
    "CORS",
    "CREDENTIAL_SOURCES",
    "FORWARDER",
    "FORWARDERS",
    "GUARD",
    "METRICS",
    "OIDC_LOGIN",
    "PASSWORDS",
    "PRINCIPAL",
    "READINESS",
    "REQUEST_ID",
    "REQUEST_IDS",
    "STORAGE",
    "STORAGES",
    "STORAGE_ABOUT",
    "TOKEN_SIGNER",
    "VERSIONS",
    "WORKER",
]

CONFIG: web.AppKey[Config] = web.AppKey("config")
# The app's time (the system's; a ManualClock in tests): caches, limits, forwarding read it.
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")
TOKEN_SIGNER: web.AppKey[TokenSigner] = web.AppKey("token_signer")
PASSWORDS: web.AppKey[PasswordChecker] = web.AppKey("passwords")
# Present when the basic backend is on: the credentials file over the credential database.
CREDENTIAL_SOURCES: web.AppKey[CredentialSources] = web.AppKey("credential_sources")
# With the oauth backend: seals the consumer secrets the admin API stores.
CONSUMER_SECRETS: web.AppKey[ConsumerSecrets] = web.AppKey("consumer_secrets")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")
WORKER: web.AppKey[WorkerRole] = web.AppKey("worker")
GUARD: web.AppKey[Guard] = web.AppKey("guard")
REQUEST_IDS: web.AppKey[RequestIds] = web.AppKey("request_ids")
STORAGE: web.AppKey[StorageClient] = web.AppKey("storage")
# Every tenant's storage, the default tenant's under None (separate pools and slots).
STORAGES: web.AppKey[dict[str | None, StorageClient]] = web.AppKey("storages")
# The forwarders of the tenants with active targets, the default tenant's under None.
FORWARDERS: web.AppKey[dict[str | None, Forwarder]] = web.AppKey("forwarders")
STORAGE_ABOUT: web.AppKey[StorageAbout] = web.AppKey("storage_about")
VERSIONS: web.AppKey[VersionPolicy] = web.AppKey("versions")
# Present only when server.cors lists origins: the gateway then answers CORS itself.
CORS: web.AppKey[CorsPolicy] = web.AppKey("cors")
# Present when the web admin is on (basic auth and admin_ui.enabled).
ADMIN_UI: web.AppKey[AdminUi] = web.AppKey("admin_ui")
# With the web admin: the gateway's request and auth rates for the overview.
ACTIVITY: web.AppKey[Activity] = web.AppKey("activity")
# Present when auth.oidc.admin_client_id is set: the web admin's single sign-on.
OIDC_LOGIN: web.AppKey[AuthorizationCodeLogin] = web.AppKey("oidc_login")
# The readiness checker, whose last report the background loop keeps for the gauge.
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
# With limits in Redis: what the request's first round trip learnt (gateway.http.abuse_guard).
ADMISSION: web.RequestKey[Admission] = web.RequestKey("admission")
# The body of a request that came in the alternate syntax (its own stream is spent).
ALTERNATE_BODY = web.RequestKey("alternate_body", bytes)
REQUEST_ID = web.RequestKey("request_id", str)
