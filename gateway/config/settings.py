"""Configuration: frozen dataclasses loaded once from YAML plus `LRS_GATEWAY__SECTION__KEY`."""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from gateway.config.constraints import (
    Problem,
    at_least,
    between,
    declared_problems,
    one_of,
    positive,
)
from gateway.config.loader import (
    build_dataclass,
    build_list,
    env_value,
    parse_yaml,
    read_yaml_text,
    suggest_variable,
    yaml_lines,
)
from gateway.errors import ConfigError
from gateway.headers import RESERVED_HEADERS
from gateway.secret import Secret
from gateway.xapi.filters import FilterError, StatementFilter
from gateway.xapi.scopes import KNOWN_SCOPES

__all__ = [
    "DEFAULT_TENANT",
    "AdminUiConfig",
    "AuthConfig",
    "BasicAuthConfig",
    "CallbackConfig",
    "Config",
    "ConfigReport",
    "CorsConfig",
    "ForwardingTarget",
    "LimitsConfig",
    "LockoutConfig",
    "MetricsConfig",
    "OAuthConfig",
    "OidcConfig",
    "OutboxConfig",
    "PseudonymiseConfig",
    "RateLimitConfig",
    "SentryConfig",
    "ServerConfig",
    "StorageConfig",
    "StoreConfig",
    "TokensConfig",
    "XapiConfig",
    "inspect_config",
    "load_config",
    "resolve_config_path",
]

ENV_PREFIX = "LRS_GATEWAY__"
CONFIG_PATH_ENV = "LRS_GATEWAY_CONFIG"
# Ralph's Sentry variables, honoured when ours are not set.
RALPH_SENTRY_ENV = {
    "RALPH_SENTRY_DSN": "LRS_GATEWAY__SENTRY__DSN",
    "RALPH_EXECUTION_ENVIRONMENT": "LRS_GATEWAY__SENTRY__ENVIRONMENT",
    "RALPH_SENTRY_LRS_TRACES_SAMPLE_RATE": "LRS_GATEWAY__SENTRY__TRACES_SAMPLE_RATE",
    "RALPH_SENTRY_IGNORE_HEALTH_CHECKS": "LRS_GATEWAY__SENTRY__IGNORE_HEALTH_CHECKS",
}
# JSON lists of targets; Ralph's own variable is accepted unchanged.
FORWARDINGS_ENV = ("LRS_GATEWAY_XAPI_FORWARDINGS", "RALPH_XAPI_FORWARDINGS")
# Per target, by name or index: LRS_GATEWAY__FORWARDINGS__ANALYTICS__BASIC_PASSWORD.
TARGET_ENV_PREFIX = ENV_PREFIX + "FORWARDINGS__"
_TARGET_SECTIONS = frozenset({"pseudonymise"})  # a target's keys that hold keys of their own
TENANT_ENV_PREFIX = ENV_PREFIX + "TENANTS__"
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
DEFAULT_TENANT = "default"  # what the top-level storage and forwardings are called
# Ours, though not settings: never "looks like ours but is misspelt".
OTHER_VARIABLES = frozenset({CONFIG_PATH_ENV, *FORWARDINGS_ENV})
# What a version in the configuration may be: the xAPI versions there are (1.0.x, 2.0.0).
XAPI_VERSIONS = ("1.0", "1.0.0", "1.0.1", "1.0.2", "1.0.3", "2.0", "2.0.0")
VALIDATION_MODES = ("strict", "basic")
AVAILABLE_BACKENDS = ("basic", "oidc", "callback", "token", "oauth")
OIDC_AGENTS = ("account", "openid", "group")
SIGNED_STATEMENT_POLICIES = ("stamp", "verbatim")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_FORBIDDEN_OIDC_ALGORITHMS = ("none", "HS256", "HS384", "HS512")


