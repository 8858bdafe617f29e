"""A string that never shows itself in reprs, logs or error messages."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["Secret", "keyed_digest", "redact"]


def keyed_digest(key: bytes, message: bytes) -> bytes:
    """A MAC of `message` under a per-process `key`: cache and lockout keys for credentials.

    Keyed BLAKE2b, which its designers give as the faster replacement for HMAC (a third of
    HMAC-SHA256's time here, on every request).
    """
    return hashlib.blake2b(message, key=key, digest_size=32).digest()


class Secret:
    """Wraps a secret value; `str()` and `repr()` are masked, `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself; call only where it is sent, never where it is shown."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (and its base64 and percent-encoded forms) masked.

    For answers of other servers that the gateway logs or keeps: an error page that
    echoes the request's headers would otherwise carry our credentials along.
    """
    for secret in secrets:
        if len(secret) < 4:
            continue
        for form in {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}:
            text = text.replace(form, "**********")
    return text
