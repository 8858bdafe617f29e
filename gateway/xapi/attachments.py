"""xAPI attachments (Communication 1.5.2): statement parts matched to binary parts by sha2."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from gateway.errors import BadRequest
from gateway.xapi.multipart import Part, build, check_head, parse, parse_headers, request_boundary
from gateway.xapi.statements import parse_json_body

__all__ = [
    "AttachmentBody",
    "canonical_body",
    "pack_parts",
    "parts_for",
    "read_attachment_body",
    "unpack_parts",
]

_STATEMENTS_HEAD = b"Content-Type: application/json\r\n\r\n"
# Data 2.4.11: "the SHA-2 hash": SHA-224, -256, -384 or -512, told apart by length in hex.
_SHA2_BY_LENGTH = {56: "sha224", 64: "sha256", 96: "sha384", 128: "sha512"}


class AttachmentBody:
    """A multipart statements request: the statements, and the parts by their sha2."""

    def __init__(self, statements: Any, by_hash: dict[str, Part]) -> None:
        self.statements = statements
        self.by_hash = by_hash


def canonical_body(encoded: bytes, wanted: Sequence[Sequence[Part]]) -> tuple[bytes, str]:
    """The body storage gets: our statements, then each wanted part once; (body, type).

    Nothing of the client's body but the checked attachment parts survives: not its
    boundary, preamble, epilogue or statement part.
    """
    unique = {id(part): part for found in wanted for part in found}
    body, boundary = build([Part(_STATEMENTS_HEAD, encoded), *unique.values()])
    return body, f"multipart/mixed; boundary={boundary}"


def read_attachment_body(body: bytes, content_type: str) -> AttachmentBody:
    """Parse and check the parts; 400 saying which rule a part breaks."""
    multipart = parse(body, request_boundary(content_type))
    for index, part in enumerate(multipart.parts):
        check_head(part.head, f"multipart part {index}")
        length = part.header("Content-Length")
        if length is not None and length != str(len(part.body)):
            raise BadRequest(f"multipart part {index} has a Content-Length that is not its size")
    first = multipart.parts[0]
    if not (first.header("Content-Type") or "").lower().startswith("application/json"):
        raise BadRequest(
            "the first part of a multipart statement request must be the "
            "statements, as application/json"
        )
    by_hash: dict[str, Part] = {}
    for index, part in enumerate(multipart.parts[1:], start=1):
        sha2 = part.header("X-Experience-API-Hash")
        if not sha2:
            raise BadRequest(f"multipart part {index} has no X-Experience-API-Hash header")
        if (part.header("Content-Transfer-Encoding") or "").lower() != "binary":
            raise BadRequest(f"multipart part {index} needs Content-Transfer-Encoding: binary")
        algorithm = _SHA2_BY_LENGTH.get(len(sha2))
        if algorithm is None or hashlib.new(algorithm, part.body).hexdigest() != sha2.lower():
            raise BadRequest(f"multipart part {index} does not match its X-Experience-API-Hash")
        by_hash[sha2.lower()] = part
    return AttachmentBody(parse_json_body(first.body), by_hash)


def _attachments(statement: Any, where: str) -> list[dict[str, Any]]:
    found = statement.get("attachments", []) if isinstance(statement, dict) else []
    if not isinstance(found, list) or not all(isinstance(a, dict) for a in found):
        raise BadRequest(f"{where}.attachments: must be a list of objects")
    for index, attachment in enumerate(found):
        if not isinstance(attachment.get("sha2"), str):
            raise BadRequest(f"{where}.attachments[{index}].sha2: must be a string")
    return found


def parts_for(statements: Sequence[Any], by_hash: dict[str, Part]) -> list[list[Part]]:
    """Each statement's parts; 400 for a missing part or a part no attachment claims."""
    wanted: list[list[Part]] = []
    claimed: set[str] = set()
    for index, statement in enumerate(statements):
        mine: list[Part] = []
        for attachment in _attachments(statement, f"statements[{index}]"):
            sha2 = attachment["sha2"].lower()
            part = by_hash.get(sha2)
            if part is None:
                if "fileUrl" in attachment:
                    continue  # fetched from its URL: no part needed
                raise BadRequest(
                    f"statements[{index}]: no multipart part for the "
                    f"attachment with sha2 {sha2[:64]}"
                )
            claimed.add(sha2)
            if part not in mine:
                mine.append(part)
        wanted.append(mine)
    extra = sorted(set(by_hash) - claimed)
    if extra:
        raise BadRequest(f"a multipart part matches no attachment (sha2 {extra[0][:64]})")
    return wanted


def pack_parts(parts: Sequence[Part]) -> bytes | None:
    """A statement's attachment parts as one blob for the outbox (None when it has none)."""
    if not parts:
        return None
    return b"".join(
        len(p.head).to_bytes(4, "big") + p.head + len(p.body).to_bytes(8, "big") + p.body
        for p in parts
    )


def unpack_parts(blob: bytes) -> list[Part]:
    """The parts `pack_parts` stored."""
    parts: list[Part] = []
    position = 0
    while position < len(blob):
        head_size = int.from_bytes(blob[position : position + 4], "big")
        head = blob[position + 4 : position + 4 + head_size]
        position += 4 + head_size
        body_size = int.from_bytes(blob[position : position + 8], "big")
        body = blob[position + 8 : position + 8 + body_size]
        position += 8 + body_size
        parts.append(Part(head, body, parse_headers(head)))
    return parts
