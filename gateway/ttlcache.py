"""A small LRU whose entries each carry their own expiry (the callback's cache needs that)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from gateway.clock import SYSTEM_CLOCK, Clock

__all__ = ["TtlCache"]

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """LRU of at most `max_size` entries; `get` forgets an expired one."""

    def __init__(self, max_size: int, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._max_size = max_size
        self._monotonic = clock.monotonic  # bound once: a lookup costs one call, as before
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> tuple[bool, V | None]:
        """(found, value)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._monotonic():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return False, None
        self._entries.move_to_end(key)
        self.hits += 1
        return True, entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        """Store `value` for `ttl` seconds (nothing when ttl <= 0)."""
        if ttl <= 0:
            return
        self._entries[key] = (self._monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
