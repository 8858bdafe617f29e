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
from gateway.xapi.scopes import KNOWN_SCOPES

__all__ = [
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
    "OidcConfig",
    "OutboxConfig",
    "RateLimitConfig",
    "SentryConfig",
    "ServerConfig",
    "StorageConfig",
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
# Ours, though not settings: never "looks like ours but is misspelt".
OTHER_VARIABLES = frozenset({CONFIG_PATH_ENV, *FORWARDINGS_ENV})
# What a version in the configuration may be: the xAPI versions there are (1.0.x, 2.0.0).
XAPI_VERSIONS = ("1.0", "1.0.0", "1.0.1", "1.0.2", "1.0.3", "2.0", "2.0.0")
VALIDATION_MODES = ("strict", "basic")
AVAILABLE_BACKENDS = ("basic", "oidc", "callback", "token")
OIDC_AGENTS = ("account", "openid", "group")
SIGNED_STATEMENT_POLICIES = ("stamp", "verbatim")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_FORBIDDEN_OIDC_ALGORITHMS = ("none", "HS256", "HS384", "HS512")


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
    # strict: every statement property checked against the spec before storage sees it;
    # basic: only what the gateway itself relies on (ids, actor, authority).
    validation: str = "strict"


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
    max_retries: int
    timeout: float  # seconds one delivery may take in all, connecting included
    # Ralph's format always has them; a target reached with a bearer token needs neither.
    basic_username: str | None = None
    basic_password: Secret | None = None
    name: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold API keys
    bearer_token: Secret | None = None
    batch_size: int = 50
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    xapi_version: str = "1.0.3"
    backlog_limit: int = 1_000_000
    connect_timeout: float | None = None  # seconds to connect (default: `timeout`)

    @property
    def label(self) -> str:
        """The name used in metrics, logs and the CLI."""
        if self.name:
            return self.name
        parsed = urlsplit(self.url)
        return re.sub(r"[^A-Za-z0-9_.:-]+", "_", f"{parsed.hostname}:{parsed.port or ''}").strip(
            "_:"
        )


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


# A problem: the keys (dotted paths) whose values are to blame, and the message naming them.
Problem = tuple[tuple[str, ...], str]


def _positive(config: Config) -> list[tuple[str, float]]:
    """The settings that must be greater than 0, by key."""
    return [
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
    ]


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> list[Problem]:
    if value in allowed:
        return []
    return [((key,), f"{key}: one of {', '.join(allowed)} (not {value[:40]!r})")]


def _validate(config: Config) -> list[Problem]:
    """Checks that span more than one value's type; each names its key(s)."""
    problems: list[Problem] = []
    if not config.storage.url.startswith(("http://", "https://")):
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
    if not 0 <= config.server.port <= 65535:
        problems.append((("server.port",), "server.port: must be between 0 and 65535"))
    # Each message starts with its key.
    problems += [((m.partition(":")[0],), m) for m in _validate_cors(config.server.cors)]
    for key, value in _positive(config):
        if value <= 0:
            problems.append(((key,), f"{key}: must be greater than 0"))
    problems += _validate_targets(config.forwardings)
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
    if not 0.0 <= config.sentry.traces_sample_rate <= 1.0:
        problems.append(
            (("sentry.traces_sample_rate",), "sentry.traces_sample_rate: between 0 and 1")
        )
    if config.outbox.synchronous not in ("full", "normal"):
        problems.append((("outbox.synchronous",), "outbox.synchronous: full or normal"))
    problems += _validate_metrics(config.metrics, config.server.port)
    return problems


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
    if auth.oidc.agent not in OIDC_AGENTS:
        problems.append((("auth.oidc.agent",), f"auth.oidc.agent: one of {', '.join(OIDC_AGENTS)}"))
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
    problems += _one_of("xapi.signed_statements", xapi.signed_statements, SIGNED_STATEMENT_POLICIES)
    problems += _one_of("xapi.validation", xapi.validation, VALIDATION_MODES)
    return problems


def _validate_targets(targets: tuple[ForwardingTarget, ...]) -> list[Problem]:
    problems: list[Problem] = []
    labels = [target.label for target in targets]
    for index, target in enumerate(targets):
        where = f"forwardings[{index}] ({target.label})"
        key = f"forwardings[{index}]"

        def add(names: tuple[str, ...], message: str, key: str = key, where: str = where) -> None:
            problems.append((tuple(f"{key}.{name}" for name in names), f"{where}: {message}"))

        if not target.url.startswith(("http://", "https://")):
            add(("url",), "url: must be an http:// or https:// URL")
        if (target.basic_username is None) != (target.basic_password is None):
            add(
                ("basic_username", "basic_password"),
                "basic_username and basic_password go together",
            )
        if target.max_retries < 0:
            add(("max_retries",), "max_retries: must be 0 or more")
        for name, value in (
            ("timeout", target.timeout),
            ("batch_size", target.batch_size),
            ("backoff_base", target.backoff_base),
            ("backoff_cap", target.backoff_cap),
            ("backlog_limit", target.backlog_limit),
            ("connect_timeout", target.connect_timeout),
        ):
            if value is not None and value <= 0:
                add((name,), f"{name}: must be greater than 0")
        if target.xapi_version not in XAPI_VERSIONS:
            add(
                ("xapi_version",),
                f"xapi_version: {target.xapi_version[:20]!r} is not an xAPI "
                "version (1.0.3 or 2.0.0)",
            )
        if labels.count(target.label) > 1:
            add(("name",), "name: two targets share it (set distinct names)")
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
    if metrics.port is not None and not 0 < metrics.port <= 65535:
        problems.append((("metrics.port",), "metrics.port: must be between 1 and 65535"))
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
    if not 0 <= cors.max_age <= 86400:  # browsers keep a preflight a day at most
        problems.append("server.cors.max_age: between 0 and 86400 (seconds)")
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
    settings = {k: v for k, v in environ.items() if not k.startswith(TARGET_ENV_PREFIX)}
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
    config = dataclasses.replace(config, forwardings=targets)
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
        by_name = [
            i
            for i, t in enumerate(targets)
            if isinstance(t, dict)
            and isinstance(t.get("name"), str)
            and _env_key(t["name"]) == which.upper()
        ]
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
        elif key.lower() not in keys:
            errors.append(
                f"environment {name}: unknown setting (a target's keys: "
                f"{', '.join(k.upper() for k in sorted(keys))})"
            )
        else:
            targets[index][key.lower()] = env_value(name, environ[name])
    return targets


def _normalise_targets(
    targets: tuple[ForwardingTarget, ...],
) -> tuple[tuple[ForwardingTarget, ...], list[str]]:
    """A target URL ending in the xAPI base (`/xAPI/`) gets `statements`, with a note."""
    normalised, notes = [], []
    for index, target in enumerate(targets):
        parts = urlsplit(target.url)
        if parts.path.rstrip("/").lower().endswith("/xapi"):
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
    storage = urlsplit(config.storage.url)
    if storage.scheme in ("http", "https") and "xapi" not in storage.path.lower():
        fixed = f"{storage.scheme}://{storage.netloc.rpartition('@')[2]}/xAPI/"
        found.append(
            (
                ("storage.url",),
                "storage.url: its path has no /xAPI/; it must be the "
                f"storage LRS's xAPI base, e.g. {fixed}",
            )
        )
    for index, target in enumerate(config.forwardings):
        path = urlsplit(target.url).path
        if not path.rstrip("/").endswith("/statements"):
            found.append(
                (
                    (f"forwardings[{index}].url",),
                    f"forwardings[{index}] ({target.label}): url: {path or '/'} is not a "
                    "statements endpoint; it must be the target's statements URL, e.g. "
                    "https://lrs2.example.org/xAPI/statements",
                )
            )
    return found
