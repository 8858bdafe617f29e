"""One upstream-target abstraction for storage and forwarding: credentials, timeouts, names."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from multidict import CIMultiDict
from support import free_port

from gateway.config.settings import ForwardingTarget, StorageConfig
from gateway.secret import Secret
from gateway.upstream.h1 import ConnectTimeout, H1Error
from gateway.upstream.target import basic_authorization, forwarding_target, storage_target


def target(**extra: Any) -> ForwardingTarget:
    fields: dict[str, Any] = {
        "is_active": True,
        "url": "http://127.0.0.1:9/xAPI/statements",
        "max_retries": 1,
        "timeout": 4.0,
        "name": "analytics",
    }
    return ForwardingTarget(**(fields | extra))


def decoded_basic(header: str) -> str:
    scheme, _, token = header.partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(token).decode()


def test_storage_and_a_forwarding_target_build_the_same_basic_credential() -> None:
    storage = storage_target(StorageConfig(basic_username="gw", basic_password=Secret("pw:1")))
    forwarding = target(basic_username="gw", basic_password=Secret("pw:1"))
    lrs2 = forwarding_target(forwarding)
    assert decoded_basic(storage.headers["Authorization"]) == "gw:pw:1"
    assert lrs2.headers["Authorization"] == storage.headers["Authorization"]
    assert set(storage.secrets) == {"gw:pw:1", "pw:1"} <= set(lrs2.secrets)
    assert (storage.username, lrs2.username) == ("gw", "gw")


def test_a_bearer_token_wins_and_extra_headers_are_secrets_too() -> None:
    lrs2 = forwarding_target(
        target(
            bearer_token=Secret("tok-123"),
            basic_username="u",
            basic_password=Secret("p"),
            headers={"X-Api-Key": "key-9x"},
        )
    )
    assert lrs2.headers["Authorization"] == "Bearer tok-123"
    assert lrs2.headers["X-Api-Key"] == "key-9x"
    assert lrs2.headers["X-Experience-API-Version"] == "1.0.3"
    assert lrs2.redact("said tok-123 and key-9x") == "said ********** and **********"


def test_no_secret_in_a_targets_repr() -> None:
    lrs2 = forwarding_target(
        target(
            basic_username="u", basic_password=Secret("hunter2"), headers={"X-Api-Key": "key-77"}
        )
    )
    storage = storage_target(StorageConfig(basic_username="u", basic_password=Secret("hunter2")))
    for text in (repr(lrs2), repr(storage)):
        assert "hunter2" not in text
        assert "key-77" not in text
        assert base64.b64encode(b"u:hunter2").decode() not in text


def test_storage_without_a_credential_sends_none() -> None:
    storage = storage_target(StorageConfig(url="http://lrs.internal/xAPI"))
    assert "Authorization" not in storage.headers
    assert storage.secrets == ()
    assert str(storage.url) == "http://lrs.internal/xAPI/"
    assert (storage.name, storage.described) == ("storage", "the storage LRS")


def test_a_forwarding_target_has_its_own_connect_timeout() -> None:
    assert forwarding_target(target()).connect_timeout == 4.0  # default: the whole timeout
    assert forwarding_target(target(connect_timeout=0.5)).connect_timeout == 0.5
    # Never longer than the delivery may take in all.
    assert forwarding_target(target(connect_timeout=9.0)).connect_timeout == 4.0
    assert forwarding_target(target(connect_timeout=0.5)).total_timeout == 4.0


def test_basic_authorization_names_both_secrets() -> None:
    header, secrets = basic_authorization("a", Secret("b"))
    assert decoded_basic(header) == "a:b"
    assert secrets == ("a:b", "b")


async def test_a_forwarding_targets_failure_names_it_not_storage() -> None:
    port = free_port()  # nothing listens there
    pool = forwarding_target(target(url=f"http://127.0.0.1:{port}/xAPI/statements")).lean_pool()
    with pytest.raises(H1Error) as raised:
        await pool.request("POST", "/xAPI/statements", CIMultiDict(), b"[]", limit=1024, within=2.0)
    assert "forwarding target analytics cannot be reached" in str(raised.value)
    assert "storage" not in str(raised.value)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port whose accept queue is full: a further connection attempt just waits."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue (never accepted)
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))  # in progress: EINPROGRESS, not an error
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_the_connect_timeout_is_separate_from_the_total(silent_listener: int) -> None:
    lrs2 = forwarding_target(
        target(
            url=f"http://127.0.0.1:{silent_listener}/xAPI/statements",
            timeout=5.0,
            connect_timeout=0.3,
        )
    )
    pool = lrs2.lean_pool()
    started = time.monotonic()
    with pytest.raises(ConnectTimeout) as raised:
        await asyncio.wait_for(
            pool.request(
                "POST",
                "/xAPI/statements",
                CIMultiDict(),
                b"[]",
                limit=1024,
                within=lrs2.total_timeout,
            ),
            10,
        )
    assert time.monotonic() - started < 3.0  # the connect timeout, not the 5 s total
    assert str(raised.value) == "connecting to forwarding target analytics timed out"
