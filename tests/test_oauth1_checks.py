"""OAuthBackend's checks, in order, on requests oauthlib's own client signs.

Time is the injected clock; the nonce book is an in-memory one that counts its writes, so
the tests can say that a forged request writes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT, Client

from gateway.auth.oauth1 import Consumer, OAuthBackend, SignedRequest
from gateway.clock import ManualClock
from gateway.errors import Unauthorized
from gateway.secret import Secret

URL = "http://gateway.example.org/xAPI/statements?limit=2"


class Book:
    """Nonces kept until they expire, as the databases keep them."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.kept: dict[str, float] = {}
        self.writes = 0
        self._clock = clock

    async def remember_nonce(self, key: str, expires_at: float) -> bool:
        self.writes += 1
        now = self._clock.now() if self._clock is not None else 0.0
        if key in self.kept and self.kept[key] > now:
            return False
        self.kept[key] = expires_at
        return True


CONSUMER = Consumer("lms", Secret("consumer-secret"), {"mbox": "mailto:lms@x.org"}, frozenset())


def signed(clock: ManualClock, **client: Any) -> SignedRequest:
    options = {"client_secret": "consumer-secret", "timestamp": str(int(clock.now())), **client}
    uri, headers, _ = Client(options.pop("key", "lms"), **options).sign(URL, "GET")
    return SignedRequest("GET", uri, headers["Authorization"])


def backend(clock: ManualClock, book: Book, **options: Any) -> OAuthBackend:
    return OAuthBackend(
        lambda key: CONSUMER if key == "lms" else None, book, clock=clock, **options
    )


async def test_a_good_signature_is_the_consumer_and_its_nonce_is_kept() -> None:
    clock, book = ManualClock(), Book()
    principal = await backend(clock, book).authenticate(signed(clock))
    assert (principal.id, principal.scheme) == ("lms", "oauth")
    assert book.writes == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"client_secret": "wrong"}, "does not verify"),
        ({"key": "stranger"}, "does not verify"),
        ({"signature_method": SIGNATURE_PLAINTEXT}, "is not accepted"),
        ({"resource_owner_key": "user-token", "resource_owner_secret": "x"}, "three-legged"),
    ],
)
async def test_a_refused_request_writes_no_nonce(change: dict[str, Any], message: str) -> None:
    clock, book = ManualClock(), Book()
    with pytest.raises(Unauthorized, match=message):
        await backend(clock, book).authenticate(signed(clock, **change))
    assert book.writes == 0


async def test_the_timestamp_window_follows_the_gateways_clock() -> None:
    clock, book = ManualClock(), Book()
    old = signed(clock)
    clock.advance(2)
    newer = signed(clock)
    clock.advance(299)
    with pytest.raises(Unauthorized, match="300 s from the gateway's clock"):
        await backend(clock, book).authenticate(old)  # 301 s old
    assert await backend(clock, book).authenticate(newer)  # 299 s old


async def test_an_unknown_key_asks_the_database_again_once() -> None:
    clock, book = ManualClock(), Book()
    known: dict[str, Consumer] = {}
    asked = 0

    async def refresh() -> bool:
        nonlocal asked
        asked += 1
        known["lms"] = CONSUMER  # another process made it a moment ago
        return True

    checker = OAuthBackend(known.get, book, clock=clock, refresh_on_miss=refresh)
    assert (await checker.authenticate(signed(clock))).id == "lms"
    assert asked == 1


async def test_a_header_without_its_parameters_or_with_one_twice_is_401() -> None:
    clock, book = ManualClock(), Book()
    checker = backend(clock, book)
    with pytest.raises(Unauthorized, match="lacks oauth_consumer_key"):
        await checker.authenticate(SignedRequest("GET", URL, 'OAuth oauth_nonce="1"'))
    twice = signed(clock).authorization + ', oauth_nonce="again"'
    with pytest.raises(Unauthorized, match="oauth_nonce is given twice"):
        await checker.authenticate(SignedRequest("GET", URL, twice))
    assert book.writes == 0


async def test_a_nonce_is_kept_as_long_as_its_timestamp_passes_the_window() -> None:
    """A timestamp ahead of the gateway's clock stays good for longer than the window from
    now: its nonce must be kept that long too, or the request could be replayed."""
    clock = ManualClock()
    book = Book(clock)
    ahead = signed(clock, timestamp=str(int(clock.now()) + 290))
    assert await backend(clock, book).authenticate(ahead)
    clock.advance(350)  # past now + window, still within the window of its timestamp
    with pytest.raises(Unauthorized, match="replayed"):
        await backend(clock, book).authenticate(ahead)
