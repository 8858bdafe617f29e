"""Request ids unique per process, made without a syscall per request."""

from __future__ import annotations

import itertools
import uuid

__all__ = ["RequestIds"]


class RequestIds:
    """A random prefix per app and a counter (uuid4 reads os.urandom on every call)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)

    def next(self) -> str:
        """The next id."""
        return f"{self._prefix}{next(self._counter):x}"
