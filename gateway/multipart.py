"""multipart/mixed as xAPI uses it for attachments: parsed and written back byte for byte.

Only the statement part is ever rewritten; every other part, its header lines included,
is emitted exactly as received. No aiohttp here: pure bytes in, bytes out.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from gateway.errors import BadRequest

__all__ = ["Multipart", "Part", "boundary_of", "build", "parse", "parse_headers"]

_CRLF = b"\r\n"
_BOUNDARY_CHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_BOUNDARY = re.compile(r"""boundary\s*=\s*(?:"([^"]{1,70})"|([^;\s]{1,70}))""", re.IGNORECASE)


@dataclass
class Part:
    """One body part: its raw header block (with the blank line) and its content."""

    head: bytes
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names, first wins

    def header(self, name: str) -> str | None:
        """A header's value, by case-insensitive name."""
        return self.headers.get(name.lower())

    def with_body(self, body: bytes) -> Part:
        """The same part with a new body (and Content-Length fixed if it had one)."""
        head = re.sub(rb"(?im)^(content-length[ \t]*:[ \t]*)\d+", rb"\g<1>%d" % len(body),
                      self.head)
        return Part(head, body, dict(self.headers))


@dataclass
class Multipart:
    """A parsed body: what came before the first delimiter, the parts, what came after."""

    boundary: bytes
    preamble: bytes
    parts: list[Part]
    paddings: list[bytes]  # whitespace after each delimiter (kept to re-emit exactly)
    closing: bytes  # everything from the closing delimiter's "--" on

    def serialize(self) -> bytes:
        """The body again: identical bytes when nothing was changed."""
        dash = b"--" + self.boundary
        out = [self.preamble]
        for part, padding in zip(self.parts, self.paddings, strict=True):
            out += [dash, padding, _CRLF, part.head, part.body, _CRLF]
        out += [dash, self.closing]
        return b"".join(out)


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type, or 400."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise BadRequest("multipart/mixed needs a boundary parameter")
    boundary = match.group(1) or match.group(2)
    if not _BOUNDARY_CHARS.fullmatch(boundary):
        raise BadRequest("the multipart boundary has characters RFC 2046 does not allow")
    return boundary


def parse_headers(head: bytes) -> dict[str, str]:
    """Header lines by lower-cased name (the first of a repeated name wins)."""
    headers: dict[str, str] = {}
    for line in head.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip() or name != name.rstrip():
            raise BadRequest("a multipart part has a malformed header line")
        key = name.decode("latin-1").lower()
        headers.setdefault(key, value.strip().decode("latin-1"))
    return headers


def parse(body: bytes, boundary: str) -> Multipart:
    """Split `body` into parts (RFC 2046), or raise BadRequest saying what is wrong."""
    dash = b"--" + boundary.encode("latin-1")
    if body.startswith(dash):
        position, preamble = 0, b""
    else:
        found = body.find(_CRLF + dash)
        if found < 0:
            raise BadRequest("the multipart body has no delimiter for its boundary")
        position, preamble = found + 2, body[:found + 2]
    parts: list[Part] = []
    paddings: list[bytes] = []
    while True:
        after = position + len(dash)
        if body[after:after + 2] == b"--":
            if not parts:
                raise BadRequest("the multipart body has no parts")
            return Multipart(dash[2:], preamble, parts, paddings, body[after:])
        line_end = body.find(_CRLF, after)
        if line_end < 0 or body[after:line_end].strip(b" \t"):
            raise BadRequest("a multipart delimiter line is malformed")
        paddings.append(body[after:line_end])
        start = line_end + 2
        end = body.find(_CRLF + dash, start)
        if end < 0:
            raise BadRequest("the multipart body is not closed")
        raw = body[start:end]
        if raw.startswith(_CRLF):
            head, content = _CRLF, raw[2:]
        else:
            split = raw.find(_CRLF + _CRLF)
            if split < 0:
                raise BadRequest("a multipart part has no blank line after its headers")
            head, content = raw[:split + 4], raw[split + 4:]
        parts.append(Part(head, content, parse_headers(head)))
        position = end + 2


def build(parts: list[Part]) -> tuple[bytes, str]:
    """A new multipart/mixed body from parts (their heads as they are); (body, boundary)."""
    boundary = "lrs-gateway-" + secrets.token_hex(12)
    dash = b"--" + boundary.encode()
    out: list[bytes] = []
    for part in parts:
        out += [dash, _CRLF, part.head, part.body, _CRLF]
    out += [dash, b"--", _CRLF]
    return b"".join(out), boundary
