"""bcrypt checks in a bounded thread pool, never on the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import os
import re
import threading
import time
from collections.abc import Callable

import bcrypt

from gateway.errors import AuthUnavailable

__all__ = [
    "BCRYPT_MAX_BYTES",
    "PasswordChecker",
    "UnusablePassword",
    "bcrypt_cost",
    "check_new_password",
    "hash_new_password",
    "is_bcrypt_hash",
]

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")  # cost 4-31
# bcrypt reads at most 72 bytes of a password. Older bcrypt versions (and Ralph's CLI on
# them) silently dropped the rest, so any longer password sharing those 72 bytes matched
# (red-team issue 13, finding 7): longer passwords are refused when set and never match.
BCRYPT_MAX_BYTES = 72
_DUMMY_PASSWORD = b"lrs-gateway dummy password for unknown users"


class UnusablePassword(ValueError):
    """A new password the gateway will not store: empty, past 72 bytes, or with a NUL."""


def check_new_password(password: str) -> None:
    """Raise UnusablePassword unless bcrypt would check every byte of `password`."""
    if not password:
        raise UnusablePassword("the password must not be empty")
    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnusablePassword("the password is not valid text (UTF-8)") from None
    if size > BCRYPT_MAX_BYTES:
        raise UnusablePassword(
            f"the password is {size} bytes long in UTF-8; bcrypt reads at most "
            f"{BCRYPT_MAX_BYTES} bytes, so the rest would not count: choose a shorter one"
        )
    if "\0" in password:  # C bcrypt implementations stop reading at a NUL byte
        raise UnusablePassword("the password must not contain a NUL character")


async def hash_new_password(password: str, cost: int = 12) -> str:
    """The bcrypt hash of a checked new password, made on a thread (never on the loop)."""
    check_new_password(password)
    hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode("utf-8"), bcrypt.gensalt(cost))
    return hashed.decode()


def is_bcrypt_hash(value: str) -> bool:
    """Whether `value` is a bcrypt hash in modular crypt format ($2a$, $2b$, $2y$)."""
    return _BCRYPT.fullmatch(value) is not None


def bcrypt_cost(value: str) -> int:
    """The cost factor of a bcrypt hash."""
    match = _BCRYPT.fullmatch(value)
    if match is None:
        raise ValueError("not a bcrypt hash")
    return int(match.group(1))


class PasswordChecker:
    """Runs bcrypt in its own small pool with a bounded queue.

    The pool leaves a core to the event loop, so a flood of password guesses cannot starve
    requests whose credentials are cached; past `max_waiting` queued checks, new ones are
    refused at once (503) instead of queueing without end.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_waiting: int = 64,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        workers = workers or max(1, len(os.sched_getaffinity(0)) - 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="bcrypt", initializer=_lowest_priority
        )
        self._max_waiting = max_waiting
        self._waiting = 0
        self.capacity = max_waiting  # checks that may be in progress at once
        self._dummy: dict[int, bytes] = {}
        self._dummy_lock = asyncio.Lock()
        self._observe = observe
        self.checks = 0  # bcrypt runs so far (tests assert on it; metrics read it)

    async def check(self, password: str, hashed: str) -> bool:
        """Whether `password` matches the bcrypt `hashed` (never, past 72 bytes)."""
        secret = password.encode("utf-8")
        too_long = len(secret) > BCRYPT_MAX_BYTES
        if too_long:
            # Refused whatever its first 72 bytes are; bcrypt still runs, on the same hash
            # with a fixed password, so the answer takes a wrong password's time.
            secret = _DUMMY_PASSWORD
        loop = asyncio.get_running_loop()
        if self._waiting >= self._max_waiting:
            error = AuthUnavailable("too many logins are being checked; try again shortly")
            error.retry_after = 1.0
            raise error
        self.checks += 1
        self._waiting += 1
        started = time.perf_counter()
        try:
            ok = await loop.run_in_executor(self._pool, _checkpw, secret, hashed.encode("ascii"))
        finally:
            self._waiting -= 1
        if self._observe is not None:
            self._observe(time.perf_counter() - started)
        return ok and not too_long

    async def prepare(self, cost: int) -> None:
        """Make the dummy hash for `cost` now (at start), not under the first flood."""
        if cost not in self._dummy:
            self._dummy[cost] = await asyncio.to_thread(
                bcrypt.hashpw, _DUMMY_PASSWORD, bcrypt.gensalt(cost)
            )

    async def dummy_check(self, password: str, cost: int) -> None:
        """Spend the same time as a real check, for a user that does not exist."""
        if cost not in self._dummy:  # the file's cost changed since start: one build, shared
            async with self._dummy_lock:
                await self.prepare(cost)
        await self.check(password, self._dummy[cost].decode("ascii"))

    @staticmethod
    def check_plain(password: str, stored: str) -> bool:
        """Exact, constant-time comparison for plain-text secrets (Rustici lines)."""
        # Digests of equal size: compare_digest would otherwise show a length mismatch by
        # its time. Every byte counts, whatever the length (no bcrypt limit here).
        given = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
        expected = hashlib.sha256(stored.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(given, expected)

    def close(self) -> None:
        """Stop the pool; pending checks finish first."""
        self._pool.shutdown(wait=True)


def _lowest_priority() -> None:
    # bcrypt threads yield the core to the event loop: under a flood of guesses, requests
    # with cached credentials keep being answered (measured in bench/).
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a malformed hash that slipped past the file check
        return False
