"""Configuration: frozen dataclasses loaded once from YAML plus `LRS_GATEWAY__SECTION__KEY`."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.configload import build_list, load_dataclass, read_yaml_file
from gateway.errors import ConfigError
from gateway.scopes import KNOWN_SCOPES
from gateway.secret import Secret

__all__ = [
    "AuthConfig",
    "BasicAuthConfig",
    "CallbackConfig",
    "Config",
    "CorsConfig",
    "ForwardingTarget",
    "LimitsConfig",
    "LockoutConfig",
    "MetricsConfig",
    "OidcConfig",
    "OutboxConfig",
    "RateLimitConfig",
    "SentryConfig",
    "ServerConfig",
    "StorageConfig",
    "TokensConfig",
    "XapiConfig",
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
AVAILABLE_BACKENDS = ("basic", "oidc", "callback", "token")
OIDC_AGENTS = ("account", "openid", "group")
SIGNED_STATEMENT_POLICIES = ("stamp", "verbatim")
# Set by the HTTP client itself: from configuration they would make a conflicting copy.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                              "upgrade", "te", "trailer", "expect", "keep-alive"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_FORBIDDEN_OIDC_ALGORITHMS = ("none", "HS256", "HS384", "HS512")


@dataclass(frozen=True)
class CorsConfig:
    """CORS answered by the gateway itself; off (preflights go to storage) with no origins.

    `allow_origins`: exact origins (`https://lms.example.org`), or `"*"` (never with
    `allow_credentials`).
    """

    allow_origins: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ("Authorization", "Content-Type",
                                      "X-Experience-API-Version", "If-Match", "If-None-Match")
    expose_headers: tuple[str, ...] = ("ETag", "Last-Modified",
                                       "X-Experience-API-Consistent-Through",
                                       "X-Experience-API-Version")
    max_age: int = 600  # seconds a browser may keep a preflight's answer
    allow_credentials: bool = False

    @property
    def enabled(self) -> bool:
        """Whether the gateway answers CORS itself."""
        return bool(self.allow_origins)


@dataclass(frozen=True)
class ServerConfig:
    """Where the gateway listens and how it presents itself."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    shutdown_timeout: float = 30.0
    max_body_size: int = 10 * 1024 * 1024
    access_log: bool = True  # one line per request; measured in bench/ at ~20% of a request
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); `serve --workers` overrides
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
    signed_statements: str = "stamp"


@dataclass(frozen=True)
class BasicAuthConfig:
    """HTTP Basic against a credentials file (Ralph JSON or Rustici `user:secret:role` lines)."""

    credentials_file: str = "auth.json"
    cache_max_size: int = 100
    cache_ttl: float = 3600.0
    reload_interval: float = 2.0
    account_homepage: str = "https://lrs-gateway.example.org/accounts"


@dataclass(frozen=True)
class OidcConfig:
    """OpenID Connect bearer tokens: discovery, JWKS, claim checks, the agent they map to."""

    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    leeway: float = 30.0
    agent: str = "account"  # account {iss, sub} | openid "<iss>/<sub>" | group (SQL LRS)
    refresh_interval: float = 3600.0  # seconds between discovery/JWKS refreshes
    unknown_kid_interval: float = 5.0  # at most one JWKS refetch per this, for unknown kids
    timeout: float = 5.0


@dataclass(frozen=True)
class CallbackConfig:
    """Rustici-style auth callback: Basic credentials checked by POSTing them to a URL."""

    url: str | None = None
    timeout: float = 5.0
    cache_max_size: int = 1000
    cache_seconds_success: float = 600.0
    cache_seconds_failure: float = 10.0
    account_homepage: str = "https://lrs-gateway.example.org/accounts"


@dataclass(frozen=True)
class TokensConfig:
    """Short-lived tokens the gateway signs itself (HS256 secret or EdDSA private key)."""

    secret: Secret | None = None
    private_key_file: str | None = None
    issuer: str = "lrs-gateway"
    max_lifetime: float = 3600.0


@dataclass(frozen=True)
class AuthConfig:
    """Which schemes are on, and their settings."""

    backends: tuple[str, ...] = ("basic",)
    scope_prefix: str = ""
    basic: BasicAuthConfig = field(default_factory=BasicAuthConfig)
    oidc: OidcConfig = field(default_factory=OidcConfig)
    callback: CallbackConfig = field(default_factory=CallbackConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)


