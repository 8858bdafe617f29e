"""Statement bodies: parse, check their shape, give ids, set `authority` (no aiohttp here)."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway import jsoncodec
from gateway.errors import BadRequest, Forbidden, PayloadTooLarge
from gateway.xapi.agents import AgentError, agent_identity, validate_actor, validate_agent
from gateway.xapi.validation import validate_statement

__all__ = ["encode_statement", "is_signed", "parse_json_body", "prepare_post", "prepare_put"]

SIGNATURE_USAGE = "http://adlnet.gov/expapi/attachments/signature"
# Data 2.6: the JWS of a signed statement uses RS256, RS384 or RS512.
_SIGNATURE_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
_JWS_COMPACT = re.compile(rb"([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def encode_statement(statement: Any) -> bytes:
    """The bytes storage and every target get.

    400 for what parses but cannot be written back (orjson reads 1024 levels, writes 254).
    """
    try:
        return jsoncodec.dumps(statement)
    except jsoncodec.JSONEncodeError:
        raise BadRequest("a statement nests too deeply (at most 250 levels)") from None


def parse_json_body(body: bytes) -> Any:
    """Decode a JSON body or raise BadRequest saying why."""
    if not body.strip():
        raise BadRequest("the request body is empty; a statement or a list of statements is needed")
    try:
        return jsoncodec.loads(body)
    except jsoncodec.JSONDecodeError as exc:
        raise BadRequest(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _canonical_uuid(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: must be a UUID string")
    if _UUID.fullmatch(value) is None:
        raise BadRequest(f"{where}: {value[:60]!r} is not a UUID in canonical form")
    return value


def _check_statement(statement: Any, where: str, version: str, strict: bool) -> None:
    if strict:
        validate_statement(statement, version, where)
        return
    if not isinstance(statement, dict):
        raise BadRequest(f"{where}: a statement must be a JSON object")
    if "id" in statement:
        _canonical_uuid(statement["id"], f"{where}.id")
    for key in ("actor", "verb", "object"):
        if key not in statement:
            raise BadRequest(f"{where}: the {key!r} property is required")
    try:
        validate_actor(statement["actor"], f"{where}.actor")
    except AgentError as exc:
        raise BadRequest(str(exc)) from None
    verb = statement["verb"]
    if not isinstance(verb, dict) or not isinstance(verb.get("id"), str) or ":" not in verb["id"]:
        raise BadRequest(f"{where}.verb: must be an object with an IRI id")
    if not isinstance(statement["object"], dict):
        raise BadRequest(f"{where}.object: must be an object")
    if "authority" in statement:  # replaced below, but an invalid one is refused (2.4.9)
        try:
            validate_actor(statement["authority"], f"{where}.authority")
        except AgentError as exc:
            raise BadRequest(str(exc)) from None


def _is_jws(token: bytes) -> bool:
    """A JWS in compact form whose header names an algorithm xAPI allows."""
    match = _JWS_COMPACT.fullmatch(token)
    if match is None:
        return False
    encoded = match.group(1)
    try:
        header = jsoncodec.loads(base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and header.get("alg") in _SIGNATURE_ALGORITHMS


def is_signed(statement: dict[str, Any], signatures: Mapping[str, bytes]) -> bool:
    """True when the statement really carries a JWS signature (xAPI Data 2.6).

    The claim in its attachments is not enough: the signature part must be in the request
    (`signatures`: part bodies by lower-cased sha2) and be a JWS.
    """
    attachments = statement.get("attachments")
    if not isinstance(attachments, list):
        return False
    for attachment in attachments:
        if isinstance(attachment, dict) and attachment.get("usageType") == SIGNATURE_USAGE:
            sha2 = attachment.get("sha2")
            token = signatures.get(sha2.lower()) if isinstance(sha2, str) else None
            return token is not None and _is_jws(token)
    return False


def _check_verbatim(statement: dict[str, Any], authority: dict[str, Any], where: str) -> None:
    """A signed statement passed unchanged must need nothing from us and claim no one else."""
    if "id" not in statement:
        raise BadRequest(
            f"{where}: a signed statement needs its own id: the gateway passes "
            "signed statements unchanged (xapi.signed_statements is verbatim), "
            "so an id added here would break the signature check at the LRS"
        )
    if "authority" not in statement:
        return  # storage stamps its own, as xAPI has it (Data 2.4.9)
    # The signature covers it, so it must already be right: exactly the caller's Agent.
    # A Group (whose members read/mine would count) or a second identifier is refused.
    claimed = statement["authority"]
    try:
        validate_agent(claimed, f"{where}.authority", closed=True)
    except AgentError as exc:
        raise BadRequest(
            f"{exc}: a signed statement passed unchanged needs the caller's "
            "own Agent as authority, or none"
        ) from None
    if agent_identity(claimed) != agent_identity(authority):
        raise Forbidden(f"{where}: a signed statement's authority must be the caller's own")


def _complete(
    statement: dict[str, Any],
    authority: dict[str, Any],
    verbatim: Mapping[str, bytes] | None,
    where: str,
) -> None:
    """Fix what the storage LRS would otherwise choose, so every copy is identical.

    With `verbatim` (the request's signature parts), a really signed statement is left as
    it is, once it is checked.
    """
    if verbatim is not None and is_signed(statement, verbatim):
        _check_verbatim(statement, authority, where)
        return
    if "id" not in statement:
        statement["id"] = str(uuid.uuid4())
    if "timestamp" not in statement:
        # Without a timestamp an LRS stamps its own storage time, and a retried or
        # forwarded copy then differs from the stored one (Ralph answers 409 to a resend).
        statement["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    statement["authority"] = authority


def prepare_post(
    data: Any,
    authority: dict[str, Any],
    max_batch: int = 1000,
    verbatim: Mapping[str, bytes] | None = None,
    *,
    version: str = "1.0.3",
    strict: bool = False,
) -> tuple[Any, list[str]]:
    """Check one statement or a list, give each an id, set authority; return (body, ids).

    `verbatim`: with `xapi.signed_statements: verbatim`, the request's attachment parts
    (bodies by lower-cased sha2); really signed statements are checked but left as they
    are. `strict`: the whole Data chapter for `version` (gateway.xapi.validation).
    """
    batch = data if isinstance(data, list) else [data]
    if isinstance(data, list) and not data:
        raise BadRequest("the statement list is empty")
    if len(batch) > max_batch:
        raise PayloadTooLarge(f"a batch holds at most {max_batch} statements")
    ids: list[str] = []
    for index, statement in enumerate(batch):
        where = f"statements[{index}]" if isinstance(data, list) else "statement"
        _check_statement(statement, where, version, strict)
        _complete(statement, authority, verbatim, where)
        ids.append(statement["id"])
    if len({i.lower() for i in ids}) != len(ids):
        raise BadRequest("the batch holds the same statement id more than once")
    return data, ids


def prepare_put(
    data: Any,
    statement_id: str | None,
    authority: dict[str, Any],
    verbatim: Mapping[str, bytes] | None = None,
    *,
    version: str = "1.0.3",
    strict: bool = False,
) -> Any:
    """Check a PUT body against its `statementId`, set the id and authority."""
    if statement_id is None:
        raise BadRequest("PUT /statements needs the statementId query parameter")
    statement_id = _canonical_uuid(statement_id, "statementId")
    _check_statement(data, "statement", version, strict)
    if "id" in data and str(data["id"]).lower() != statement_id.lower():
        raise BadRequest("the statement's id differs from the statementId parameter")
    if not (verbatim is not None and is_signed(data, verbatim)):
        data["id"] = data.get("id", statement_id)
    _complete(data, authority, verbatim, "statement")
    return data
