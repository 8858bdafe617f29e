"""Fuzz credentials files: parse_credentials on Ralph JSON lists and Rustici lines.

Any text ends in CredentialsError or in users each with a non-empty username (its key)
without ':', known scopes, a valid xAPI agent, and a secret that is a usable bcrypt hash
when the parser says it is one. Built inputs also know each user's secret (often holding
':', as Rustici passwords may): it must come back exactly, with the role's scopes, and it
never shows in an error, a warning or a repr.

    python tests/fuzz/fuzz_credentials.py [CORPUS_DIR] [-max_total_time=60] [flags]
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import fuzzing

with fuzzing.instrumented():
    from gateway.auth.credentials import CredentialsError, parse_credentials
    from gateway.auth.passwords import bcrypt_cost, is_bcrypt_hash
    from gateway.xapi.agents import agent_identity, validate_agent
    from gateway.xapi.scopes import KNOWN_SCOPES, ROLE_SCOPES, normalize_scopes

MARKER = "Cr3d-Zecret"
HOMEPAGE = "https://lrs-gateway.example.org/accounts"
HASH_BODY = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"  # salt and digest: 53
HASH = "$2b$04$" + HASH_BODY
HASHES = [
    HASH,
    HASH.replace("$04$", "$12$"),
    HASH.replace("$2b$", "$2y$"),
    HASH.replace("$04$", "$03$"),
    HASH.replace("$04$", "$99$"),
    HASH + "\n",
    HASH[:-1],
    HASH.replace("$2b$", "$2x$"),
    "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
]
USERNAMES = ["alice", "bob", "a.b-c_d@example.org", "Ünïcode", "x", "0", "user name", "a#b"]
ROLES = [*ROLE_SCOPES, "ROOT", " root ", "Read-Only", "admin", "", "root:", "all"]
SCOPES = [
    *KNOWN_SCOPES,
    "lrs:all",
    "lrs:statements/read",
    "xapi/all",
    "state",
    "profile",
    "activities_profile",
    "nope",
    "",
]
BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines() splits on each


def clean(text: str) -> str:
    """No line breaks (a Rustici line ends there) and no marker (the harness places it)."""
    return "".join(" " if c in BREAKS else c for c in text).replace(MARKER, "")


def username_from(fdp: Any) -> str:
    if fdp.ConsumeBool():
        return str(fdp.PickValueInList(USERNAMES))
    name = clean(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 12)))
    # No ':' (it ends a Rustici username), nor a leading '#' (a comment line) or '['
    # (a JSON file).
    return re.sub(r"^[\s#\[]+", "", name.replace(":", "")).strip() or "u"


def secret_from(fdp: Any) -> str:
    """A password with the marker in it, ':' likely; or a bcrypt-looking hash."""
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return str(fdp.PickValueInList(HASHES)).strip()
    extra = clean(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16)))
    parts = [MARKER, extra, fdp.PickValueInList(["", ":", "::", ":root", " ", "#", "\\"])]
    order = fdp.ConsumeIntInRange(0, 2)
    return "".join(parts[order:] + parts[:order])


def rustici(fdp: Any) -> tuple[str, dict[str, tuple[str, str]]]:
    """Lines, and what each well-formed one declares: username -> (secret, role)."""
    lines: list[str] = []
    declared: dict[str, tuple[str, str]] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        kind = fdp.ConsumeIntInRange(0, 7)
        if kind == 0:
            lines.append(fdp.PickValueInList(["", "   ", "# a comment", "#x:y:root"]))
        elif kind == 1:
            # Without ':', a line that is not blank nor a comment is an error.
            text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 30))
            lines.append(clean(text).replace(":", " "))
        else:
            username, secret = username_from(fdp), secret_from(fdp)
            role = fdp.PickValueInList(ROLES)
            space = fdp.PickValueInList(["", " ", "\t"])
            lines.append(f"{space}{username}:{secret}:{role}{space}")
            if secret.strip() and role.strip().lower() in ROLE_SCOPES:
                declared.setdefault(username, (secret, role.strip().lower()))
    ending = fdp.PickValueInList(["\n", "\r\n", "\n\n", "\r"])
    return ending.join(lines) + fdp.PickValueInList(["", ending]), declared


def agent_from(fdp: Any) -> Any:
    return fdp.PickValueInList(
        [
            {"mbox": "mailto:a@example.org"},
            {"mbox": "a@example.org"},
            {"account": {"homePage": "https://lms.example", "name": "a"}},
            {"openid": "https://id.example/a"},
            {"objectType": "Group"},
            {"mbox": "mailto:a@b", "openid": "x:y"},
            [],
            "agent",
            5,
            None,
        ]
    )


def ralph(fdp: Any) -> str:
    entries: list[Any] = []
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        entry: dict[str, Any] = {
            "username": username_from(fdp),
            "hash": secret_from(fdp),
            "scopes": [fdp.PickValueInList(SCOPES) for _ in range(fdp.ConsumeIntInRange(0, 3))],
        }
        if fdp.ConsumeBool():
            entry["agent"] = agent_from(fdp)
        for _ in range(fdp.ConsumeIntInRange(0, 2)):
            key = fdp.PickValueInList(["username", "hash", "scopes", "agent"])
            entry[key] = fdp.PickValueInList([None, 5, "", "a:b", [], {}, [5], "$2b$"])
        entries.append(entry if fdp.ConsumeIntInRange(0, 9) else "not an object")
    return json.dumps(entries, ensure_ascii=fdp.ConsumeBool())


def check_user(name: str, credential: Any, *, json_file: bool) -> None:
    fuzzing.check(
        name == credential.username and name and ":" not in name,
        f"user {name!r} / {credential.username!r}",
    )
    fuzzing.check(not any(c in BREAKS for c in name), f"a line break in user {name!r}")
    fuzzing.check(credential.scopes <= KNOWN_SCOPES, f"{name!r}: scopes {credential.scopes}")
    validate_agent(credential.agent)
    fuzzing.check(agent_identity(credential.agent) is not None, f"{name!r}: agent")
    secret = credential.secret.reveal()
    fuzzing.check(secret, f"{name!r}: an empty secret")
    fuzzing.check(
        credential.hashed == is_bcrypt_hash(secret) and (credential.hashed or not json_file),
        f"{name!r}: hashed={credential.hashed} for {secret!r}",
    )
    if credential.hashed:
        cost = bcrypt_cost(secret)
        usable = 4 <= cost <= 31 and secret == secret.strip()
        if not usable and not fuzzing.known_bug("bcrypt-cost"):
            fuzzing.fail(f"{name!r}: {secret!r} passes as a bcrypt hash; bcrypt refuses it")
    fuzzing.check(MARKER not in repr(credential), f"a secret in {credential!r}")


def test_one_input(data: bytes) -> None:
    fdp = fuzzing.provider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    prefix = fdp.PickValueInList(["", "lrs:"])
    declared: dict[str, tuple[str, str]] | None = None
    if mode == 0:
        text = fdp.ConsumeBytes(fdp.remaining_bytes()).decode("utf-8", "replace")
    elif mode == 1:
        text = ralph(fdp)
    else:
        text, declared = rustici(fdp)
    try:
        parsed = parse_credentials(text, account_homepage=HOMEPAGE, scope_prefix=prefix)
    except CredentialsError as error:
        message = str(error)
        fuzzing.check(message, "an empty CredentialsError")
        if mode:
            fuzzing.check(
                MARKER not in message and HASH_BODY[:20] not in message,
                f"a secret in the error: {message!r}\n{text!r}",
            )
        return
    for warning in parsed.warnings:
        fuzzing.check(isinstance(warning, str), f"warning {warning!r}")
        if mode:
            fuzzing.check(
                MARKER not in warning and HASH_BODY[:20] not in warning,
                f"a secret in a warning: {warning!r}",
            )
    json_file = text.lstrip().startswith("[")
    for name, credential in parsed.users.items():
        check_user(name, credential, json_file=json_file)
    if declared is not None:
        fuzzing.check(
            set(parsed.users) == set(declared),
            f"users {sorted(parsed.users)} from lines declaring {sorted(declared)}:\n{text!r}",
        )
        for name, (secret, role) in declared.items():
            credential = parsed.users[name]
            fuzzing.check(
                credential.secret.reveal() == secret,
                f"{name!r}: secret {credential.secret.reveal()!r}, not {secret!r}",
            )
            fuzzing.check(
                credential.scopes == normalize_scopes(ROLE_SCOPES[role])[0],
                f"{name!r}: scopes {credential.scopes} for role {role!r}",
            )


def seeds() -> list[bytes]:
    good = [
        {
            "username": "alice",
            "hash": HASH,
            "scopes": ["all"],
            "agent": {"mbox": "mailto:alice@example.org"},
        }
    ]
    return [
        json.dumps(good).encode() + b"\x00\x00",
        json.dumps([*good, dict(good[0], username="bob", scopes=["lrs:state"])]).encode()
        + b"\x01\x00",
        b"alice:" + HASH.encode() + b":root\nbob:pa:ss:word:user\n# comment\n\x00\x00",
        b"rusty:rusti:ci-Pw:ROOT\r\nx:y\n\x00\x00",
        b'[{"username": "a:b"}]\x00\x00',
        b"[\x00\x00",
        b"\x00",
    ]


DICTIONARY = [
    b'"username"',
    b'"hash"',
    b'"scopes"',
    b'"agent"',
    b'"mbox"',
    b'"mailto:a@b"',
    b"$2b$04$",
    b"$2a$",
    b"$2y$",
    b":root",
    b":read-only",
    b":write-only",
    b":user",
    b"\n",
    b"#",
    b"[",
    b"{",
    b'"all"',
    b'"lrs:all"',
]

if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds=seeds(), dictionary=DICTIONARY)
    sys.exit(0)