@dataclass(frozen=True)
class StorageConfig:
    """The storage LRS: its answer is the client's answer."""

    url: str = "http://127.0.0.1:8100/xAPI/"
    basic_username: str | None = None
    basic_password: Secret | None = None
    timeout: float = 10.0
    connect_timeout: float = 3.0
    max_connections: int = 100
    # /__heartbeat__'s own request to storage: well below an orchestrator's probe timeout
    # (Kubernetes: a few seconds), whatever `timeout` client requests may take.
    probe_timeout: float = 2.0


@dataclass(frozen=True)
class ForwardingTarget:
    """A forwarding LRS in Ralph's RALPH_XAPI_FORWARDINGS format, plus optional extras."""

    is_active: bool
    url: str  # the target's statements endpoint, e.g. https://lrs2.example.org/xAPI/statements
    basic_username: str | None
    basic_password: Secret | None
    max_retries: int
    timeout: float
    name: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold API keys
    bearer_token: Secret | None = None
    batch_size: int = 50
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    xapi_version: str = "1.0.3"
    backlog_limit: int = 1_000_000

    @property
    def label(self) -> str:
        """The name used in metrics, logs and the CLI."""
        if self.name:
            return self.name
        parsed = urlsplit(self.url)
        return re.sub(r"[^A-Za-z0-9_.:-]+", "_", f"{parsed.hostname}:{parsed.port or ''}").strip(
            "_:")


@dataclass(frozen=True)
class OutboxConfig:
    """The durable forwarding outbox (SQLite in data_dir)."""

    # full: an fsync per group commit; normal: survives a crash of the process, not of the
    # machine.
    synchronous: str = "full"
    resolve_pending_after: float = 30.0  # seconds before an unresolved write is checked


@dataclass(frozen=True)
class LimitsConfig:
    """Sizes and times that keep one client from taking more than its share."""

    max_batch_statements: int = 1000
    max_header_size: int = 8190
    max_headers: int = 100
    max_upstream_response: int = 64 * 1024 * 1024  # answers the gateway reads to rewrite
    keepalive_timeout: float = 75.0
    header_timeout: float = 10.0  # a new connection's request headers must arrive by then
    upstream_queue_timeout: float = 5.0  # wait for a free storage connection, then 503


@dataclass(frozen=True)
class RateLimitConfig:
    """Token buckets per client address and per authenticated caller (429 past them)."""

    enabled: bool = True
    per_ip_rate: float = 500.0
    per_ip_burst: int = 1000
    per_principal_rate: float = 250.0
    per_principal_burst: int = 500
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    max_tracked: int = 100_000


@dataclass(frozen=True)
class LockoutConfig:
    """Failed Basic logins per username and per address: past the limit, 429 without bcrypt."""

    enabled: bool = True
    max_failures: int = 10
    window: float = 300.0
    block: float = 300.0
    max_tracked: int = 100_000
    tarpit: float = 1.0  # seconds before answering a locked-out or overflowing login


@dataclass(frozen=True)
class SentryConfig:
    """Error and performance reporting to Sentry (the optional `sentry` extra)."""

    dsn: Secret | None = None
    environment: str | None = None
    traces_sample_rate: float = 0.0
    ignore_health_checks: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition."""

    enabled: bool = True
    path: str = "/metrics"
    port: int | None = None  # serve /metrics on this port only (not with the public API)
    host: str | None = None  # for that port; default: server.host
    scope: str | None = None  # e.g. "admin": then /metrics needs credentials holding it


@dataclass(frozen=True)
class Config:
    """The whole configuration, loaded once."""

    server: ServerConfig = field(default_factory=ServerConfig)
    xapi: XapiConfig = field(default_factory=XapiConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    forwardings: tuple[ForwardingTarget, ...] = ()
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    data_dir: str = "./data"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sentry: SentryConfig = field(default_factory=SentryConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    base_dir: str = field(default=".", metadata={"internal": True})

    def resolve_path(self, value: str) -> Path:
        """Resolve a path from the config relative to the config file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path


_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")


