"""Fuzz statement bodies: parse_json_body, then prepare_post or prepare_put.

Any body ends in BadRequest / PayloadTooLarge, or in statements that each carry exactly the
caller's authority and a canonical UUID id (the PUT one equal to `statementId`), with no id
twice in a batch, encodable to the bytes the gateway sends with that authority and id in
them. Inputs are raw bytes or JSON built from the bytes (statements, batches, deep nesting).

    python tests/fuzz/fuzz_statements.py [CORPUS_DIR] [-max_total_time=60] [libFuzzer flags]
"""

from __future__ import annotations

import copy
import json
import re
import sys
import uuid
from typing import Any

import fuzzing

with fuzzing.instrumented():
    from gateway import jsoncodec
    from gateway.errors import BadRequest, PayloadTooLarge
    from gateway.xapi.statements import encode_statement, parse_json_body, prepare_post, prepare_put

AUTHORITY: dict[str, Any] = {
    "objectType": "Agent",
    "account": {"homePage": "https://gw.example", "name": "caller"},
}
CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UUIDS = [
    "3f1c2b9e-8d4a-4f6b-9c1d-2e3f4a5b6c7d",
    "3F1C2B9E-8D4A-4F6B-9C1D-2E3F4A5B6C7D",
    "00000000-0000-0000-0000-000000000000",
    "3f1c2b9e8d4a4f6b9c1d2e3f4a5b6c7d",
    "{3f1c2b9e-8d4a-4f6b-9c1d-2e3f4a5b6c7d}",
    "3f1c2b9e-8d4a-4f6b-9c1d-2e3f4a5b6c7",
    "3f1c2b9e-8d4a-4f6b-9c1d-2e3f4a5b6c7d\n",
    "\uff461c2b9e-8d4a-4f6b-9c1d-2e3f4a5b6c7d",
]
STRINGS = [
    "mailto:a@example.org",
    "mailto:",
    "a@b",
    "http://x.org/v",
    "x",
    "",
    "Agent",
    "Group",
    "0123456789abcdef0123456789abcdef01234567",
    "https://lms.example",
    "\u0000",
    "\ud800",
]
KEYS = [
    "actor",
    "verb",
    "object",
    "id",
    "authority",
    "timestamp",
    "objectType",
    "mbox",
    "mbox_sha1sum",
    "openid",
    "account",
    "homePage",
    "name",
    "member",
    "result",
    "context",
    "extensions",
    "stored",
    "version",
    "attachments",
    "display",
]


