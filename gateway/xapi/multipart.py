"""multipart/mixed as xAPI uses it for attachments: parsed, checked, and built anew.

A client's body is never passed on around the parts the gateway checked: what storage and
the targets get is built here (`build`), with the gateway's own boundary and no preamble or
epilogue, so no other parser can find parts the gateway did not see. Attachment parts,
their header lines included, go on byte for byte once their headers are unambiguous.
An LRS's answers are read liberally and re-emitted exactly (`Multipart.serialize`).
No aiohttp here: pure bytes in, bytes out.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import BadRequest

__all__ = [
    "Multipart",
    "Part",
    "boundary_of",
    "build",
    "check_head",
    "parse",
    "parse_answer",
    "parse_headers",
    "request_boundary",
]

_CRLF = b"\r\n"
_BOUNDARY_CHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_BOUNDARY = re.compile(
    r"""(?:^|;)\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^;\s]{1,70}))""", re.IGNORECASE
)
# RFC 9110 5.6.2 / 8.3.1: media-type = token "/" token *( OWS ";" OWS [ parameter ] ),
# parameter = token "=" ( token / quoted-string ); no whitespace around "=".
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r"""((?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*)"""
_MEDIA_TYPE = re.compile(rf"[ \t]*({_TCHARS})/({_TCHARS})")
_PARAMETER = re.compile(rf"""[ \t]*;[ \t]*(?:({_TCHARS})=(?:({_TCHARS})|"{_QUOTED}"))?""")
_OWS_END = re.compile(r"[ \t]*")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header values: visible ASCII, spaces and tabs, and obs-text; no control character.
_HEADER_VALUE = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")


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
        head = re.sub(
            rb"(?im)^(content-length[ \t]*:[ \t]*)\d+", rb"\g<1>%d" % len(body), self.head
        )
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


def request_boundary(content_type: str) -> str:
    """The boundary of a client's multipart/mixed Content-Type, read strictly, or 400.

    Strict because another parser must not read a different boundary from the same value
    (a second `boundary`, a look-alike parameter, spaces around "=", escapes): anything
    outside RFC 9110's grammar is refused rather than guessed at.
    """
    media = _MEDIA_TYPE.match(content_type)
    if media is None or (media.group(1).lower(), media.group(2).lower()) != ("multipart", "mixed"):
        raise BadRequest("the Content-Type is not a well-formed multipart/mixed media type")
    parameters: dict[str, str] = {}
    position = media.end()
    while position < len(content_type):
        parameter = _PARAMETER.match(content_type, position)
        if parameter is None or parameter.end() == position:
            if _OWS_END.fullmatch(content_type, position):
                break
            raise BadRequest(
                "the Content-Type's parameters are malformed (RFC 9110: "
                "name=value or name=\"value\", separated by ';')"
            )
        position = parameter.end()
        name = parameter.group(1)
        if name is None:
            continue  # an empty parameter (";;"), which RFC 9110 allows
        key = name.lower()
        if key in parameters:
            raise BadRequest(f"the Content-Type names the parameter {key[:40]!r} twice")
        quoted = parameter.group(3)
        if quoted is not None and "\\" in quoted and key == "boundary":
            raise BadRequest("the multipart boundary may not hold escapes")
        parameters[key] = parameter.group(2) if quoted is None else quoted
    boundary = parameters.get("boundary")
    if boundary is None:
        raise BadRequest("multipart/mixed needs a boundary parameter")
    if not _BOUNDARY_CHARS.fullmatch(boundary):
        raise BadRequest("the multipart boundary has characters RFC 2046 does not allow")
    return boundary


def boundary_of(content_type: str) -> str:
    """The boundary parameter of an LRS's multipart Content-Type (read liberally), or 400."""
    with contextlib.suppress(BadRequest):
        return request_boundary(content_type)
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


def check_head(head: bytes, where: str) -> None:
    """400 unless a client's part header block reads the same to every parser.

    No folded lines, no control characters (a lone CR or LF is a line break to some
    parsers), no name twice (parsers differ on which one wins).
    """
    names: set[bytes] = set()
    for line in head[:-2].split(_CRLF) if head.endswith(_CRLF) else [head]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise BadRequest(f"{where} has a malformed header line")
        key = name.lower()
        if key in names:
            raise BadRequest(f"{where} has the header {key.decode()[:40]!r} twice")
        names.add(key)


def parse(body: bytes, boundary: str) -> Multipart:
    """Split `body` into parts (RFC 2046), or raise BadRequest saying what is wrong."""
    dash = b"--" + boundary.encode("latin-1")
    if body.startswith(dash):
        position, preamble = 0, b""
    else:
        found = body.find(_CRLF + dash)
        if found < 0:
            raise BadRequest("the multipart body has no delimiter for its boundary")
        position, preamble = found + 2, body[: found + 2]
    parts: list[Part] = []
    paddings: list[bytes] = []
    while True:
        after = position + len(dash)
        if body[after : after + 2] == b"--":
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
            head, content = raw[: split + 4], raw[split + 4 :]
        parts.append(Part(head, content, parse_headers(head)))
        position = end + 2


def parse_answer(body: bytes, boundary: str) -> Multipart:
    """An LRS's multipart answer, read liberally; never for what a client sends.

    What `parse` reads is kept as it is (so `serialize` gives the same bytes back). Beyond
    that, a closing delimiter without the CRLF before it (`...}--boundary--`, as Learning
    Locker writes it) is taken as closing the last part; that CRLF is then added, so what
    the client gets is well-formed.
    """
    try:
        return parse(body, boundary)
    except BadRequest:
        dash = b"--" + boundary.encode("latin-1")
        closing = body.rfind(dash + b"--")
        if closing <= 0 or body[closing - 2 : closing] == _CRLF:
            raise
        return parse(body[:closing] + _CRLF + body[closing:], boundary)


def build(
    parts: list[Part],
    new_boundary: Callable[[], str] = lambda: "lrs-gateway-" + secrets.token_hex(12),
) -> tuple[bytes, str]:
    """A new multipart/mixed body from parts (their heads as they are); (body, boundary).

    The boundary is random and never found inside a part.
    """
    while True:
        boundary = new_boundary()
        dash = b"--" + boundary.encode()
        if not any(dash in part.head or dash in part.body for part in parts):
            break
    out: list[bytes] = []
    for part in parts:
        out += [dash, _CRLF, part.head, part.body, _CRLF]
    out += [dash, b"--", _CRLF]
    return b"".join(out), boundary
