"""Configuration: frozen dataclasses loaded once from YAML plus `LRS_GATEWAY__SECTION__KEY`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.configload import load_dataclass, read_yaml_file
from gateway.errors import ConfigError
from gateway.secret import Secret

__all__ = [
    "AuthConfig",
    "BasicAuthConfig",
    "CallbackConfig",
    "Config",
    "MetricsConfig",
    "OidcConfig",
    "ServerConfig",
    "StorageConfig",
    "TokensConfig",
    "XapiConfig",
    "load_config",
    "resolve_config_path",
]

ENV_PREFIX = "LRS_GATEWAY__"
CONFIG_PATH_ENV = "LRS_GATEWAY_CONFIG"
AVAILABLE_BACKENDS = ("basic", "oidc", "callback", "token")
OIDC_AGENTS = ("account", "openid", "group")
_FORBIDDEN_OIDC_ALGORITHMS = ("none", "HS256", "HS384", "HS512")


@dataclass(frozen=True)
class ServerConfig:
    """Where the gateway listens and how it presents itself."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    shutdown_timeout: float = 30.0
    max_body_size: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class XapiConfig:
    """xAPI versions accepted; `1.0.3` accepts every 1.0.x, `2.0.0` every 2.0.x."""

    versions: tuple[str, ...] = ("1.0.3", "2.0.0")


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


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition."""

    enabled: bool = True
    path: str = "/metrics"


@dataclass(frozen=True)
class Config:
    """The whole configuration, loaded once."""

    server: ServerConfig = field(default_factory=ServerConfig)
    xapi: XapiConfig = field(default_factory=XapiConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    forwardings: tuple[()] = ()
    data_dir: str = "./data"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
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
    if not 0 <= config.server.port <= 65535:
        problems.append("server.port: must be between 0 and 65535")
    for key, value in (
        ("storage.timeout", config.storage.timeout),
        ("storage.connect_timeout", config.storage.connect_timeout),
        ("auth.basic.cache_ttl", config.auth.basic.cache_ttl),
        ("auth.basic.reload_interval", config.auth.basic.reload_interval),
        ("server.max_body_size", config.server.max_body_size),
        ("storage.max_connections", config.storage.max_connections),
        ("auth.basic.cache_max_size", config.auth.basic.cache_max_size),
        ("auth.oidc.refresh_interval", config.auth.oidc.refresh_interval),
        ("auth.oidc.timeout", config.auth.oidc.timeout),
        ("auth.callback.timeout", config.auth.callback.timeout),
        ("auth.callback.cache_max_size", config.auth.callback.cache_max_size),
        ("auth.tokens.max_lifetime", config.auth.tokens.max_lifetime),
    ):
        if value <= 0:
            problems.append(f"{key}: must be greater than 0")
    if config.metrics.enabled and not config.metrics.path.startswith("/"):
        problems.append("metrics.path: must start with /")
    return problems


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    """`--config`, else `LRS_GATEWAY_CONFIG`, else ./config.yaml."""
    return Path(cli_path or environ.get(CONFIG_PATH_ENV) or "config.yaml")


def load_config(path: Path, environ: Mapping[str, str]) -> Config:
    """Read YAML at `path`, apply environment overrides, validate; raise ConfigError."""
    raw = read_yaml_file(path)
    raw = {key: value for key, value in raw.items()}
    if raw.get("forwardings"):
        raise ConfigError(
            f"{path}: forwardings: forwarding to other LRSes is not available in this "
            "version yet; remove the targets (the list must be empty)"
        )
    raw.pop("forwardings", None)
    if "base_dir" in raw:
        raise ConfigError(f"{path}: base_dir: unknown key")
    raw["base_dir"] = str(path.resolve().parent)
    config = load_dataclass(Config, raw, source=str(path), environ=environ, env_prefix=ENV_PREFIX)
    problems = _validate(config)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    return config
