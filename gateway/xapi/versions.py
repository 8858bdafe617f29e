"""X-Experience-API-Version: which request versions we accept and what we answer with."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import UnsupportedVersion

__all__ = ["VERSION_HEADER", "Narrowing", "VersionPolicy"]

VERSION_HEADER = "X-Experience-API-Version"


def _major_minor(version: str) -> tuple[str, str]:
    parts = version.split(".")
    return parts[0], parts[1] if len(parts) > 1 else ""


@dataclass(frozen=True)
class Narrowing:
    """What the storage LRS's versions did to the configured list."""

    served: tuple[str, ...]  # what the gateway accepts and advertises now
    dropped: tuple[str, ...]  # configured, but storage does not speak them
    disjoint: bool = False  # storage speaks none of them: the configured list is kept


class VersionPolicy:
    """A configured `X.Y.Z` accepts every `X.Y` and `X.Y.n` a client may send.

    What is served is the configured list, narrowed to what the storage LRS speaks once
    that is known (`narrow`): promising a version storage refuses would fail every request
    of that version upstream.
    """

    def __init__(self, configured: Iterable[str]) -> None:
        self.configured = tuple(configured)
        self._serve(self.configured)

    def _serve(self, versions: tuple[str, ...]) -> None:
        self.versions = versions
        self._by_minor = {_major_minor(v): v for v in versions}
        self.default = versions[0]

    def narrow(self, storage_versions: Iterable[str] | None) -> Narrowing:
        """Serve the configured versions storage also speaks (by `X.Y`); None: all of them.

        When storage speaks none of them, the configured list stays: refusing every
        client would help nobody, and storage's own answers then say what is wrong.
        """
        if storage_versions is None:
            self._serve(self.configured)
            return Narrowing(self.configured, ())
        spoken = {_major_minor(v) for v in storage_versions}
        kept = tuple(v for v in self.configured if _major_minor(v) in spoken)
        if not kept:
            self._serve(self.configured)
            return Narrowing(self.configured, (), disjoint=True)
        self._serve(kept)
        return Narrowing(kept, tuple(v for v in self.configured if v not in kept))

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