def _split(url: str) -> SplitResult | None:
    """`url` split, or None where it cannot be (`http://1[27.0.0.1/`, a port of `99999`)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return None
    return parts


def _is_http_url(url: str) -> bool:
    parts = _split(url)
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class CorsConfig:
    """CORS answered by the gateway itself; off (preflights go to storage) with no origins.

    `allow_origins`: exact origins (`https://lms.example.org`), or `"*"` (never with
    `allow_credentials`).
    """

    allow_origins: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = (
        "Authorization",
        "Content-Type",
        "X-Experience-API-Version",
        "If-Match",
        "If-None-Match",
    )
    expose_headers: tuple[str, ...] = (
        "ETag",
        "Last-Modified",
        "X-Experience-API-Consistent-Through",
        "X-Experience-API-Version",
    )
    # Seconds a browser may keep a preflight's answer; browsers keep one a day at most.
    max_age: int = field(
        default=600, metadata=between(0, 86400, message="between 0 and 86400 (seconds)")
    )
    allow_credentials: bool = False

    @property
    def enabled(self) -> bool:
        """Whether the gateway answers CORS itself."""
        return bool(self.allow_origins)


@dataclass(frozen=True)
class ServerConfig:
    """Where the gateway listens and how it presents itself."""

    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=between(0, 65535))
    public_url: str | None = None
    shutdown_timeout: float = 30.0
    max_body_size: int = field(default=10 * 1024 * 1024, metadata=positive())
    access_log: bool = True  # one line per request; measured in bench/ at ~20% of a request
    # Processes sharing the port (SO_REUSEPORT); `serve --workers` overrides.
    workers: int = field(default=1, metadata=positive())
    cors: CorsConfig = field(default_factory=CorsConfig)


@dataclass(frozen=True)
class XapiConfig:
    """xAPI versions accepted (`1.0.3` takes every 1.0.x, `2.0.0` every 2.0.x); signed statements.

    `signed_statements`: `stamp` gives signed statements an id, a timestamp and the caller as
    `authority` like any other (the spec has the LRS ignore those in its signature check);
    `verbatim` passes them unchanged, for LRSes that compare the JWS payload strictly
    (Learning Locker): they must then carry their own id and the caller as `authority`.
    """

    versions: tuple[str, ...] = ("1.0.3", "2.0.0")
    signed_statements: str = field(default="stamp", metadata=one_of(SIGNED_STATEMENT_POLICIES))
    # strict: every statement property checked against the spec before storage sees it;
    # basic: only what the gateway itself relies on (ids, actor, authority).
    validation: str = field(default="strict", metadata=one_of(VALIDATION_MODES))


@dataclass(frozen=True)
class BasicAuthConfig:
    """HTTP Basic against a credentials file (Ralph JSON or Rustici `user:secret:role` lines)."""

    credentials_file: str = "auth.json"
    cache_max_size: int = field(default=100, metadata=positive())
    cache_ttl: float = field(default=3600.0, metadata=positive())
    reload_interval: float = field(default=2.0, metadata=positive())
    account_homepage: str = "https://lrs-gateway.example.org/accounts"


@dataclass(frozen=True)
class OidcConfig:
    """OpenID Connect bearer tokens: discovery, JWKS, claim checks, the agent they map to."""

    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    leeway: float = 30.0
    # account {iss, sub} | openid "<iss>/<sub>" | group (SQL LRS)
    agent: str = field(
        default="account", metadata=one_of(OIDC_AGENTS, message=f"one of {', '.join(OIDC_AGENTS)}")
    )
    # Seconds between discovery/JWKS refreshes.
    refresh_interval: float = field(default=3600.0, metadata=positive())
    unknown_kid_interval: float = 5.0  # at most one JWKS refetch per this, for unknown kids
    timeout: float = field(default=5.0, metadata=positive())
    # The web admin's single sign-on: a public client (Authorization Code + PKCE) that
    # redirects back to /admin/callback. Unset: the admin login form only.
    admin_client_id: str | None = None
    # Who is admin: the access token's `admin` scope (prefix applied), unless this names
    # an ID token claim; then that claim must equal admin_claim_value (or list it).
    admin_claim: str | None = None
    # The access token claim that names the caller's tenant (tenants:); without the claim
    # in a token, the default tenant. A name no tenant has is refused (403).
    tenant_claim: str | None = None
    admin_claim_value: str = "admin"
    # More scopes to ask for at login (e.g. the one that releases admin_claim: "groups").
    admin_scopes: tuple[str, ...] = ()
    # Where the provider sends people back; default: this gateway's origin as the browser
    # reached it + /admin/callback. Set it behind a proxy that rewrites Host.
    admin_redirect_uri: str | None = None


@dataclass(frozen=True)
class CallbackConfig:
    """Rustici-style auth callback: Basic credentials checked by POSTing them to a URL."""

    url: str | None = None
    timeout: float = field(default=5.0, metadata=positive())
    cache_max_size: int = field(default=1000, metadata=positive())
    cache_seconds_success: float = 600.0
    cache_seconds_failure: float = 10.0
    account_homepage: str = "https://lrs-gateway.example.org/accounts"


@dataclass(frozen=True)
class TokensConfig:
    """Short-lived tokens the gateway signs itself (HS256 secret or EdDSA private key)."""

    secret: Secret | None = None
    private_key_file: str | None = None
    issuer: str = "lrs-gateway"
    max_lifetime: float = field(default=3600.0, metadata=positive())
    # A token restricted to an activity may also touch its sub-activities: IRIs that go on
    # from it after a / ? or # (https://x.org/course/1 covers https://x.org/course/1/quiz).
    sub_activities: bool = True


@dataclass(frozen=True)
class OAuthConfig:
    """Two-legged OAuth 1.0a for xAPI 1.0.x clients (consumers in the credential database)."""

    # Seals consumer secrets in the database (it must read them back to check signatures):
    # a random string of 32 bytes or more, the same on every replica.
    encryption_key: Secret | None = None
    # How far a request's oauth_timestamp may be from the gateway's clock; nonces are
    # remembered this long.
    timestamp_window: float = field(default=300.0, metadata=positive())


@dataclass(frozen=True)
class AuthConfig:
    """Which schemes are on, and their settings."""

    backends: tuple[str, ...] = ("basic",)
    scope_prefix: str = ""
    basic: BasicAuthConfig = field(default_factory=BasicAuthConfig)
    oidc: OidcConfig = field(default_factory=OidcConfig)
    callback: CallbackConfig = field(default_factory=CallbackConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    oauth: OAuthConfig = field(default_factory=OAuthConfig)


@dataclass(frozen=True)
class StorageConfig:
    """The storage LRS: its answer is the client's answer."""

    url: str = "http://127.0.0.1:8100/xAPI/"
    basic_username: str | None = None
    basic_password: Secret | None = None
    timeout: float = field(default=10.0, metadata=positive())
    connect_timeout: float = field(default=3.0, metadata=positive())
    max_connections: int = field(default=100, metadata=positive())
    # /__heartbeat__'s own request to storage: well below an orchestrator's probe timeout
    # (Kubernetes: a few seconds), whatever `timeout` client requests may take.
    probe_timeout: float = field(default=2.0, metadata=positive())


