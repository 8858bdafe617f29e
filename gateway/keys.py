"""Every typed key for state kept on the app or on a request, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth.base import Authenticator
from gateway.auth.passwords import PasswordChecker
from gateway.auth.tokens import TokenSigner
from gateway.clock import Clock
from gateway.config import Config
from gateway.forwarding.forwarder import Forwarder
from gateway.guard import Guard
from gateway.metrics import Metrics
from gateway.principal import Principal
from gateway.requestids import RequestIds
from gateway.storage_about import StorageAbout
from gateway.upstream import Upstream
from gateway.workers import WorkerRole
from gateway.xapiversion import VersionPolicy

if TYPE_CHECKING:  # gateway.cors reads its key from here: no import back at run time
    from gateway.cors import CorsPolicy

__all__ = [
    "ALTERNATE_BODY", "AUTHENTICATOR", "CLOCK", "CONFIG", "CORS", "FORWARDER", "GUARD", "METRICS",
    "PASSWORDS", "PRINCIPAL", "REQUEST_ID", "REQUEST_IDS", "STORAGE", "STORAGE_ABOUT",
    "TOKEN_SIGNER", "VERSIONS", "WORKER",
]

CONFIG = web.AppKey("config", Config)
# The app's time (the system's; a ManualClock in tests): caches, limits, forwarding read it.
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
TOKEN_SIGNER = web.AppKey("token_signer", TokenSigner)
PASSWORDS = web.AppKey("passwords", PasswordChecker)
METRICS = web.AppKey("metrics", Metrics)
FORWARDER = web.AppKey("forwarder", Forwarder)
WORKER = web.AppKey("worker", WorkerRole)
GUARD = web.AppKey("guard", Guard)
REQUEST_IDS = web.AppKey("request_ids", RequestIds)
STORAGE = web.AppKey("storage", Upstream)
STORAGE_ABOUT = web.AppKey("storage_about", StorageAbout)
VERSIONS = web.AppKey("versions", VersionPolicy)
# Present only when server.cors lists origins: the gateway then answers CORS itself.
CORS: web.AppKey[CorsPolicy] = web.AppKey("cors")

PRINCIPAL = web.RequestKey("principal", Principal)
# The body of a request that came in the alternate syntax (its own stream is spent).
ALTERNATE_BODY = web.RequestKey("alternate_body", bytes)
REQUEST_ID = web.RequestKey("request_id", str)
