"""X-Experience-API-Version: which request versions we accept and what we answer with."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import UnsupportedVersion

__all__ = ["VERSION_HEADER", "VersionPolicy"]

VERSION_HEADER = "X-Experience-API-Version"


def _major_minor(version: str) -> tuple[str, str]:
    parts = version.split(".")
    return parts[0], parts[1] if len(parts) > 1 else ""


class VersionPolicy:
    """A configured `X.Y.Z` accepts every `X.Y` and `X.Y.n` a client may send."""

    def __init__(self, configured: Iterable[str]) -> None:
        self.versions = tuple(configured)
        self._by_minor = {_major_minor(v): v for v in self.versions}
        self.default = self.versions[0]

    def check(self, requested: str | None) -> str:
        """Return the version to answer with, or raise UnsupportedVersion."""
        if requested is None or not requested.strip():
            raise UnsupportedVersion(
                f"the {VERSION_HEADER} header is required (accepted: {', '.join(self.versions)})"
            )
        requested = requested.strip()
        parts = requested.split(".")
        if not 2 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
            raise UnsupportedVersion(f"{VERSION_HEADER} {requested[:20]!r} is not a version")
        answer = self._by_minor.get((parts[0], parts[1]))
        if answer is None:
            raise UnsupportedVersion(
                f"xAPI version {requested} is not supported (accepted: {', '.join(self.versions)})"
            )
        return answer

    def answer_for(self, requested: str | None) -> str:
        """The version to put on an answer, without judging the request."""
        try:
            return self.check(requested)
        except UnsupportedVersion:
            return self.default
