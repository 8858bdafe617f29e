"""Passwords past bcrypt's 72 bytes: refused when set, never a match (issue 13, finding 7).

bcrypt reads only a password's first 72 bytes, so a longer one sharing them used to pass.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import FakeLRS, basic, credential, write_config

from gateway.auth.passwords import (
    BCRYPT_MAX_BYTES,
    PasswordChecker,
    UnusablePassword,
    check_new_password,
)
from gateway.http.app import create_app

Client = TestClient[web.Request, web.Application]
FULL = "Long-Pw-" + "x7Q" * 21 + "end"  # 74 characters...
REAL = FULL[:BCRYPT_MAX_BYTES]  # ...and the real password is its first 72 bytes
MULTIBYTE = "é" * 36  # 36 characters, 72 bytes in UTF-8


def test_new_passwords_of_at_most_72_bytes_are_accepted() -> None:
    for password in ("a", REAL, MULTIBYTE, "ü" * 24 + "a" * 24):
        check_new_password(password)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        (REAL + "x", "73 bytes long in UTF-8; bcrypt reads at most 72 bytes"),
        (MULTIBYTE + "a", "73 bytes"),  # 37 characters: the bytes count, not the characters
        ("é" * 37, "74 bytes"),
        ("x" * 1000, "1000 bytes"),
        ("", "must not be empty"),
        ("before\0after", "NUL"),
        ("half a surrogate \udc80", "not valid text"),
    ],
)
def test_unusable_new_passwords_are_refused_with_a_clear_message(
    password: str, message: str
) -> None:
    with pytest.raises(UnusablePassword, match=message):
        check_new_password(password)
    assert issubclass(UnusablePassword, ValueError)  # the CLI's and an API's 400 path


async def test_a_password_past_72_bytes_never_matches_a_bcrypt_hash() -> None:
    checker = PasswordChecker(1)
    # As older bcrypt versions made it for FULL (they hashed its first 72 bytes).
    hashed = bcrypt.hashpw(REAL.encode(), bcrypt.gensalt(4)).decode()
    try:
        assert await checker.check(REAL, hashed)
        before = checker.checks
        for longer in (FULL, REAL + "x", REAL + "x" * 1000, REAL + "é"):
            assert not await checker.check(longer, hashed)
        assert checker.checks == before + 4  # bcrypt ran for each: a wrong password's work
        hashed_multibyte = bcrypt.hashpw(MULTIBYTE.encode(), bcrypt.gensalt(4)).decode()
        assert await checker.check(MULTIBYTE, hashed_multibyte)
        assert not await checker.check(MULTIBYTE + "é", hashed_multibyte)
    finally:
        checker.close()


async def test_a_too_long_password_takes_a_wrong_passwords_time() -> None:
    checker = PasswordChecker(1)
    hashed = bcrypt.hashpw(REAL.encode(), bcrypt.gensalt(8)).decode()  # ~15 ms a check

    async def fastest(password: str) -> float:
        # The fastest of several: other load on the machine only ever adds time.
        times = []
        for _ in range(9):
            started = time.perf_counter()
            assert not await checker.check(password, hashed)
            times.append(time.perf_counter() - started)
        return min(times)

    try:
        wrong, too_long = await fastest("wrong-pw"), await fastest(REAL + "x")
    finally:
        checker.close()
    # Skipping bcrypt would make it about a thousand times faster.
    assert 0.4 < too_long / wrong < 2.5, (wrong, too_long)


def test_plain_text_secrets_are_compared_exactly_whatever_their_length() -> None:
    stored = "Rustici-plain-" + "k" * 100  # longer than bcrypt's limit: every byte counts
    assert PasswordChecker.check_plain(stored, stored)
    for other in (
        stored[:72],
        stored[:72] + "z" * 42,
        stored + "k",
        stored[:-1],
        "",
        stored.upper(),
    ):
        assert not PasswordChecker.check_plain(other, stored)


# -- through the app ---------------------------------------------------------------------------


async def test_a_longer_password_sharing_the_first_72_bytes_gets_401(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config = write_config(
        tmp_path, str(storage.make_url("/xAPI/")), [credential("alice", REAL, ["all"])]
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    for password, status in (
        (REAL + "x", 401),
        (FULL, 401),
        (REAL + "x" * 500, 401),
        (REAL, 200),
        (REAL + "x", 401),
    ):  # also once REAL is cached
        async with client.get("/whoami", headers=basic("alice", password)) as response:
            assert response.status == status, password
            if status == 401:
                assert response.headers["WWW-Authenticate"].startswith("Basic")
                assert (await response.json())["error"] == "unauthorized"


async def test_a_long_plain_rustici_secret_must_match_in_full(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config = write_config(tmp_path, str(storage.make_url("/xAPI/")), [])
    secret = "P" * 72 + "-rest-of-the-secret"
    (tmp_path / "auth.json").write_text(f"rusty:{secret}:root\n")
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    for password, status in ((secret[:72], 401), (secret[:72] + "-other", 401), (secret, 200)):
        async with client.get("/whoami", headers=basic("rusty", password)) as response:
            assert response.status == status, password
