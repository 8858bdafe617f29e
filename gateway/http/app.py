"""The application factory: everything is built here, nothing at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.fernet import Fernet
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from gateway.auth.base import AuthBackend, Authenticator
from gateway.auth.basic import BasicBackend
from gateway.auth.callback import CallbackBackend
from gateway.auth.jwks import ProviderKeys
from gateway.auth.oauth1 import ConsumerSecrets, OAuthBackend
from gateway.auth.oidc import OidcBackend
from gateway.auth.oidc_login import AuthorizationCodeLogin
from gateway.auth.passwords import PasswordChecker
from gateway.auth.sources import CredentialSources
from gateway.auth.store import CredentialStore
from gateway.auth.tokens import TokenBackend, TokenSigner
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import Config
from gateway.forwarding.forwarder import OUTBOX_FILE, Forwarder
from gateway.forwarding.metrics import ForwardingCollector, OutboxesCollector
from gateway.http.abuse_guard import Guard
from gateway.http.admin_ui.activity import Activity
from gateway.http.admin_ui.pages import AdminUi
from gateway.http.admin_ui.sessions import SESSION_KEY, SessionKeeper
from gateway.http.alternate import alternate_syntax_middleware
from gateway.http.cors import CorsPolicy, add_cors_headers, cors_middleware
from gateway.http.handlers import operations
from gateway.http.keys import (
    ACTIVITY,
    ADMIN_UI,
    AUTHENTICATOR,
    CLOCK,
    CONFIG,
    CONSUMER_SECRETS,
    CORS,
    CREDENTIAL_SOURCES,
    FORWARDER,
    FORWARDERS,
    GUARD,
    METRICS,
    OIDC_LOGIN,
    PASSWORDS,
    REQUEST_ID,
    REQUEST_IDS,
    STORAGE,
    STORAGE_ABOUT,
    STORAGES,
    TOKEN_SIGNER,
    VERSIONS,
    WORKER,
)
from gateway.http.metrics import (
    Cumulative,
    Metrics,
    auth_figures,
    metrics_middleware,
    multiprocess_ready,
)
from gateway.http.middlewares import (
    auth_middleware,
    error_middleware,
    request_id_middleware,
    throttle_middleware,
)
from gateway.http.readiness import readiness_loop
from gateway.http.requestids import RequestIds
from gateway.http.route_info import XAPI_PREFIX
from gateway.http.routes import setup_routes
from gateway.http.rules_middleware import request_rules_middleware
from gateway.http.storage_about import StorageAbout, storage_about_loop
from gateway.http.tenancy import tenant_label_of
from gateway.runtime.workers import WorkerRole, outbox_dirs, serve_siblings, shared_data_dir
from gateway.store.credentials import CredentialDatabase
from gateway.store.databases import credential_database
from gateway.store.shared_limits import SharedLimits
from gateway.upstream.storage import StorageClient
from gateway.upstream.target import storage_target
from gateway.xapi.versions import VERSION_HEADER, VersionPolicy

CONSISTENT_THROUGH = "X-Experience-API-Consistent-Through"
STATEMENTS_PREFIX = XAPI_PREFIX + "statements"

__all__ = ["create_app"]

log = logging.getLogger(__name__)


async def _storage_session(app: web.Application) -> AsyncIterator[None]:
    """A client per tenant's storage LRS: its own pool and slots (one's outage is its own)."""
    config = app[CONFIG]
    storages: dict[str | None, StorageClient] = {}
    async with contextlib.AsyncExitStack() as stack:
        for tenant, storage_config in [(None, config.storage)] + [
            (t.name, t.storage) for t in config.tenants
        ]:
            connector = aiohttp.TCPConnector(
                limit=storage_config.max_connections, ttl_dns_cache=300
            )
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=connector,
                    auto_decompress=False,
                    skip_auto_headers=("User-Agent",),
                )
            )
            storages[tenant] = StorageClient(
                session,
                storage_target(storage_config, observe=app[METRICS].upstream, tenant=tenant),
                queue_timeout=config.limits.upstream_queue_timeout,
            )
        app[STORAGE] = storages[None]
        app[STORAGES] = storages
        yield
        for storage in storages.values():
            storage.close()


async def _authentication(app: web.Application) -> AsyncIterator[None]:
    """Build the enabled backends in the configured order, with what each one owns."""
    config = app[CONFIG]
    auth = config.auth
    checker = PasswordChecker(observe=app[METRICS].bcrypt.observe)
    app[PASSWORDS] = checker
    background: list[asyncio.Task[None]] = []
    backends: list[AuthBackend] = []
    store: CredentialSources | None = None
    database: CredentialDatabase | None = None
    if "basic" in auth.backends:
        file = CredentialStore(
            config.resolve_path(auth.basic.credentials_file),
            account_homepage=auth.basic.account_homepage,
            scope_prefix=auth.scope_prefix,
            reload_interval=auth.basic.reload_interval,
            tenants=frozenset(t.name for t in config.tenants),
        )
        await file.load()
        database = credential_database(config, _shared_data_dir(app), clock=app[CLOCK])
        await database.open()
        consumer_secrets = None
        if "oauth" in auth.backends:
            assert auth.oauth.encryption_key is not None  # validated
            consumer_secrets = app[CONSUMER_SECRETS] = ConsumerSecrets(auth.oauth.encryption_key)
        store = CredentialSources(
            file,
            database,
            account_homepage=auth.basic.account_homepage,
            poll_interval=config.store.poll_interval,
            clock=app[CLOCK],
            consumer_secrets=consumer_secrets,
        )
        await store.load()
        app[CREDENTIAL_SOURCES] = store
        if config.admin_ui.enabled:
            # In the database: every worker process and replica reads every session.
            key = await database.shared_key(SESSION_KEY, Fernet.generate_key)
            keeper = SessionKeeper(
                key,
                clock=app[CLOCK],
                idle=config.admin_ui.idle_timeout,
                absolute=config.admin_ui.absolute_timeout,
            )
            app[ADMIN_UI] = AdminUi(config.admin_ui, keeper)
        await checker.prepare(store.max_cost)
        background.append(asyncio.create_task(file.watch(), name="credentials"))
        background.append(asyncio.create_task(store.watch(), name="credential-database"))
    # One session for the identity provider and the auth callback, apart from storage's.
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as session:
        for name in auth.backends:
            if name == "basic":
                assert store is not None
                backends.append(
                    BasicBackend(
                        store,
                        checker,
                        cache_max_size=auth.basic.cache_max_size,
                        cache_ttl=auth.basic.cache_ttl,
                    )
                )
            elif name == "oidc":
                assert auth.oidc.issuer is not None
                if auth.oidc.audience is None:
                    log.warning(
                        "auth.oidc.audience is not set: tokens issued by %s for "
                        "any other service will be accepted",
                        auth.oidc.issuer,
                    )
                keys = ProviderKeys(
                    session,
                    auth.oidc.issuer,
                    timeout=auth.oidc.timeout,
                    refresh_interval=auth.oidc.refresh_interval,
                    unknown_kid_interval=auth.oidc.unknown_kid_interval,
                    clock=app[CLOCK],
                )
                background.append(asyncio.create_task(keys.run(), name="oidc-discovery"))
                bearer = OidcBackend(keys, auth.oidc, auth.scope_prefix)
                backends.append(bearer)
                if auth.oidc.admin_client_id is not None and ADMIN_UI in app:
                    app[OIDC_LOGIN] = AuthorizationCodeLogin(
                        session, keys, auth.oidc, bearer, auth.scope_prefix
                    )
            elif name == "callback":
                backends.append(CallbackBackend(session, auth.callback, clock=app[CLOCK]))
            elif name == "token":
                signer = TokenSigner(auth.tokens, Path(config.base_dir))
                app[TOKEN_SIGNER] = signer
                # Tokens of file users are checked against the file as it is now.
                backends.append(TokenBackend(signer, store))
        oauth = None
        if "oauth" in auth.backends:
            assert store is not None  # validated: oauth needs basic, which makes it
            assert database is not None
            oauth = OAuthBackend(
                store.consumer,
                database,
                window=auth.oauth.timestamp_window,
                clock=app[CLOCK],
                refresh_on_miss=store.refresh_on_miss,
                on_used=store.used,
            )
        authenticator = Authenticator(backends, clock=app[CLOCK], oauth=oauth)
        if store is not None:
            store.on_change(authenticator.forget_tokens)
        app[AUTHENTICATOR] = authenticator
        figures = auth_figures(app[METRICS], backends)
        for cumulative in figures:
            app[METRICS].add_cumulative(cumulative)
        yield
        for cumulative in figures:
            app[METRICS].remove_cumulative(cumulative)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    if database is not None:
        await database.close()
    await asyncio.to_thread(checker.close)


def _shared_data_dir(app: web.Application) -> Path:
    """The data_dir every worker process shares (where the default database lives)."""
    config = app[CONFIG]
    data_dir = config.resolve_path(config.data_dir)
    role = app.get(WORKER)
    return shared_data_dir(data_dir, role) if role is not None else data_dir


async def _forwarding(app: web.Application) -> AsyncIterator[None]:
    """The durable fan-out of every tenant with an active forwarding target."""
    config = app[CONFIG]
    versions = app[VERSIONS]
    scoped = [(None, config)] + [(t.name, config.tenant(t.name)) for t in config.tenants]
    forwarders: dict[str | None, Forwarder] = {}
    try:
        for tenant, tenant_config in scoped:
            if any(target.is_active for target in tenant_config.forwardings):
                forwarder = Forwarder(
                    tenant_config,
                    app[STORAGES][tenant],
                    observe=app[METRICS].upstream,
                    clock=app[CLOCK],
                    storage_version=lambda: versions.default,
                    tenant=tenant,
                )
                await forwarder.start()
                forwarders[tenant] = forwarder
    except BaseException:
        for forwarder in forwarders.values():
            await forwarder.stop()
        raise
    if not forwarders:
        yield
        return
    app[FORWARDERS] = forwarders
    if None in forwarders:
        app[FORWARDER] = forwarders[None]  # the default tenant's
    every = list(forwarders.values())
    metrics = app[METRICS]
    failed: Cumulative | None = None
    if metrics.shared and WORKER in app:
        collector: Collector
        if all(forwarder.outbox.shared for forwarder in every):
            # One outbox for all: whichever worker answers reads it whole.
            collector = ForwardingCollector(every, failed=False)
        else:
            # Every worker's outboxes: durable totals that add up, whichever worker answers.
            root = shared_data_dir(config.resolve_path(config.data_dir), app[WORKER])
            tenants = [t.name for t in config.tenants]
            collector = OutboxesCollector(
                lambda: [
                    path
                    for d in outbox_dirs(root)
                    for path in (
                        d / OUTBOX_FILE,
                        *(d / "tenants" / t / OUTBOX_FILE for t in tenants),
                    )
                ],
                [t.label for t in config.forwardings]
                + [t.label for tenant in config.tenants for t in tenant.forwardings],
            )
        failed = Cumulative(
            metrics.forwarding_failed(),
            lambda: {(n,): c for f in every for n, c in f.failed().items()},
        )
        metrics.add_cumulative(failed)
    else:
        collector = ForwardingCollector(every)
    metrics.add_collector(collector)
    yield
    metrics.remove_collector(collector)
    for forwarder in every:
        await forwarder.stop()
    if failed is not None:
        metrics.remove_cumulative(failed)


async def _metrics_site(app: web.Application) -> AsyncIterator[None]:
    """/metrics on its own port, so it need not be exposed with the public API."""
    config = app[CONFIG]
    port = config.metrics.port
    assert port is not None
    metrics_app = web.Application(middlewares=[error_middleware])
    metrics_app[CONFIG] = config
    metrics_app[METRICS] = app[METRICS]
    metrics_app[AUTHENTICATOR] = app[AUTHENTICATOR]
    if WORKER in app:
        metrics_app[WORKER] = app[WORKER]  # so it adds up every worker, as /metrics does
    metrics_app.router.add_get(config.metrics.path, operations.metrics, name="metrics")
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, config.metrics.host or config.server.host, port, reuse_port=WORKER in app
    )
    await site.start()
    yield
    await runner.cleanup()


async def _stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """Stamp every answer (streamed or not, errors too) before its headers go out.

    All carry their request id; every /xAPI/ answer names the xAPI version.
    """
    if REQUEST_ID in request:
        response.headers["X-Request-ID"] = request[REQUEST_ID]
    if request.path.startswith(XAPI_PREFIX) and VERSION_HEADER not in response.headers:
        response.headers[VERSION_HEADER] = request.app[VERSIONS].answer_for(
            request.headers.get(VERSION_HEADER)
        )
    if request.path.startswith(STATEMENTS_PREFIX) and CONSISTENT_THROUGH not in response.headers:
        # Answers the gateway makes itself (errors) still say how current they are.
        response.headers[CONSISTENT_THROUGH] = (
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )


async def _publishing(app: web.Application) -> AsyncIterator[None]:
    """Several workers: this one's cumulative figures published every second."""
    metrics = app[METRICS]
    task = asyncio.create_task(metrics.publishing(), name="metrics-publishing")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    metrics.publish()  # a worker stopping cleanly loses nothing