@dataclass(frozen=True)
class PseudonymiseConfig:
    """A target's copies with every agent pseudonymised (off without a key).

    See gateway.xapi.pseudonyms.
    """

    key: Secret | None = None  # 32+ bytes; from the environment (…__PSEUDONYMISE__KEY)
    homepage: str = "https://pseudonyms.example.org"  # the accounts' homePage
    signed: str = "strip"  # a signed statement: strip its signature, or skip it


@dataclass(frozen=True)
class ForwardingTarget:
    """A forwarding LRS in Ralph's RALPH_XAPI_FORWARDINGS format, plus optional extras."""

    is_active: bool
    url: str  # the target's statements endpoint, e.g. https://lrs2.example.org/xAPI/statements
    max_retries: int = field(metadata=at_least(0))
    # Seconds one delivery may take in all, connecting included.
    timeout: float = field(metadata=positive())
    # Ralph's format always has them; a target reached with a bearer token needs neither.
    basic_username: str | None = None
    basic_password: Secret | None = None
    name: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold API keys
    bearer_token: Secret | None = None
    batch_size: int = field(default=50, metadata=positive())
    backoff_base: float = field(default=0.5, metadata=positive())
    backoff_cap: float = field(default=60.0, metadata=positive())
    xapi_version: str = "1.0.3"
    backlog_limit: int = field(default=1_000_000, metadata=positive())
    # Seconds to connect (default: `timeout`).
    connect_timeout: float | None = field(default=None, metadata=positive())
    # Which statements it gets (gateway.xapi.filters): none, every statement.
    filter: Mapping[str, Any] | None = None
    pseudonymise: PseudonymiseConfig = field(default_factory=PseudonymiseConfig)

    @property
    def label(self) -> str:
        """The name used in metrics, logs and the CLI."""
        if self.name:
            return self.name
        parsed = _split(self.url)
        where = self.url if parsed is None else f"{parsed.hostname}:{parsed.port or ''}"
        return re.sub(r"[^A-Za-z0-9_.:-]+", "_", where).strip("_:")


@dataclass(frozen=True)
class OutboxConfig:
    """The durable forwarding outbox (SQLite in data_dir)."""

    # full: an fsync per group commit; normal: survives a crash of the process, not of the
    # machine.
    synchronous: str = field(
        default="full", metadata=one_of(("full", "normal"), message="full or normal")
    )
    # Seconds before an unresolved write is checked.
    resolve_pending_after: float = field(default=30.0, metadata=positive())


@dataclass(frozen=True)
class LimitsConfig:
    """Sizes and times that keep one client from taking more than its share."""

    max_batch_statements: int = field(default=1000, metadata=positive())
    max_header_size: int = field(default=8190, metadata=positive())
    max_headers: int = field(default=100, metadata=positive())
    # Answers the gateway reads to rewrite.
    max_upstream_response: int = field(default=64 * 1024 * 1024, metadata=positive())
    keepalive_timeout: float = field(default=75.0, metadata=positive())
    # A new connection's request headers must arrive by then.
    header_timeout: float = field(default=10.0, metadata=positive())
    # Wait for a free storage connection, then 503.
    upstream_queue_timeout: float = field(default=5.0, metadata=positive())
    # Rate limits and lockouts counted in Redis by every replica together
    # (redis://host:6379/0, rediss:// for TLS); unset: each process counts alone. Out of
    # reprs: a URL may carry a password (better: LRS_GATEWAY__LIMITS__SHARED_PASSWORD).
    shared_url: str | None = field(default=None, repr=False)
    shared_password: Secret | None = None
    # Seconds a Redis call may take; beyond it (or on any failure) each process counts
    # alone, and tries Redis again after shared_retry_interval.
    shared_timeout: float = field(default=0.25, metadata=positive())
    shared_retry_interval: float = field(default=5.0, metadata=positive())
    shared_key_prefix: str = "lrs-gateway:"


@dataclass(frozen=True)
class RateLimitConfig:
    """Token buckets per client address and per authenticated caller (429 past them)."""

    enabled: bool = True
    per_ip_rate: float = field(default=500.0, metadata=positive())
    per_ip_burst: int = field(default=1000, metadata=positive())
    per_principal_rate: float = field(default=250.0, metadata=positive())
    per_principal_burst: int = field(default=500, metadata=positive())
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    max_tracked: int = 100_000


@dataclass(frozen=True)
class LockoutConfig:
    """Failed Basic logins per username and per address: past the limit, 429 without bcrypt."""

    enabled: bool = True
    max_failures: int = field(default=10, metadata=positive())
    window: float = field(default=300.0, metadata=positive())
    block: float = field(default=300.0, metadata=positive())
    max_tracked: int = 100_000
    tarpit: float = 1.0  # seconds before answering a locked-out or overflowing login


