"""Fuzz statements with attachments: Content-Type grammar, multipart parse, canonical bodies.

Any Content-Type and body end in BadRequest, or in: a boundary that Python's own MIME
parser (`email`) reads the same way from a Content-Type the strict grammar accepted; parts
that serialize back to exactly the bytes received; attachment parts that match their
X-Experience-API-Hash and whose headers are unambiguous; statements that prepare like JSON
ones; parts matched to statements (pack/unpack round trip); and a canonical body (ours:
new boundary, no preamble or epilogue) holding the new statements and each checked part
byte for byte.

    python tests/fuzz/fuzz_multipart.py [CORPUS_DIR] [-max_total_time=60] [libFuzzer flags]
"""

from __future__ import annotations

import email.message
import hashlib
import json
import sys
from typing import Any

import fuzzing

with fuzzing.instrumented():
    from gateway import jsoncodec
    from gateway.errors import BadRequest, PayloadTooLarge
    from gateway.xapi.attachments import (
        canonical_body,
        pack_parts,
        parts_for,
        read_attachment_body,
        unpack_parts,
    )
    from gateway.xapi.multipart import boundary_of, parse, parse_headers, request_boundary
    from gateway.xapi.statements import prepare_post

AUTHORITY: dict[str, Any] = {"mbox": "mailto:caller@example.org"}
BOUNDARIES = [
    "abc",
    "lrs-gateway-0123",
    "a b",
    "x" * 70,
    "x" * 71,
    "=_Part_1",
    "--",
    "€x",
    "\udcff",
    "é",
    '"q"',
    "",
    ";",
]
CONTENT_TYPES = [
    'multipart/mixed; boundary="{b}"',
    "multipart/mixed; boundary={b}",
    "multipart/mixed;boundary = {b}; charset=utf-8",
    "multipart/mixed",
    "multipart/mixed; BOUNDARY={b}",
    'multipart/mixed; boundary="{b}',
    # the strict grammar's cases: look-alikes, repeats, escapes, stray text
    'multipart/mixed; boundary ="{b}"; x-boundary=LL',
    "multipart/mixed; boundary={b}; boundary=LL",
    "multipart/mixed; x-boundary=LL; boundary={b}",
    'multipart/mixed; boundary="{b}\\"',
    "multipart/mixed;;boundary={b};",
    "Multipart/Mixed ; boundary={b}",
    "multipart/mixed; boundary={b} trailing",
    "multipart/mixed, text/plain; boundary={b}",
    "multipart/mixed;\tboundary={b}",
    'multipart/mixed; a="x;boundary=LL"; boundary={b}',
]
PART_BODIES = [
    b"hello",
    b"",
    b"\r\n",
    b"--abc",
    b"\r\n--abc\r\n",
    b"\x00\xff" * 8,
    b"Content-Type: x\r\n\r\n",
]


def statement(hashes: list[str]) -> dict[str, Any]:
    return {
        "actor": {"mbox": "mailto:a@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course"},
        "attachments": [
            {
                "usageType": "http://id.tincanapi.com/attachment/certificate",
                "display": {"en": "c"},
                "contentType": "text/plain",
                "length": 5,
                "sha2": h,
            }
            for h in hashes
        ],
    }


def built(fdp: Any) -> tuple[str, bytes]:
    """A Content-Type and a body shaped like a real attachment request, with faults."""
    boundary = fdp.PickValueInList(BOUNDARIES)
    content_type = str(fdp.PickValueInList(CONTENT_TYPES)).replace("{b}", boundary)
    newline = b"\r\n" if fdp.ConsumeIntInRange(0, 7) else b"\n"
    bodies = [
        fdp.PickValueInList(PART_BODIES)
        if fdp.ConsumeBool()
        else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))
        for _ in range(fdp.ConsumeIntInRange(0, 3))
    ]
    hashes = [hashlib.sha256(b).hexdigest() for b in bodies]
    claimed = [
        h.upper() if fdp.ConsumeIntInRange(0, 5) == 0 else h
        for h in hashes
        if fdp.ConsumeIntInRange(0, 7)
    ]
    if fdp.ConsumeIntInRange(0, 7) == 0:
        claimed.append("0" * 64)
    document: Any = statement(claimed)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        document = [document, statement(claimed[:1])]
    dash = b"--" + boundary.encode("utf-8", "surrogateescape")
    first_type = fdp.PickValueInList(
        [b"application/json", b"application/json; charset=utf-8", b"text/plain"]
    )
    out = [fdp.PickValueInList([b"", b"preamble" + newline, newline])]
    out += [
        dash,
        fdp.PickValueInList([b"", b" ", b"\t"]),
        newline,
        b"Content-Type: " + first_type + newline + newline,
        json.dumps(document).encode(),
        newline,
    ]
    for body, sha2 in zip(bodies, hashes, strict=True):
        head = [
            b"Content-Type: text/plain",
            b"Content-Transfer-Encoding: binary",
            b"X-Experience-API-Hash: " + sha2.encode(),
        ]
        for _ in range(fdp.ConsumeIntInRange(0, 2)):
            head[fdp.ConsumeIntInRange(0, 2)] = fdp.PickValueInList(
                [
                    b"Content-Transfer-Encoding: base64",
                    b"X-Experience-API-Hash: " + b"0" * 64,
                    b"Content-Length: 3",
                    b"NoColon",
                    b"Name : x",
                    b"x-experience-api-hash:",
                ]
            )
        out += [dash, newline, newline.join(head) + newline + newline, body, newline]
    out += [dash, fdp.PickValueInList([b"--", b"--" + newline, b"--\r\nepilogue", b""])]
    return content_type, b"".join(out)


