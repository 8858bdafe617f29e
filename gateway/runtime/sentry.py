"""Optional Sentry reporting (`pip install 'lrs-gateway[sentry]'`); nothing imported unless on."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.config.settings import SentryConfig
from gateway.errors import ConfigError

__all__ = ["setup_sentry"]

_HEALTH_PATHS = ("/__heartbeat__", "/__lbheartbeat__", "/metrics")


def setup_sentry(config: SentryConfig) -> bool:
    """Start Sentry when a DSN is configured; whether it was started."""
    if config.dsn is None:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.aiohttp import AioHttpIntegration
    except ImportError:
        raise ConfigError(
            "sentry.dsn: set, but sentry-sdk is not installed (pip install 'lrs-gateway[sentry]')"
        ) from None

    def traces_sampler(context: dict[str, Any]) -> float:
        request = context.get("aiohttp_request")
        path = getattr(request, "path", "")
        if config.ignore_health_checks and path in _HEALTH_PATHS:
            return 0.0
        return config.traces_sample_rate

    from sentry_sdk.utils import BadDsn

    try:
        sentry_sdk.init(
            dsn=config.dsn.reveal(),
            environment=config.environment,
            release=f"lrs-gateway@{__version__}",
            traces_sampler=traces_sampler,
            send_default_pii=False,  # no Authorization headers, cookies or user IPs
            integrations=[AioHttpIntegration()],
        )
    except BadDsn:
        raise ConfigError("sentry.dsn: not a valid Sentry DSN (not shown)") from None
    return True
