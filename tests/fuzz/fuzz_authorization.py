"""Fuzz the Authorization header on its way in: every parser a request header meets.

- the Authenticator's scheme split, with minimal backends that record what they were given:
  any header is a Principal or Unauthorized; a backend gets the scheme lower-cased and the
  credentials stripped; a failing backend lets the next one try;
- decode_basic: Unauthorized (with a fixed message, never the input), or a non-empty
  username without ':' or NUL such that `username:password` is exactly what was encoded;
- Guard.login_keys (the lockout, before any auth) and the client address behind trusted
  proxies (X-Forwarded-For): never raise, keys are short strings;
- peek_issuer: a string or None, whatever the token;
- TokenBackend.authenticate with tokens signed by the gateway's key over fuzzed claims:
  None, Unauthorized, or a Principal with a valid agent and known scopes.

    python tests/fuzz/fuzz_authorization.py [CORPUS_DIR] [-max_total_time=60] [flags]
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import fuzzing

with fuzzing.instrumented("jwt"):
    import jwt

    from gateway.auth.base import Authenticator, decode_basic
    from gateway.auth.bearer import peek_issuer
    from gateway.auth.principal import Principal
    from gateway.auth.tokens import TokenBackend, TokenSigner
    from gateway.config.settings import LockoutConfig, RateLimitConfig, TokensConfig
    from gateway.errors import Unauthorized
    from gateway.http.abuse_guard import Guard
    from gateway.secret import Secret
    from gateway.xapi.agents import validate_actor
    from gateway.xapi.scopes import KNOWN_SCOPES

BASIC_MESSAGES = {
    "the Basic credentials are not valid base64 of user:password",
    "the Basic credentials are not in the form user:password",
}
SECRET = "a-fixed-fuzzing-secret-of-more-than-32-bytes"
SIGNER = TokenSigner(TokensConfig(secret=Secret(SECRET), issuer="lrs-gateway"), Path("."))
TOKENS = TokenBackend(SIGNER)
GUARD = Guard(RateLimitConfig(trusted_proxies=("10.0.0.0/8", "::1/128")), LockoutConfig())
SCHEMES = [
    "Basic",
    "basic",
    "BASIC",
    "Bearer",
    "bearer",
    "Digest",
    "Negotiate",
    "",
    "Basic\t",
    "BasicX",
    "İ",
]
CLAIM_KEYS = ["iss", "sub", "aud", "exp", "iat", "nbf", "scope", "scp", "agent", "jti", "via"]


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never waits (the backends here do not)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    fuzzing.fail("a backend awaited something")


class Recording:
    """A minimal backend: takes one scheme, records what it got, answers as told."""

    def __init__(self, scheme: str, *, refuse: bool) -> None:
        self.scheme = scheme
        self.refuse = refuse
        self.challenge = f"{scheme} realm=test"
        self.got: list[tuple[str, str]] = []
        self.principal = Principal(
            id=f"{scheme}-user",
            agent={"mbox": "mailto:u@example.org"},
            scopes=frozenset({"all"}),
            scheme=scheme,
        )

    async def authenticate(self, scheme: str, credentials: str) -> Principal | None:
        self.got.append((scheme, credentials))
        if scheme != self.scheme:
            return None
        if self.refuse:
            raise Unauthorized("refused by test backend")
        return self.principal


class Request:
    """What Guard reads from an aiohttp request."""

    def __init__(self, remote: str | None, forwarded_for: str | None) -> None:
        self.remote = remote
        self.headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}


def header_from(fdp: Any) -> str:
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        return str(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 200)))
    scheme = fdp.PickValueInList(SCHEMES)
    space = fdp.PickValueInList([" ", "  ", "\t", "", " \u00a0"])
    if mode == 1:  # base64 of chosen bytes: gets past the base64 check at once
        raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 60))
        credentials = base64.b64encode(raw).decode()
        credentials = fdp.PickValueInList(["", " ", "=", "\n"]) + credentials
    elif mode == 2:
        credentials = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 80))
    else:
        credentials = token_from(fdp)
    return f"{scheme}{space}{credentials}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_from(fdp: Any) -> dict[str, Any]:
    values: list[Any] = [
        None,
        True,
        0,
        -1,
        2**70,
        1e300,
        float("inf"),
        "",
        "lrs-gateway",
        "x",
        "statements/read all",
        "1700000000",
        ["all", 1],
        {"mbox": "mailto:a@example.org"},
        {"objectType": "Group", "member": []},
        [],
        {},
    ]
    claims: dict[str, Any] = {
        "iss": "lrs-gateway",
        "sub": "u",
        "aud": "lrs-gateway",
        "iat": 1_700_000_000,
        "exp": 4_000_000_000,
        "scope": "statements/read",
        "agent": {"mbox": "mailto:a@b.org"},
    }
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        key = fdp.PickValueInList(CLAIM_KEYS)
        if fdp.ConsumeIntInRange(0, 4) == 0:
            claims.pop(key, None)
        else:
            claims[key] = (
                fdp.PickValueInList(values)
                if fdp.ConsumeBool()
                else fdp.ConsumeUnicodeNoSurrogates(8)
            )
    return claims


def token_from(fdp: Any) -> str:
    """A JWT-looking token: our signature over fuzzed claims, or fuzzed parts."""
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        claims = claims_from(fdp)
        try:
            return jwt.encode(claims, SECRET, algorithm="HS256")
        except (TypeError, ValueError, OverflowError):
            return "x.y.z"
    header = fdp.PickValueInList(
        [
            b'{"alg":"HS256","typ":"JWT"}',
            b'{"alg":"none"}',
            b"{}",
            b"[]",
            b'{"alg":"RS256","kid":1}',
            b"null",
            b"\xff",
        ]
    )
    if mode == 1:
        payload = json.dumps(claims_from(fdp)).encode()
    else:
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 60))
    signature = b64url(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)))
    parts = [b64url(header), b64url(payload), signature][: fdp.ConsumeIntInRange(1, 4)]
    return str(fdp.PickValueInList([".", "..", ". "])).join(parts)


def check_authenticator(header: str) -> None:
    first = Recording("basic", refuse=True)
    second = Recording("basic", refuse=False)
    bearer = Recording("bearer", refuse=False)
    authenticator = Authenticator([first, second, bearer])
    try:
        principal = run(authenticator.authenticate(header))
    except Unauthorized:
        principal = None
    scheme, _, credentials = header.strip().partition(" ")
    expected = (scheme.lower(), credentials.strip())
    if not header:
        fuzzing.check(principal is None and not first.got, "no header, yet a backend was asked")
        return
    for backend in (first, second, bearer):
        fuzzing.check(
            not backend.got or backend.got == [expected],
            f"{header!r}: backend got {backend.got}, expected {expected}",
        )
    if expected[0] == "basic":
        fuzzing.check(principal is second.principal, f"{header!r}: fall-through failed")
    elif expected[0] == "bearer":
        fuzzing.check(principal is bearer.principal, f"{header!r}: bearer not taken")
    else:
        fuzzing.check(principal is None, f"{header!r}: scheme {scheme!r} accepted")


def check_basic(credentials: str) -> None:
    try:
        username, password = decode_basic(credentials)
    except Unauthorized as error:
        fuzzing.check(error.message in BASIC_MESSAGES, f"message {error.message!r}")
        return
    fuzzing.check(
        username and ":" not in username and "\0" not in username,
        f"{credentials!r} gave username {username!r}",
    )
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        fuzzing.fail(f"{credentials!r} accepted, but it is not base64 of UTF-8")
    fuzzing.check(
        decoded == f"{username}:{password}",
        f"{credentials!r}: {decoded!r} != {username!r}:{password!r}",
    )


def check_round_trip(fdp: Any) -> None:
    username = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    password = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    try:
        got = decode_basic(token)
    except Unauthorized:
        fuzzing.check(
            not username or ":" in username or "\0" in username,
            f"{username!r}:{password!r} refused",
        )
        return
    fuzzing.check(
        got == (username, password) or ":" in username,
        f"{username!r}:{password!r} decoded as {got!r}",
    )


def check_guard(fdp: Any, header: str) -> None:
    remote = fdp.PickValueInList([None, "203.0.113.7", "10.1.2.3", "::1", "-"])
    forwarded = (
        fdp.PickValueInList(
            [None, "1.2.3.4", "10.0.0.1, 1.2.3.4", "x, 10.0.0.9", "", "fe80::1%eth0", None]
        )
        if fdp.ConsumeBool()
        else fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 60))
    )
    request = Request(remote, forwarded)
    address = GUARD.client_address(cast(Any, request))
    fuzzing.check(isinstance(address, str) and address, f"address {address!r}")
    keys = GUARD.login_keys(cast(Any, request), header)
    fuzzing.check(
        isinstance(keys, tuple) and all(isinstance(k, str) for k in keys), f"keys {keys!r}"
    )
    is_basic = header.strip().partition(" ")[0].lower() == "basic"
    fuzzing.check(bool(keys) == is_basic, f"{header!r}: lockout keys {keys!r}")
    if keys:
        fuzzing.check(keys[-1] == f"ip:{address}", f"{keys!r} for address {address!r}")
        fuzzing.check(all(len(k) <= 5 + 256 for k in keys[:-1]), f"long key in {keys!r}")
    run(GUARD.check_lockout(keys, header))


def check_tokens(token: str) -> None:
    issuer = peek_issuer(token)
    fuzzing.check(issuer is None or isinstance(issuer, str), f"issuer {issuer!r}")
    try:
        principal = run(TOKENS.authenticate("bearer", token))
    except Unauthorized:
        return
    except TypeError:
        if fuzzing.known_bug("token-claim-types"):
            return
        raise
    if principal is None:
        fuzzing.check(issuer != SIGNER.issuer, f"our issuer, yet not checked: {token!r}")
        return
    validate_actor(principal.agent)
    fuzzing.check(principal.scopes <= KNOWN_SCOPES, f"scopes {principal.scopes}")
    fuzzing.check(isinstance(principal.id, str), f"id {principal.id!r}")


def test_one_input(data: bytes) -> None:
    fdp = fuzzing.provider(data)
    header = header_from(fdp)
    check_authenticator(header)
    check_basic(header.strip().partition(" ")[2])
    check_guard(fdp, header)
    check_round_trip(fdp)
    check_tokens(token_from(fdp))


def seeds() -> list[bytes]:
    return [
        b"Basic YWxpY2U6c2VjcmV0",  # alice:secret
        b"Basic YWxpY2U6c2VjOnJldA==",  # alice:sec:ret
        b"Basic OnNlY3JldA==",  # :secret
        b"Basic AGE6Yg==",  # \0a:b
        b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJscnMtZ2F0ZXdheSJ9.c2ln",
        b"Digest username=x",
        b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09",
        bytes(range(256)),
    ]


DICTIONARY = [
    b"Basic ",
    b"Bearer ",
    b"basic",
    b"==",
    b":",
    b"\x00",
    b"eyJ",
    b".",
    b'"iss"',
    b'"lrs-gateway"',
    b"10.0.0.1",
    b"::1",
    b",",
]

if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds=seeds(), dictionary=DICTIONARY)
    sys.exit(0)