def check_parse(body: bytes, boundary: str) -> None:
    try:
        multipart = parse(body, boundary)
    except BadRequest:
        return
    fuzzing.check(multipart.serialize() == body, "parse then serialize changed the bytes")
    fuzzing.check(
        multipart.parts and len(multipart.parts) == len(multipart.paddings),
        "parts and paddings differ",
    )
    for part in multipart.parts:
        fuzzing.check(part.headers == parse_headers(part.head), "headers differ from head")


def check_content_type(content_type: str) -> None:
    """What the strict grammar accepts, Python's MIME parser must read the same way."""
    try:
        boundary = request_boundary(content_type)
    except BadRequest:
        return
    message = email.message.Message()
    message["Content-Type"] = content_type
    fuzzing.check(
        message.get_content_type() == "multipart/mixed",
        f"{content_type!r} accepted as multipart/mixed",
    )
    fuzzing.check(
        message.get_boundary() == boundary,
        f"{content_type!r}: we read {boundary!r}, email {message.get_boundary()!r}",
    )


def check_attachments(body: bytes, content_type: str) -> None:
    try:
        attached = read_attachment_body(body, content_type)
    except BadRequest:
        return
    for sha2, part in attached.by_hash.items():
        fuzzing.check(hashlib.sha256(part.body).hexdigest() == sha2, f"part {sha2} mismatch")
    try:
        data, _ = prepare_post(attached.statements, AUTHORITY, 8)
    except (BadRequest, PayloadTooLarge):
        return
    batch = data if isinstance(data, list) else [data]
    try:
        wanted = parts_for(batch, attached.by_hash)
    except BadRequest:
        return
    fuzzing.check(len(wanted) == len(batch), "parts_for lost a statement")
    claimed = {(p.header("X-Experience-API-Hash") or "").lower() for ps in wanted for p in ps}
    fuzzing.check(claimed == set(attached.by_hash), "a part is left over or missing")
    for parts in wanted:
        again = unpack_parts(pack_parts(parts) or b"")
        fuzzing.check(
            [(p.head, p.body) for p in again] == [(p.head, p.body) for p in parts],
            "pack_parts / unpack_parts changed a part",
        )
    encoded = jsoncodec.dumps(data)
    canonical, canonical_type = canonical_body(encoded, wanted)
    rebuilt = parse(canonical, request_boundary(canonical_type))
    fuzzing.check(
        rebuilt.preamble == b"" and rebuilt.closing == b"--\r\n",
        "the canonical body keeps a preamble or an epilogue",
    )
    fuzzing.check(rebuilt.parts[0].body == encoded, "the statements part is not the new one")
    expected = list({id(p): (p.head, p.body) for ps in wanted for p in ps}.values())
    fuzzing.check(
        [(p.head, p.body) for p in rebuilt.parts[1:]] == expected,
        "the canonical body's attachment parts are not the checked ones",
    )


def test_one_input(data: bytes) -> None:
    fdp = fuzzing.provider(data)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        content_type = str(fdp.PickValueInList(CONTENT_TYPES)).replace(
            "{b}", fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 12))
        )
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
    else:
        content_type, body = built(fdp)
    try:
        boundary = boundary_of(content_type)
    except BadRequest:
        return
    fuzzing.check(
        isinstance(boundary, str) and 0 < len(boundary) <= 70,
        f"boundary {boundary!r} from {content_type!r}",
    )
    check_content_type(content_type)
    check_parse(body, boundary)
    check_attachments(body, content_type)


def seeds() -> list[bytes]:
    part = b"hello"
    sha2 = hashlib.sha256(part).hexdigest().encode()
    body = (
        b"--abc\r\nContent-Type: application/json\r\n\r\n"
        + json.dumps(statement([sha2.decode()])).encode()
        + b"\r\n--abc\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"
        b"X-Experience-API-Hash: " + sha2 + b"\r\n\r\n" + part + b"\r\n--abc--\r\n"
    )
    return [body + b"\x00\x00\x00", b"--abc--\x00\x00\x00", b"\x01" * 64]


DICTIONARY = [
    b"--",
    b"\r\n",
    b"\r\n\r\n",
    b"Content-Type: ",
    b"application/json",
    b"Content-Transfer-Encoding: binary",
    b"X-Experience-API-Hash: ",
    b"boundary=",
    b'"sha2"',
    b'"attachments"',
]

if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds=seeds(), dictionary=DICTIONARY)
    sys.exit(0)