def json_value(fdp: Any, depth: int) -> Any:
    """Any JSON value, shaped by the bytes (xAPI-ish keys and strings are likely)."""
    kind = fdp.ConsumeIntInRange(0, 8 if depth < 5 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(8)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 5:
        return fdp.PickValueInList(STRINGS + UUIDS)
    if kind == 6:
        return [json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 7:
        return {
            (
                fdp.PickValueInList(KEYS)
                if fdp.ConsumeBool()
                else fdp.ConsumeUnicodeNoSurrogates(6)
            ): json_value(fdp, depth + 1)
            for _ in range(fdp.ConsumeIntInRange(0, 4))
        }
    return agent(fdp, depth + 1)


def agent(fdp: Any, depth: int) -> Any:
    """An Agent or Group, valid or nearly so."""
    which = fdp.ConsumeIntInRange(0, 5)
    out: dict[str, Any]
    if which == 0:
        out = {
            "mbox": fdp.PickValueInList(["mailto:a@example.org", "mailto:nobody", "a@example.org"])
        }
    elif which == 1:
        out = {
            "mbox_sha1sum": fdp.PickValueInList(["0123456789abcdef0123456789abcdef01234567", "xyz"])
        }
    elif which == 2:
        out = {"openid": fdp.PickValueInList(["https://id.example/a", "nocolon"])}
    elif which == 3:
        out = {
            "account": {
                "homePage": fdp.PickValueInList(["https://lms.example", "lms"]),
                "name": fdp.PickValueInList(["u1", "", 7]),
            }
        }
    elif which == 4:
        out = {
            "objectType": "Group",
            "member": [agent(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))],
        }
    else:
        return json_value(fdp, depth + 1) if depth < 6 else None
    if fdp.ConsumeIntInRange(0, 7) == 0:
        out[fdp.PickValueInList(KEYS)] = json_value(fdp, depth + 1) if depth < 6 else 1
    return out


def statement(fdp: Any) -> Any:
    """One statement, most often well formed, each part possibly replaced or forged."""
    out: dict[str, Any] = {
        "actor": agent(fdp, 1),
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course"},
    }
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        key = fdp.PickValueInList(KEYS)
        choice = fdp.ConsumeIntInRange(0, 4)
        if choice == 0:
            out.pop(key, None)
        elif choice == 1:
            out[key] = fdp.PickValueInList(UUIDS)
        elif choice == 2:
            out[key] = {"mbox": "mailto:forged@example.org"}  # e.g. a forged authority
        else:
            out[key] = json_value(fdp, 1)
    return out


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if depth % 2 else [leaf]
    return leaf


def body_from(fdp: Any) -> bytes:
    """The request body: raw bytes, or JSON shaped by the bytes."""
    mode = fdp.ConsumeIntInRange(0, 5)
    if mode == 0:
        return bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if mode == 1:
        data: Any = statement(fdp)
    elif mode == 2:
        data = [statement(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    elif mode == 3:
        data = json_value(fdp, 0)
    elif mode == 4:
        data = statement(fdp)
        data["result"] = {"extensions": nested(fdp.ConsumeIntInRange(1, 400), 1)}
    else:
        ids = [fdp.PickValueInList(UUIDS[:3]) for _ in range(fdp.ConsumeIntInRange(1, 4))]
        data = [dict(statement(fdp), id=i) for i in ids]
    return json.dumps(data, ensure_ascii=fdp.ConsumeBool()).encode("utf-8", "surrogatepass")


def encoded(item: Any) -> bytes | None:
    """The bytes the gateway sends for one statement (None: its clean 400, too deep)."""
    try:
        return encode_statement(item)
    except BadRequest:
        return None


def check_prepared(item: Any, where: str) -> None:
    fuzzing.check(isinstance(item, dict), f"{where}: not an object after preparation")
    fuzzing.check(item["authority"] is AUTHORITY, f"{where}: authority is {item['authority']!r}")
    sid = item["id"]
    fuzzing.check(
        isinstance(sid, str) and CANONICAL.fullmatch(sid.lower()),
        f"{where}: id {sid!r} is not a canonical UUID",
    )
    fuzzing.check(str(uuid.UUID(sid)) == sid.lower(), f"{where}: id {sid!r} is not canonical")
    fuzzing.check("timestamp" in item, f"{where}: no timestamp")
    sent = encoded(item)
    if sent is not None:
        again = jsoncodec.loads(sent)
        fuzzing.check(
            again["authority"] == AUTHORITY and again["id"] == sid,
            f"{where}: the bytes sent do not carry the authority and id",
        )


def check_error(error: Exception) -> None:
    message = getattr(error, "message", "")
    fuzzing.check(
        isinstance(message, str) and 0 < len(message) < 1000,
        f"error message empty or unbounded: {message[:200]!r}",
    )


def test_one_input(data: bytes) -> None:
    fdp = fuzzing.provider(data)
    method = fdp.ConsumeIntInRange(0, 2)
    max_batch = fdp.ConsumeIntInRange(1, 8)
    put_id = fdp.PickValueInList([None, "from-body", "upper", *UUIDS[:2], UUIDS[3], "x"])
    body = body_from(fdp)
    try:
        parsed = parse_json_body(body)
    except BadRequest as error:
        check_error(error)
        return
    if method < 2:
        original = copy.deepcopy(parsed) if isinstance(parsed, list) else None
        try:
            result, ids = prepare_post(parsed, AUTHORITY, max_batch)
        except (BadRequest, PayloadTooLarge) as error:
            check_error(error)
            return
        batch = result if isinstance(result, list) else [result]
        fuzzing.check(result is parsed, "prepare_post returned another document")
        fuzzing.check(original is None or len(original) == len(batch), "the batch changed size")
        fuzzing.check(0 < len(batch) <= max_batch, f"{len(batch)} statements, max {max_batch}")
        fuzzing.check(ids == [item["id"] for item in batch], "ids differ from the statements'")
        if len({i.lower() for i in ids}) != len(ids) and not fuzzing.known_bug("id-case"):
            fuzzing.fail(f"one id twice in a batch: {ids}")
        for index, item in enumerate(batch):
            check_prepared(item, f"statements[{index}]")
        return
    if put_id == "from-body":
        put_id = parsed.get("id") if isinstance(parsed, dict) else None
        put_id = put_id if isinstance(put_id, str) else UUIDS[0]
    elif put_id == "upper":
        put_id = UUIDS[1]
    try:
        result = prepare_put(parsed, put_id, AUTHORITY)
    except BadRequest as error:
        check_error(error)
        return
    fuzzing.check(
        isinstance(put_id, str) and result["id"].lower() == put_id.lower(),
        f"PUT id {result['id']!r} for statementId {put_id!r}",
    )
    check_prepared(result, "statement")


def raw(body: bytes, method: int = 0, max_batch: int = 4, put: int = 0) -> bytes:
    """A seed whose body is `body` as is (atheris takes numbers from the end of the data)."""
    return body + bytes([0, put, max_batch - 1, method])


def seeds() -> list[bytes]:
    good = {
        "actor": {"mbox": "mailto:a@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course"},
    }
    return [
        raw(json.dumps(good).encode()),
        raw(json.dumps([good, dict(good, id=UUIDS[0])]).encode()),
        raw(json.dumps([dict(good, id=UUIDS[0]), dict(good, id=UUIDS[1])]).encode()),
        raw(json.dumps(dict(good, authority={"mbox": "mailto:forged@example.org"})).encode()),
        raw(json.dumps(dict(good, id=UUIDS[1])).encode(), method=2, put=1),
        raw(json.dumps(good).encode(), method=2, put=3),
        raw(
            b'{"actor": {"objectType": "Group", "member": [{"mbox": "mailto:x@y"}]}, '
            b'"verb": {"id": "a:b"}, "object": {}}'
        ),
        raw(json.dumps([good] * 6).encode()),
        raw(b" "),
        raw(b"[]"),
        raw(b"\xff\xfe"),
        raw(b"1e400"),
        raw(b"[" * 300 + b"]" * 300),
        bytes(range(64)),
        bytes(range(200, 256)),
    ]


DICTIONARY = [
    b'"actor"',
    b'"verb"',
    b'"object"',
    b'"id"',
    b'"authority"',
    b'"mbox"',
    b'"mailto:a@b"',
    b'"objectType"',
    b'"Group"',
    b'"member"',
    b'"account"',
    b'"homePage"',
    b'"name"',
    b'"openid"',
    b'"mbox_sha1sum"',
    b'"timestamp"',
    b"null",
    b"true",
    b"false",
    b"{}",
    b"[]",
    b"\\u0000",
    b"\\ud800",
    UUIDS[0].encode(),
    UUIDS[1].encode(),
]

if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds=seeds(), dictionary=DICTIONARY)
    sys.exit(0)
