"""One upstream LRS as the clients see it: storage and every forwarding target alike.

Its name (metrics, logs), how messages call it, its URL, the headers every request to it
carries (the credential among them), the secrets masked in its answers, its connect and
total timeouts, its connection limit and the metrics callback. The configuration is read
here once; the HTTP clients below take a target, never the configuration.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from yarl import URL

from gateway.config.settings import ForwardingTarget, StorageConfig
from gateway.secret import Secret, redact
from gateway.upstream.h1 import H1Pool

__all__ = [
    "Observe",
    "UpstreamTarget",
    "basic_authorization",
    "forwarding_target",
    "status_class",
    "storage_target",
]

Observe: TypeAlias = Callable[[str, str, float], None]  # (target, outcome, seconds)


def status_class(status: int) -> str:
    """`2xx` for 204 and so on: a metric label from a fixed set."""
    return f"{min(max(status // 100, 1), 5)}xx"


def basic_authorization(username: str, password: Secret) -> tuple[str, tuple[str, ...]]:
    """The `Authorization` value for HTTP Basic, and the secrets it holds (to redact)."""
    token = f"{username}:{password.reveal()}"
    return "Basic " + base64.b64encode(token.encode()).decode(), (token, password.reveal())


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Everything a client needs to talk to one upstream LRS, and to speak of it."""

    name: str  # the metric label and log name: "storage", or the target's label
    described: str  # how messages name it: "the storage LRS", "forwarding target lrs2"
    url: URL  # storage: the xAPI base (ends with /); a forwarding target: its statements URL
    connect_timeout: float
    total_timeout: float
    # Storage: requests in flight at once (more wait, then 503) and idle connections kept;
    # a forwarding target (one request at a time): idle connections kept.
    max_connections: int
    headers: Mapping[str, str] = field(repr=False, default_factory=dict)  # credential included
    secrets: tuple[str, ...] = field(repr=False, default=())
    username: str | None = None  # the Basic user, named in logs (the password never is)
    observe: Observe | None = field(repr=False, default=None, compare=False)

    def redact(self, text: str) -> str:
        """`text` (an answer of this LRS) with every secret of this target masked."""
        return redact(text, self.secrets)

    def lean_pool(self, *, max_idle: int | None = None) -> H1Pool:
        """A keep-alive pool of the lean HTTP/1.1 client to this target's origin."""
        return H1Pool(
            self.url.origin(),
            connect_timeout=self.connect_timeout,
            max_idle=self.max_connections if max_idle is None else max_idle,
            peer=self.described,
        )


def storage_target(
    config: StorageConfig, *, observe: Observe | None = None, tenant: str | None = None
) -> UpstreamTarget:
    """The storage LRS of the configuration (of a tenant: named `storage:TENANT`)."""
    headers: dict[str, str] = {}
    secrets: tuple[str, ...] = ()
    if config.basic_username is not None and config.basic_password is not None:
        headers["Authorization"], secrets = basic_authorization(
            config.basic_username, config.basic_password
        )
    return UpstreamTarget(
        name="storage" if tenant is None else f"storage:{tenant}",
        described="the storage LRS" if tenant is None else f"tenant {tenant}'s storage LRS",
        url=URL(config.url if config.url.endswith("/") else config.url + "/"),
        connect_timeout=config.connect_timeout,
        total_timeout=config.timeout,
        max_connections=config.max_connections,
        headers=headers,
        secrets=secrets,
        username=config.basic_username,
        observe=observe,
    )


def forwarding_target(
    config: ForwardingTarget, *, observe: Observe | None = None
) -> UpstreamTarget:
    """A forwarding target of the configuration: its credential, extra headers, version."""
    headers = {
        "Content-Type": "application/json",
        "X-Experience-API-Version": config.xapi_version,
        **config.headers,
    }
    secrets = tuple(config.headers.values())  # API keys live there too
    if config.bearer_token is not None:
        headers["Authorization"] = f"Bearer {config.bearer_token.reveal()}"
        secrets += (config.bearer_token.reveal(),)
    elif config.basic_username is not None and config.basic_password is not None:
        headers["Authorization"], basic = basic_authorization(
            config.basic_username, config.basic_password
        )
        secrets += basic
    connect = config.timeout if config.connect_timeout is None else config.connect_timeout
    return UpstreamTarget(
        name=config.label,
        described=f"forwarding target {config.label}",
        url=URL(config.url),
        connect_timeout=min(connect, config.timeout),
        total_timeout=config.timeout,
        max_connections=2,
        headers=headers,
        secrets=secrets,
        username=config.basic_username,
        observe=observe,
    )