@dataclass(frozen=True)
class SentryConfig:
    """Error and performance reporting to Sentry (the optional `sentry` extra)."""

    dsn: Secret | None = None
    environment: str | None = None
    traces_sample_rate: float = field(
        default=0.0, metadata=between(0, 1, message="between 0 and 1")
    )
    ignore_health_checks: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition."""

    enabled: bool = True
    path: str = "/metrics"
    # Serve /metrics on this port only (not with the public API).
    port: int | None = field(default=None, metadata=between(1, 65535))
    host: str | None = None  # for that port; default: server.host
    scope: str | None = None  # e.g. "admin": then /metrics needs credentials holding it


@dataclass(frozen=True)
class AdminUiConfig:
    """The web admin at /admin/: sessions for people (the API takes a credential per call)."""

    enabled: bool = True
    # Secure cookies only reach the gateway over https; false to try it on local http.
    secure_cookie: bool = True
    idle_timeout: float = field(default=1800.0, metadata=positive())  # seconds without a page
    absolute_timeout: float = field(default=28800.0, metadata=positive())  # from the login


STORE_MIGRATE_MODES = ("auto", "manual")
STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


@dataclass(frozen=True)
class StoreConfig:
    """The control plane's database: credentials and their audit."""

    # sqlite:///path (relative to the config file; sqlite:////abs/path); default:
    # gateway.sqlite3 in data_dir, shared by every worker process. Or
    # postgresql://user@host:5432/db?sslmode=verify-full: one database for every replica.
    # Out of reprs: a URL may carry a password (better: LRS_GATEWAY__STORE__PASSWORD).
    url: str | None = field(default=None, repr=False)
    password: Secret | None = None  # PostgreSQL's, when the URL does not carry it
    # auto: migrate the schema at start; manual: refuse to start on an old schema
    # (run `lrs-gateway store migrate` first).
    migrate: str = field(default="auto", metadata=one_of(STORE_MIGRATE_MODES))
    timeout: float = field(default=5.0, metadata=positive())  # connect and each query
    # Seconds between checks for another process's change: how soon it reaches this one.
    poll_interval: float = field(default=1.0, metadata=positive())
    # PostgreSQL: seconds a replica's claim on a batch of deliveries lasts (renewed while it
    # works on it). A replica that dies holds its batch this long; then another sends it.
    lease: float = field(default=30.0, metadata=positive())


