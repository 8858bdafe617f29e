"""The gateway's exception hierarchy; each class carries the HTTP status it maps to.

    GatewayError                 500  anything we did not foresee
    ├── BadRequest               400  malformed input (JSON, statement shape, headers)
    │   └── UnsupportedVersion   400  missing or unsupported X-Experience-API-Version
    ├── Unauthorized             401  missing or bad credentials
    ├── Forbidden                403  valid credentials without the needed scope
    ├── NotFound                 404
    ├── PayloadTooLarge          413
    ├── TooManyRequests          429  rate limit or login lockout (with Retry-After)
    ├── UnsupportedMediaType     415
    └── UpstreamError            502  the storage LRS could not be used
        ├── UpstreamUnavailable  502  connection refused / reset / bad answer
        ├── UpstreamTimeout      504
        ├── UpstreamFailed       5xx  the LRS's own 5xx, its body (traces, hosts) kept back
        ├── StorageRefused       502  the LRS's 401/403 to the gateway's own credential
        └── StorageUnavailable   503  storage known to be down (readiness)
    AuthUnavailable              503  an identity provider or auth callback cannot answer

`ConfigError` is separate: it is raised before the server exists and ends the process.
"""

from __future__ import annotations

__all__ = [
    "AuthUnavailable",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "GatewayError",
    "NotFound",
    "PayloadTooLarge",
    "StorageRefused",
    "StorageUnavailable",
    "StoreUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "UnsupportedVersion",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "WorkersUnavailable",
]


class GatewayError(Exception):
    """Base of every error the gateway turns into an HTTP answer."""

    status = 500
    kind = "internal_error"

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    """The request cannot be understood as sent."""

    status = 400
    kind = "bad_request"


class UnsupportedVersion(BadRequest):
    """X-Experience-API-Version is missing or not one we accept."""

    kind = "unsupported_version"


class Unauthorized(GatewayError):
    """Credentials are missing or wrong; the middleware adds the challenges."""

    status = 401
    kind = "unauthorized"


class Forbidden(GatewayError):
    """The caller is known but lacks the scope this request needs."""

    status = 403
    kind = "forbidden"


class NotFound(GatewayError):
    """No such resource (or not one the caller may know about)."""

    status = 404
    kind = "not_found"


class Conflict(GatewayError):
    """The request clashes with what exists (a username already taken)."""

    status = 409


class PayloadTooLarge(GatewayError):
    """The request body exceeds the configured limit."""

    status = 413
    kind = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    """The body's content type is not one this endpoint handles."""

    status = 415
    kind = "unsupported_media_type"


class TooManyRequests(GatewayError):
    """Slow down: a rate limit or a login lockout; `retry_after` seconds until it lifts."""

    status = 429
    kind = "too_many_requests"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamError(GatewayError):
    """The storage LRS could not be used to answer."""

    status = 502
    kind = "bad_gateway"


class UpstreamUnavailable(UpstreamError):
    """Connecting to or reading from the upstream failed."""


class UpstreamFailed(UpstreamError):
    """The upstream answered 5xx: same status to the client, but our body, not its."""

    kind = "upstream_error"

    def __init__(self, status: int) -> None:
        super().__init__(
            f"the storage LRS failed (HTTP {status}); the request id is in "
            "the gateway's log with its answer"
        )
        self.status = status


class StorageRefused(UpstreamError):
    """Storage answered 401/403 to the gateway's own credential: the operator's to fix.

    Never passed on as the LRS said it: its `WWW-Authenticate` would tell the client that
    *its* password is wrong.
    """

    kind = "storage_refused_credential"

    def __init__(self) -> None:
        super().__init__(
            "the storage LRS refused the gateway's credential; the gateway's "
            "operator must fix it (the request id is in the gateway's log)"
        )


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""

    status = 504
    kind = "gateway_timeout"


class StorageUnavailable(UpstreamError):
    """The storage LRS is known to be unavailable."""

    status = 503
    kind = "service_unavailable"


class AuthUnavailable(GatewayError):
    """Credentials cannot be checked now (IdP or callback down): not the caller's fault."""

    status = 503
    kind = "auth_unavailable"
    retry_after: float | None = None


class StoreUnavailable(GatewayError):
    """The gateway's own database (credentials, PostgreSQL) cannot be reached now."""

    status = 503
    kind = "service_unavailable"
    retry_after: float | None = 5.0


class WorkersUnavailable(GatewayError):
    """Not every worker answered a scrape (`serve --workers`): the sum would be wrong."""

    status = 503
    kind = "service_unavailable"


class ConfigError(Exception):
    """The configuration is invalid; the message names the file and the key."""