def _validate(config: Config) -> list[str]:
    """Checks that span more than one value's type; returns messages naming the key."""
    problems: list[str] = []
    if not config.storage.url.startswith(("http://", "https://")):
        problems.append("storage.url: must be an http:// or https:// URL")
    if (config.storage.basic_username is None) != (config.storage.basic_password is None):
        problems.append("storage: basic_username and basic_password go together")
    auth = config.auth
    for name in auth.backends:
        if name not in AVAILABLE_BACKENDS:
            problems.append(f"auth.backends: unknown backend {name!r} "
                            f"(known: {', '.join(AVAILABLE_BACKENDS)})")
    if not auth.backends:
        problems.append("auth.backends: at least one backend is needed")
    if len(set(auth.backends)) != len(auth.backends):
        problems.append("auth.backends: a backend is listed twice")
    if "oidc" in auth.backends:
        if not auth.oidc.issuer:
            problems.append("auth.oidc.issuer: needed when the oidc backend is on")
        bad = [a for a in auth.oidc.algorithms if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            problems.append(f"auth.oidc.algorithms: {', '.join(bad)} never verify OIDC tokens")
        if not auth.oidc.algorithms:
            problems.append("auth.oidc.algorithms: at least one algorithm is needed")
    if auth.oidc.agent not in OIDC_AGENTS:
        problems.append(f"auth.oidc.agent: one of {', '.join(OIDC_AGENTS)}")
    if "callback" in auth.backends and not auth.callback.url:
        problems.append("auth.callback.url: needed when the callback backend is on")
    if "token" in auth.backends:
        tokens = auth.tokens
        if (tokens.secret is None) == (tokens.private_key_file is None):
            problems.append("auth.tokens: set exactly one of secret (HS256) and "
                            "private_key_file (EdDSA)")
        elif tokens.secret is not None and len(tokens.secret.reveal().encode()) < 32:
            problems.append("auth.tokens.secret: must be at least 32 bytes")
    for version in config.xapi.versions:
        if not _VERSION.match(version):
            problems.append(f"xapi.versions: {version!r} is not a version like 1.0.3")
    if not config.xapi.versions:
        problems.append("xapi.versions: at least one version is needed")
    if config.xapi.signed_statements not in SIGNED_STATEMENT_POLICIES:
        problems.append(f"xapi.signed_statements: one of {', '.join(SIGNED_STATEMENT_POLICIES)}")
    if not 0 <= config.server.port <= 65535:
        problems.append("server.port: must be between 0 and 65535")
    problems += _validate_cors(config.server.cors)
    for key, value in (
        ("storage.timeout", config.storage.timeout),
        ("storage.connect_timeout", config.storage.connect_timeout),
        ("storage.probe_timeout", config.storage.probe_timeout),
        ("auth.basic.cache_ttl", config.auth.basic.cache_ttl),
        ("auth.basic.reload_interval", config.auth.basic.reload_interval),
        ("server.max_body_size", config.server.max_body_size),
        ("server.workers", config.server.workers),
        ("storage.max_connections", config.storage.max_connections),
        ("auth.basic.cache_max_size", config.auth.basic.cache_max_size),
        ("auth.oidc.refresh_interval", config.auth.oidc.refresh_interval),
        ("auth.oidc.timeout", config.auth.oidc.timeout),
        ("auth.callback.timeout", config.auth.callback.timeout),
        ("auth.callback.cache_max_size", config.auth.callback.cache_max_size),
        ("auth.tokens.max_lifetime", config.auth.tokens.max_lifetime),
        ("outbox.resolve_pending_after", config.outbox.resolve_pending_after),
        ("limits.max_batch_statements", config.limits.max_batch_statements),
        ("limits.max_header_size", config.limits.max_header_size),
        ("limits.max_headers", config.limits.max_headers),
        ("limits.max_upstream_response", config.limits.max_upstream_response),
        ("limits.keepalive_timeout", config.limits.keepalive_timeout),
        ("limits.header_timeout", config.limits.header_timeout),
        ("limits.upstream_queue_timeout", config.limits.upstream_queue_timeout),
        ("rate_limit.per_ip_rate", config.rate_limit.per_ip_rate),
        ("rate_limit.per_ip_burst", config.rate_limit.per_ip_burst),
        ("rate_limit.per_principal_rate", config.rate_limit.per_principal_rate),
        ("rate_limit.per_principal_burst", config.rate_limit.per_principal_burst),
        ("lockout.max_failures", config.lockout.max_failures),
        ("lockout.window", config.lockout.window),
        ("lockout.block", config.lockout.block),
    ):
        if value <= 0:
            problems.append(f"{key}: must be greater than 0")
    labels = [target.label for target in config.forwardings]
    for index, target in enumerate(config.forwardings):
        where = f"forwardings[{index}] ({target.label})"
        if not target.url.startswith(("http://", "https://")):
            problems.append(f"{where}: url: must be an http:// or https:// URL")
        if (target.basic_username is None) != (target.basic_password is None):
            problems.append(f"{where}: basic_username and basic_password go together")
        if target.max_retries < 0:
            problems.append(f"{where}: max_retries: must be 0 or more")
        for key, value in (("timeout", target.timeout), ("batch_size", target.batch_size),
                           ("backoff_base", target.backoff_base),
                           ("backoff_cap", target.backoff_cap),
                           ("backlog_limit", target.backlog_limit)):
            if value <= 0:
                problems.append(f"{where}: {key}: must be greater than 0")
        if labels.count(target.label) > 1:
            problems.append(f"{where}: name: two targets share it (set distinct names)")
        for name, header_value in target.headers.items():
            if (_HEADER_NAME.fullmatch(name) is None or name.lower() in RESERVED_HEADERS
                    or any(c in header_value for c in "\r\n\0")):
                # Only the name: the value may be an API key.
                problems.append(f"{where}: headers: {name[:40]!r} is not a header that can "
                                "be set here")
    for cidr in config.rate_limit.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(f"rate_limit.trusted_proxies: {cidr!r} is not an address or CIDR")
    if not 0.0 <= config.sentry.traces_sample_rate <= 1.0:
        problems.append("sentry.traces_sample_rate: between 0 and 1")
    if config.outbox.synchronous not in ("full", "normal"):
        problems.append("outbox.synchronous: full or normal")
    if config.metrics.port is not None and not 0 < config.metrics.port <= 65535:
        problems.append("metrics.port: must be between 1 and 65535")
    if config.metrics.port is not None and config.metrics.port == config.server.port:
        problems.append("metrics.port: must differ from server.port")
    if config.metrics.scope is not None and config.metrics.scope not in KNOWN_SCOPES:
        problems.append(f"metrics.scope: {config.metrics.scope!r} is not a known scope")
    if config.metrics.enabled and not config.metrics.path.startswith("/"):
        problems.append("metrics.path: must start with /")
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
            problems.append(f"server.cors.allow_origins: {origin[:60]!r} is not an origin "
                            "like https://lms.example.org (no path, no trailing slash)")
    if "*" in cors.allow_origins and cors.allow_credentials:
        problems.append('server.cors.allow_credentials: cannot be true with allow_origins "*" '
                        "(list the origins instead)")
    for key, names in (("allow_headers", cors.allow_headers),
                       ("expose_headers", cors.expose_headers)):
        for name in names:
            if _HEADER_NAME.fullmatch(name) is None:
                problems.append(f"server.cors.{key}: {name[:40]!r} is not a header name")
    if not 0 <= cors.max_age <= 86400:  # browsers keep a preflight a day at most
        problems.append("server.cors.max_age: between 0 and 86400 (seconds)")
    return problems


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    """`--config`, else `LRS_GATEWAY_CONFIG`, else ./config.yaml."""
    return Path(cli_path or environ.get(CONFIG_PATH_ENV) or "config.yaml")


def load_config(path: Path, environ: Mapping[str, str]) -> Config:
    """Read YAML at `path`, apply environment overrides, validate; raise ConfigError."""
    raw = read_yaml_file(path)
    raw = {key: value for key, value in raw.items()}
    if "base_dir" in raw:
        raise ConfigError(f"{path}: base_dir: unknown key")
    raw["base_dir"] = str(path.resolve().parent)
    targets_raw: Any = raw.pop("forwardings", None) or []
    targets_source = str(path)
    for variable in FORWARDINGS_ENV:
        if variable in environ:
            targets_source = f"environment {variable}"
            try:
                targets_raw = json.loads(environ[variable])
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{targets_source}: not valid JSON ({exc.msg})") from None
            break
    environ = {**{ours: environ[theirs] for theirs, ours in RALPH_SENTRY_ENV.items()
                  if theirs in environ and ours not in environ}, **environ}
    config = load_dataclass(Config, raw, source=str(path), environ=environ, env_prefix=ENV_PREFIX)
    problems: list[str] = []
    targets = build_list(ForwardingTarget, targets_raw, "forwardings", targets_source, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    config = dataclasses.replace(config, forwardings=targets)
    problems = _validate(config)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    return config