async def _shared_limits(app: web.Application) -> AsyncIterator[None]:
    """Redis for every replica's limits: its figures while it runs, closed at the end."""
    shared = app[GUARD].shared
    assert shared is not None
    fallbacks = app[METRICS].shared_limits(lambda: shared.up, lambda: shared.fallbacks)
    app[METRICS].add_cumulative(fallbacks)
    yield
    app[METRICS].remove_cumulative(fallbacks)
    await shared.close()


async def _activity(app: web.Application) -> AsyncIterator[None]:
    """The web admin's overview: the gateway's own counters sampled in the background."""
    task = asyncio.create_task(app[ACTIVITY].run(), name="admin-activity")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _sibling_socket(app: web.Application) -> AsyncIterator[None]:
    """Answer the other workers: forwarding status and commands (lift a lockout)."""
    sibling_app = web.Application()
    sibling_app[CONFIG] = app[CONFIG]
    sibling_app[METRICS] = app[METRICS]
    if FORWARDERS in app:
        sibling_app[FORWARDERS] = app[FORWARDERS]
    sibling_app.router.add_get("/forwarding", operations.own_forwarding_status)
    async for _ in serve_siblings(app[WORKER], sibling_app):
        yield


def _metrics(registry: CollectorRegistry, worker: WorkerRole | None) -> Metrics:
    """One process's metrics, or (`serve --workers N`) every worker's through shared files."""
    if worker is None or worker.count < 2:
        return Metrics(registry)
    if not multiprocess_ready(worker.metrics_dir):
        # Started by hand, not by the supervisor (which sets the directory before the
        # interpreter imports prometheus-client): this worker's own figures only.
        log.warning(
            "worker %d: no shared metrics directory (PROMETHEUS_MULTIPROC_DIR from "
            "`serve --workers N`); /metrics shows this worker only",
            worker.index,
        )
        return Metrics(registry)
    return Metrics(registry, shared_dir=worker.metrics_dir, workers=worker.count)


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    worker: WorkerRole | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> web.Application:
    """Build the gateway application for `config`; `registry` defaults to a fresh one.

    `worker`: this process's place among several workers (`serve --workers N`, N > 1).
    `clock`: the time caches, limits and forwarding read (tests pass a ManualClock).
    """
    metrics = _metrics(registry if registry is not None else CollectorRegistry(), worker)
    app = web.Application(
        middlewares=[
            request_id_middleware,  # outermost: it logs the answer the client really got
            metrics_middleware(metrics, tenant_label_of),
            error_middleware,  # whatever happens below becomes a JSON answer
            throttle_middleware,  # per address, before any work for the request
            alternate_syntax_middleware,  # POST ?method=X: the ordinary request from here on
            # server.cors: preflights answered here, before auth (they carry no credentials)
            # and inside error_middleware (a refused origin gets the JSON error).
            cors_middleware,
            auth_middleware,
            # xAPI query parameters and document merges (400): after 401/403, on the
            # ordinary request an alternate-syntax one became, before any handler.
            request_rules_middleware,
        ],
        client_max_size=config.server.max_body_size,
        handler_args={
            "max_field_size": config.limits.max_header_size,
            "max_line_size": config.limits.max_header_size,
            "max_headers": config.limits.max_headers,
            "keepalive_timeout": config.limits.keepalive_timeout,
        },
    )
    app[CONFIG] = config
    app[CLOCK] = clock
    app[METRICS] = metrics
    app[VERSIONS] = VersionPolicy(config.xapi.versions)
    app[STORAGE_ABOUT] = StorageAbout()
    shared_limits = None
    if config.limits.shared_url is not None:
        shared_limits = SharedLimits(
            config.limits.shared_url,
            password=config.limits.shared_password,
            timeout=config.limits.shared_timeout,
            retry_interval=config.limits.shared_retry_interval,
            prefix=config.limits.shared_key_prefix,
            clock=clock,
        )
        app.cleanup_ctx.append(_shared_limits)
    app[GUARD] = Guard(config.rate_limit, config.lockout, clock=clock, shared=shared_limits)
    app[REQUEST_IDS] = RequestIds()
    if worker is not None and worker.count > 1:
        app[WORKER] = worker
    app.cleanup_ctx.append(_storage_session)
    # storage's xAPI versions, learnt before serving (within storage.probe_timeout)
    app.cleanup_ctx.append(storage_about_loop)
    app.cleanup_ctx.append(_authentication)
    app.cleanup_ctx.append(_forwarding)
    app.cleanup_ctx.append(readiness_loop)
    if WORKER in app:
        app.cleanup_ctx.append(_sibling_socket)
    if metrics.shared:
        app.cleanup_ctx.append(_publishing)
    if config.admin_ui.enabled and "basic" in config.auth.backends:
        app[ACTIVITY] = Activity(metrics.activity_totals, clock=clock)
        app.cleanup_ctx.append(_activity)
    app.on_response_prepare.append(_stamp_response)
    if config.server.cors.enabled:
        app[CORS] = CorsPolicy(config.server.cors)
        # At prepare time: errors and streamed answers get their CORS headers too.
        app.on_response_prepare.append(add_cors_headers)
    on_main_port = config.metrics.enabled and config.metrics.port is None
    setup_routes(
        app,
        metrics_path=config.metrics.path if on_main_port else None,
        credentials_api="basic" in config.auth.backends,
        admin_ui=config.admin_ui.enabled,
    )
    if config.metrics.enabled and config.metrics.port is not None:
        app.cleanup_ctx.append(_metrics_site)
    return app