@dataclass(frozen=True)
class TenantConfig:
    """A tenant: its own storage LRS and forwarding targets, for the credentials in it.

    The top-level `storage` and `forwardings` are the default tenant's (credentials with
    no tenant), so a configuration without `tenants` works as it always did.
    """

    name: str
    storage: StorageConfig
    forwardings: tuple[ForwardingTarget, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole configuration, loaded once."""

    server: ServerConfig = field(default_factory=ServerConfig)
    xapi: XapiConfig = field(default_factory=XapiConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    forwardings: tuple[ForwardingTarget, ...] = ()
    tenants: tuple[TenantConfig, ...] = ()
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    data_dir: str = "./data"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sentry: SentryConfig = field(default_factory=SentryConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    admin_ui: AdminUiConfig = field(default_factory=AdminUiConfig)
    base_dir: str = field(default=".", metadata={"internal": True})

    def tenant(self, name: str) -> Config:
        """The configuration as tenant `name` sees it: its storage, targets and outbox.

        Its outboxes live in data_dir/tenants/NAME (PostgreSQL's rows carry the name).
        """
        (found,) = [t for t in self.tenants if t.name == name]
        return dataclasses.replace(
            self,
            storage=found.storage,
            forwardings=found.forwardings,
            tenants=(),
            data_dir=str(Path(self.data_dir) / "tenants" / name),
        )

    def resolve_path(self, value: str) -> Path:
        """Resolve a path from the config relative to the config file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path


def _validate(config: Config) -> list[Problem]:
    """Every problem with the values, each naming its key(s).

    First the checks written here (values that must agree, lists, formats), then the
    constraints declared on the fields (gateway.config.constraints).
    """
    problems: list[Problem] = []
    if config.store.url is not None and not config.store.url.startswith(STORE_SCHEMES):
        problems.append(
            (
                ("store.url",),
                "store.url: must be sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE",
            )
        )
    if config.limits.shared_url is not None and not config.limits.shared_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        problems.append(
            (("limits.shared_url",), "limits.shared_url: must be redis://HOST:PORT/DB or rediss://")
        )
    if not config.storage.url.startswith(("http://", "https://")) or not _is_http_url(
        config.storage.url
    ):
        problems.append((("storage.url",), "storage.url: must be an http:// or https:// URL"))
    if (config.storage.basic_username is None) != (config.storage.basic_password is None):
        problems.append(
            (
                ("storage.basic_username", "storage.basic_password"),
                "storage: basic_username and basic_password go together",
            )
        )
    problems += _validate_auth(config.auth)
    problems += _validate_xapi(config.xapi)
    # Each message starts with its key.
    problems += [((m.partition(":")[0],), m) for m in _validate_cors(config.server.cors)]
    problems += _validate_targets(config.forwardings, Path(config.base_dir))
    problems += _validate_tenants(config)
    for cidr in config.rate_limit.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(
                (
                    ("rate_limit.trusted_proxies",),
                    f"rate_limit.trusted_proxies: {cidr[:60]!r} is not an address or CIDR",
                )
            )
    problems += _validate_metrics(config.metrics, config.server.port)
    return problems + declared_problems(config)


def _validate_auth(auth: AuthConfig) -> list[Problem]:
    problems: list[Problem] = []
    backends = ("auth.backends",)
    for name in auth.backends:
        if name not in AVAILABLE_BACKENDS:
            problems.append(
                (
                    backends,
                    f"auth.backends: unknown backend {name!r} "
                    f"(known: {', '.join(AVAILABLE_BACKENDS)})",
                )
            )
    if not auth.backends:
        problems.append((backends, "auth.backends: at least one backend is needed"))
    if len(set(auth.backends)) != len(auth.backends):
        problems.append((backends, "auth.backends: a backend is listed twice"))
    if "oidc" in auth.backends:
        if not auth.oidc.issuer:
            problems.append(
                (
                    (*backends, "auth.oidc.issuer"),
                    "auth.oidc.issuer: needed when the oidc backend is on",
                )
            )
        bad = [a for a in auth.oidc.algorithms if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            problems.append(
                (
                    ("auth.oidc.algorithms",),
                    f"auth.oidc.algorithms: {', '.join(bad)} never verify OIDC tokens",
                )
            )
        if not auth.oidc.algorithms:
            problems.append(
                (
                    ("auth.oidc.algorithms",),
                    "auth.oidc.algorithms: at least one algorithm is needed",
                )
            )
    if "callback" in auth.backends and not auth.callback.url:
        problems.append(
            (
                (*backends, "auth.callback.url"),
                "auth.callback.url: needed when the callback backend is on",
            )
        )
    if "token" in auth.backends:
        tokens = auth.tokens
        if (tokens.secret is None) == (tokens.private_key_file is None):
            problems.append(
                (
                    (*backends, "auth.tokens.secret", "auth.tokens.private_key_file"),
                    "auth.tokens: set exactly one of secret (HS256) and private_key_file (EdDSA)",
                )
            )
        elif tokens.secret is not None and len(tokens.secret.reveal().encode()) < 32:
            problems.append(
                (("auth.tokens.secret",), "auth.tokens.secret: must be at least 32 bytes")
            )
    if "oauth" in auth.backends:
        problems += _validate_oauth(auth)
    return problems


def _validate_oauth(auth: AuthConfig) -> list[Problem]:
    problems: list[Problem] = []
    key = auth.oauth.encryption_key
    if key is None or len(key.reveal().encode()) < 32:
        problems.append(
            (
                ("auth.backends", "auth.oauth.encryption_key"),
                "auth.oauth.encryption_key: needed when the oauth backend is on, 32 bytes or "
                "more (e.g. `openssl rand -base64 32`; the same on every replica)",
            )
        )
    if "basic" not in auth.backends:
        problems.append(
            (
                ("auth.backends",),
                "auth.backends: oauth needs basic too (OAuth consumers live in the credential "
                "database, which the basic backend opens)",
            )
        )
    if importlib.util.find_spec("oauthlib") is None:
        problems.append(
            (
                ("auth.backends",),
                "auth.backends: oauth needs oauthlib: pip install 'lrs-gateway[oauth1]'",
            )
        )
    return problems


def _validate_xapi(xapi: XapiConfig) -> list[Problem]:
    problems: list[Problem] = []
    for version in xapi.versions:
        if version not in XAPI_VERSIONS:
            problems.append(
                (
                    ("xapi.versions",),
                    f"xapi.versions: {version[:20]!r} is not an "
                    "xAPI version (1.0.3 takes every 1.0.x, 2.0.0 is xAPI 2.0)",
                )
            )
    if not xapi.versions:
        problems.append((("xapi.versions",), "xapi.versions: at least one version is needed"))
    return problems


def _validate_tenants(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    names = [tenant.name for tenant in config.tenants]
    labels = [t.label for t in config.forwardings]
    for index, tenant in enumerate(config.tenants):
        key = f"tenants[{index}]"
        if TENANT_NAME.fullmatch(tenant.name) is None:
            problems.append(
                (
                    (f"{key}.name",),
                    f"{key}.name: {tenant.name[:40]!r}: lower-case letters, digits, - and _ "
                    "(at most 63, a letter or digit first)",
                )
            )
        if tenant.name == DEFAULT_TENANT:
            problems.append(
                (
                    (f"{key}.name",),
                    f"{key}.name: {DEFAULT_TENANT!r} names the top-level storage and "
                    "forwardings (metrics, the admin API and tokens call it so): pick another",
                )
            )
        if names.count(tenant.name) > 1:
            problems.append(((f"{key}.name",), f"{key}.name: {tenant.name!r} is there twice"))
        storage = tenant.storage
        if not storage.url.startswith(("http://", "https://")) or not _is_http_url(storage.url):
            problems.append(
                ((f"{key}.storage.url",), f"{key}.storage.url: must be an http(s):// URL")
            )
        if (storage.basic_username is None) != (storage.basic_password is None):
            problems.append(
                (
                    (f"{key}.storage.basic_username", f"{key}.storage.basic_password"),
                    f"{key}.storage: basic_username and basic_password go together",
                )
            )
        for message_keys, message in _validate_targets(tenant.forwardings, Path(config.base_dir)):
            problems.append(
                (tuple(f"{key}.{k}" for k in message_keys), f"{key} ({tenant.name}): {message}")
            )
        for target in tenant.forwardings:
            if target.label in labels:
                problems.append(
                    (
                        (f"{key}.forwardings",),
                        f"{key} ({tenant.name}): forwarding target {target.label!r}: the "
                        "name is taken (target names are one namespace: metrics and the "
                        "CLI name them alone)",
                    )
                )
            labels.append(target.label)
    return problems


def _validate_targets(targets: tuple[ForwardingTarget, ...], base: Path) -> list[Problem]:
    problems: list[Problem] = []
    labels = [target.label for target in targets]
    for index, target in enumerate(targets):
        where = f"forwardings[{index}] ({target.label})"
        key = f"forwardings[{index}]"

        def add(names: tuple[str, ...], message: str, key: str = key, where: str = where) -> None:
            problems.append((tuple(f"{key}.{name}" for name in names), f"{where}: {message}"))

        if not target.url.startswith(("http://", "https://")) or not _is_http_url(target.url):
            add(("url",), "url: must be an http:// or https:// URL")
        if (target.basic_username is None) != (target.basic_password is None):
            add(
                ("basic_username", "basic_password"),
                "basic_username and basic_password go together",
            )
        if target.xapi_version not in XAPI_VERSIONS:
            add(
                ("xapi_version",),
                f"xapi_version: {target.xapi_version[:20]!r} is not an xAPI "
                "version (1.0.3 or 2.0.0)",
            )
        if labels.count(target.label) > 1:
            add(("name",), "name: two targets share it (set distinct names)")
        if target.filter is not None:
            try:
                StatementFilter.compile(target.filter, base)
            except FilterError as exc:
                add(("filter",), str(exc))
        pseudonymise = target.pseudonymise
        if pseudonymise.key is not None and len(pseudonymise.key.reveal().encode()) < 32:
            add(("pseudonymise.key",), "pseudonymise.key: 32 bytes or more")
        if pseudonymise.key is not None and not _is_http_url(pseudonymise.homepage):
            add(("pseudonymise.homepage",), "pseudonymise.homepage: an http(s):// URL")
        if pseudonymise.signed not in ("strip", "skip"):
            add(("pseudonymise.signed",), "pseudonymise.signed: strip or skip")
        for name, header_value in target.headers.items():
            if (
                _HEADER_NAME.fullmatch(name) is None
                or name.lower() in RESERVED_HEADERS
                or any(c in header_value for c in "\r\n\0")
            ):
                # Only the name: the value may be an API key.
                add(("headers",), f"headers: {name[:40]!r} is not a header that can be set here")
    return problems


def _validate_metrics(metrics: MetricsConfig, server_port: int) -> list[Problem]:
    problems: list[Problem] = []
    if metrics.port is not None and metrics.port == server_port:
        problems.append(
            (("metrics.port", "server.port"), "metrics.port: must differ from server.port")
        )
    if metrics.scope is not None and metrics.scope not in KNOWN_SCOPES:
        problems.append(
            (("metrics.scope",), f"metrics.scope: {metrics.scope[:40]!r} is not a known scope")
        )
    if metrics.enabled and not metrics.path.startswith("/"):
        problems.append((("metrics.path",), "metrics.path: must start with /"))
    return problems


# A serialized origin as browsers send it: scheme://host[:port], no path, no trailing slash.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s]+")


def _validate_cors(cors: CorsConfig) -> list[str]:
    """server.cors: origins a browser can send, header names, `*` without credentials."""
    problems: list[str] = []
    for origin in cors.allow_origins:
        if origin == "null":
            # Sandboxed frames and file:// pages all send `null`: allowing it allows them all.
            problems.append("server.cors.allow_origins: 'null' cannot be allowed")
        elif origin != "*" and _ORIGIN.fullmatch(origin.lower()) is None:
            problems.append(
                f"server.cors.allow_origins: {origin[:60]!r} is not an origin "
                "like https://lms.example.org (no path, no trailing slash)"
            )
    if "*" in cors.allow_origins and cors.allow_credentials:
        problems.append(
            'server.cors.allow_credentials: cannot be true with allow_origins "*" '
            "(list the origins instead)"
        )
    for key, names in (
        ("allow_headers", cors.allow_headers),
        ("expose_headers", cors.expose_headers),
    ):
        for name in names:
            if _HEADER_NAME.fullmatch(name) is None:
                problems.append(f"server.cors.{key}: {name[:40]!r} is not a header name")
    return problems


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    """`--config`, else `LRS_GATEWAY_CONFIG`, else ./config.yaml."""
    return Path(cli_path or environ.get(CONFIG_PATH_ENV) or "config.yaml")


@dataclass(frozen=True)
class ConfigReport:
    """What loading found: the configuration (None if unusable), problems, where values came from.

    `errors` stop the gateway; `warnings` are probably mistakes; `notes` say what was
    adjusted. Each names the file or the environment variable to fix. `origins` maps a
    dotted key (`storage.url`, `forwardings[0].url`) to `environment VAR` or `FILE:LINE`;
    a key absent from it has its default.
    """

    config: Config | None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    origins: Mapping[str, str] = field(default_factory=dict)


def inspect_config(path: Path, environ: Mapping[str, str]) -> ConfigReport:
    """Read YAML at `path`, apply environment overrides, validate; report every problem."""
    try:
        text = read_yaml_text(path)
        raw = dict(parse_yaml(text, path))
    except ConfigError as exc:
        return ConfigReport(None, errors=(str(exc),))
    errors: list[str] = []
    warnings = [
        f"environment {name}: not a setting (ignored); did you mean {meant}?"
        for name, meant in lookalike_variables(environ)
    ]
    if "base_dir" in raw:
        errors.append(f"{path}: base_dir: unknown key")
        del raw["base_dir"]
    raw["base_dir"] = str(path.resolve().parent)
    origins = {key: f"{path}:{line}" for key, line in yaml_lines(text).items()}
    targets_raw: Any = raw.pop("forwardings", None) or []
    targets_source = str(path)
    for variable in FORWARDINGS_ENV:
        if variable in environ:
            targets_source = f"environment {variable}"
            origins["forwardings"] = targets_source
            try:
                targets_raw = json.loads(environ[variable])
            except json.JSONDecodeError as exc:
                errors.append(f"{targets_source}: not valid JSON ({exc.msg})")
                targets_raw = []
            break
    environ = {
        **{
            ours: environ[theirs]
            for theirs, ours in RALPH_SENTRY_ENV.items()
            if theirs in environ and ours not in environ
        },
        **environ,
    }
    targets_raw = _target_overrides(targets_raw, environ, errors)
    if "tenants" in raw:
        raw["tenants"] = _tenant_overrides(raw["tenants"], environ, errors)
    settings = {
        k: v for k, v in environ.items() if not k.startswith((TARGET_ENV_PREFIX, TENANT_ENV_PREFIX))
    }
    from_env: dict[str, str] = {}
    config = build_dataclass(
        Config,
        raw,
        source=str(path),
        environ=settings,
        env_prefix=ENV_PREFIX,
        problems=errors,
        origins=from_env,
    )
    targets = build_list(
        ForwardingTarget, targets_raw, "forwardings", targets_source, errors, from_env
    )
    if config is None:  # every section has defaults: only a bug gets here
        return ConfigReport(None, errors=tuple(errors), warnings=tuple(warnings))
    targets, notes = _normalise_targets(targets)
    tenants = []
    for tenant in config.tenants:
        their_targets, their_notes = _normalise_targets(tenant.forwardings)
        tenants.append(dataclasses.replace(tenant, forwardings=their_targets))
        notes += [f"tenants ({tenant.name}): {note}" for note in their_notes]
    config = dataclasses.replace(config, forwardings=targets, tenants=tuple(tenants))
    if targets_source != str(path):  # the whole list from a JSON variable
        for index in range(len(targets)):
            from_env.setdefault(f"forwardings[{index}]", targets_source)
    origins.update(from_env)
    blame = _Blame(str(path), from_env)
    errors += [blame(keys, message) for keys, message in _validate(config)]
    warnings += [blame(keys, message) for keys, message in _warnings(config)]
    return ConfigReport(config, tuple(errors), tuple(warnings), tuple(notes), origins)


def load_config(path: Path, environ: Mapping[str, str]) -> Config:
    """Read YAML at `path`, apply environment overrides, validate; raise ConfigError."""
    report = inspect_config(path, environ)
    if report.errors or report.config is None:
        raise ConfigError("\n".join(report.errors))
    return report.config


class _Blame:
    """Prefixes a problem with where its value came from: the variable(s), else the file."""

    def __init__(self, path: str, from_env: Mapping[str, str]) -> None:
        self._path = path
        self._from_env = from_env

    def _origin(self, key: str) -> str | None:
        while True:  # forwardings[0].url, else forwardings[0] (a whole target from JSON)
            if key in self._from_env:
                return self._from_env[key]
            shorter = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", key)
            if shorter == key:
                return None
            key = shorter

    def __call__(self, keys: tuple[str, ...], message: str) -> str:
        variables = list(dict.fromkeys(o for o in map(self._origin, keys) if o is not None))
        return f"{', '.join(variables) or self._path}: {message}"


def lookalike_variables(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, the setting's real variable) for names that look like ours but are not.

    `LRS_GATEWAY_STORAGE_URL` sets nothing: settings take two underscores between parts.
    """
    found = []
    for name in sorted(environ):
        if (
            not name.upper().startswith("LRS_GATEWAY")
            or name in OTHER_VARIABLES
            or name.startswith(ENV_PREFIX)
        ):
            continue  # ENV_PREFIX names are settings, or errors that say so
        meant = suggest_variable(name, Config, ENV_PREFIX)
        if meant is not None:
            found.append((name, meant))
    return found


def _env_key(name: str) -> str:
    """A target name as it can be written in a variable: upper case, `_` for the rest."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def _named(items: list[Any], which: str) -> list[int]:
    """Where the items named `which` (as a variable spells a name) are in a list."""
    return [
        index
        for index, item in enumerate(items)
        if isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and _env_key(item["name"]) == which.upper()
    ]


def _target_overrides(targets: Any, environ: Mapping[str, str], errors: list[str]) -> Any:
    """Targets with `LRS_GATEWAY__FORWARDINGS__<name or index>__<KEY>` applied."""
    if not isinstance(targets, list):
        return targets  # refused when built
    targets = [dict(t) if isinstance(t, Mapping) else t for t in targets]
    keys = {f.name for f in dataclasses.fields(ForwardingTarget)}
    for name in sorted(environ):
        if not name.startswith(TARGET_ENV_PREFIX):
            continue
        which, _, key = name[len(TARGET_ENV_PREFIX) :].partition("__")
        by_name = _named(targets, which)
        index = (
            by_name[0]
            if len(by_name) == 1
            else (int(which) if which.isdigit() and int(which) < len(targets) else None)
        )
        if index is None or not isinstance(targets[index], dict):
            named = ", ".join(
                _env_key(t["name"])
                for t in targets
                if isinstance(t, dict) and isinstance(t.get("name"), str)
            )
            errors.append(
                f"environment {name}: no forwarding target named or numbered "
                f"{which!r} (targets: {named or 'none with a name'}; or 0 to "
                f"{len(targets) - 1})"
                if targets
                else f"environment {name}: no forwarding targets are configured"
            )
        elif key.lower().partition("__")[0] not in keys or (
            "__" in key and key.lower().partition("__")[0] not in _TARGET_SECTIONS
        ):
            errors.append(
                f"environment {name}: unknown setting (a target's keys: "
                f"{', '.join(k.upper() for k in sorted(keys))})"
            )
        elif "__" in key and key.lower().partition("__")[0] in _TARGET_SECTIONS:
            # A section's key: …__PSEUDONYMISE__KEY
            section, _, inner = key.lower().partition("__")
            current = targets[index].get(section)
            merged = dict(current) if isinstance(current, Mapping) else {}
            merged[inner] = env_value(name, environ[name])
            targets[index][section] = merged
        else:
            targets[index][key.lower()] = env_value(name, environ[name])
    return targets


def _tenant_overrides(tenants: Any, environ: Mapping[str, str], errors: list[str]) -> Any:
    """Tenants with their variables applied (secrets stay out of the file).

    `LRS_GATEWAY__TENANTS__<NAME>__STORAGE__<KEY>` and
    `LRS_GATEWAY__TENANTS__<NAME>__FORWARDINGS__<target>__<KEY>`.
    """
    if not isinstance(tenants, list):
        return tenants  # refused when built
    tenants = [dict(t) if isinstance(t, Mapping) else t for t in tenants]
    storage_keys = {f.name for f in dataclasses.fields(StorageConfig)}
    for name in sorted(environ):
        if not name.startswith(TENANT_ENV_PREFIX):
            continue
        which, _, rest = name[len(TENANT_ENV_PREFIX) :].partition("__")
        found = [tenants[i] for i in _named(tenants, which)]
        section, _, key = rest.partition("__")
        if len(found) != 1:
            errors.append(f"environment {name}: no tenant named {which!r}")
        elif section == "STORAGE" and key.lower() in storage_keys:
            storage = found[0].get("storage")
            storage = dict(storage) if isinstance(storage, Mapping) else {}
            storage[key.lower()] = env_value(name, environ[name])
            found[0]["storage"] = storage
        elif section == "FORWARDINGS" and key:
            found[0]["forwardings"] = _target_overrides(
                found[0].get("forwardings") or [],
                {TARGET_ENV_PREFIX + key: environ[name]},
                errors,
            )
        else:
            errors.append(
                f"environment {name}: unknown setting (a tenant's: STORAGE__<KEY>, "
                "FORWARDINGS__<target>__<KEY>)"
            )
    return tenants


def _normalise_targets(
    targets: tuple[ForwardingTarget, ...],
) -> tuple[tuple[ForwardingTarget, ...], list[str]]:
    """A target URL ending in the xAPI base (`/xAPI/`) gets `statements`, with a note."""
    normalised, notes = [], []
    for index, target in enumerate(targets):
        parts = _split(target.url)
        if parts is not None and parts.path.rstrip("/").lower().endswith("/xapi"):
            path = parts.path.rstrip("/") + "/statements"
            target = dataclasses.replace(target, url=parts._replace(path=path).geturl())
            notes.append(
                f"forwardings[{index}] ({target.label}): url is an xAPI base; "
                f"statements go to {path}"
            )
        normalised.append(target)
    return tuple(normalised), notes


def _warnings(config: Config) -> list[Problem]:
    """Values that are valid but probably wrong, each with its fix."""
    found: list[Problem] = []
    storage = _split(config.storage.url)
    if (
        storage is not None
        and storage.scheme in ("http", "https")
        and "xapi" not in storage.path.lower()
    ):
        fixed = f"{storage.scheme}://{storage.netloc.rpartition('@')[2]}/xAPI/"
        found.append(
            (
                ("storage.url",),
                "storage.url: its path has no /xAPI/; it must be the "
                f"storage LRS's xAPI base, e.g. {fixed}",
            )
        )
    for index, target in enumerate(config.forwardings):
        parts = _split(target.url)
        path = "" if parts is None else parts.path
        if parts is not None and not path.rstrip("/").endswith("/statements"):
            found.append(
                (
                    (f"forwardings[{index}].url",),
                    f"forwardings[{index}] ({target.label}): url: {path or '/'} is not a "
                    "statements endpoint; it must be the target's statements URL, e.g. "
                    "https://lrs2.example.org/xAPI/statements",
                )
            )
        if target.connect_timeout is not None and target.connect_timeout > target.timeout:
            found.append(
                (
                    (f"forwardings[{index}].connect_timeout",),
                    f"forwardings[{index}] ({target.label}): connect_timeout: "
                    f"{target.connect_timeout:g} s is longer than timeout ({target.timeout:g} "
                    "s), which a delivery takes in all: connecting gets at most timeout",
                )
            )
    lease = config.store.lease
    shared = (config.store.url or "").startswith(("postgresql://", "postgres://"))
    for index, target in enumerate(config.forwardings):
        if shared and target.is_active and lease < 2 * target.timeout:
            found.append(
                (
                    ("store.lease", f"forwardings[{index}].timeout"),
                    f"store.lease: {lease:g} s is less than twice forwardings[{index}] "
                    f"({target.label}).timeout ({target.timeout:g} s): a claim could end "
                    "while a send is still on its way, and another replica send it too",
                )
            )
    pending, storage_timeout = config.outbox.resolve_pending_after, config.storage.timeout
    if any(t.is_active for t in config.forwardings) and pending <= storage_timeout:
        found.append(
            (
                ("outbox.resolve_pending_after", "storage.timeout"),
                f"outbox.resolve_pending_after: {pending:g} s is not longer than "
                f"storage.timeout ({storage_timeout:g} s): storage may still store a write "
                "the gateway gave up on after the resolver found it missing, and forwarding "
                "would then never send it; keep it well above storage.timeout",
            )
        )
    waiting = storage_timeout + config.limits.upstream_queue_timeout
    if (
        shared
        and any(t.is_active for t in config.forwardings)
        and storage_timeout < pending <= waiting
    ):
        found.append(
            (
                (
                    "outbox.resolve_pending_after",
                    "storage.timeout",
                    "limits.upstream_queue_timeout",
                ),
                f"outbox.resolve_pending_after: {pending:g} s is not longer than a write "
                f"may wait for storage ({storage_timeout:g} s storage.timeout + "
                f"{config.limits.upstream_queue_timeout:g} s limits.upstream_queue_timeout): "
                "with a shared outbox, another replica could settle a write that is still "
                "on its way",
            )
        )
    return found
