"""Statement bodies: parse, check their shape, give ids, set `authority` (no aiohttp here)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from gateway import jsoncodec
from gateway.agents import AgentError, agent_identity, validate_actor
from gateway.errors import BadRequest, Forbidden, PayloadTooLarge

__all__ = ["encode_statement", "is_signed", "parse_json_body", "prepare_post", "prepare_put"]

SIGNATURE_USAGE = "http://adlnet.gov/expapi/attachments/signature"


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
        raise BadRequest(f"the request body is not valid JSON: {exc.msg} at line "
                         f"{exc.lineno} column {exc.colno}") from None


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _canonical_uuid(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: must be a UUID string")
    if _UUID.fullmatch(value) is None:
        raise BadRequest(f"{where}: {value[:60]!r} is not a UUID in canonical form")
    return value


def _check_statement(statement: Any, where: str) -> None:
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


def is_signed(statement: dict[str, Any]) -> bool:
    """True when the statement carries a JWS signature attachment (xAPI Data 2.6)."""
    attachments = statement.get("attachments")
    return isinstance(attachments, list) and any(
        isinstance(a, dict) and a.get("usageType") == SIGNATURE_USAGE for a in attachments)


def _check_verbatim(statement: dict[str, Any], authority: dict[str, Any], where: str) -> None:
    """A signed statement passed unchanged must need nothing from us and claim no one else."""
    if "id" not in statement:
        raise BadRequest(f"{where}: a signed statement needs its own id: the gateway passes "
                         "signed statements unchanged (xapi.signed_statements is verbatim), "
                         "so an id added here would break the signature check at the LRS")
    # The signature covers it, so it must already be right: the caller's own. (Left out,
    # the LRS would stamp its own credential's, and read/mine would never show it.)
    if "authority" not in statement:
        raise BadRequest(f"{where}: a signed statement needs the caller as its authority: "
                         "the gateway passes signed statements unchanged "
                         "(xapi.signed_statements is verbatim)")
    if agent_identity(statement["authority"]) != agent_identity(authority):
        raise Forbidden(f"{where}: a signed statement's authority must be the caller's own")


def _complete(statement: dict[str, Any], authority: dict[str, Any],
              signed_verbatim: bool, where: str) -> None:
    """Fix what the storage LRS would otherwise choose, so every copy is identical."""
    if signed_verbatim and is_signed(statement):
        _check_verbatim(statement, authority, where)
        return
    if "id" not in statement:
        statement["id"] = str(uuid.uuid4())
    if "timestamp" not in statement:
        # Without a timestamp an LRS stamps its own storage time, and a retried or
        # forwarded copy then differs from the stored one (Ralph answers 409 to a resend).
        statement["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    statement["authority"] = authority


def prepare_post(data: Any, authority: dict[str, Any], max_batch: int = 1000,
                 signed_verbatim: bool = False) -> tuple[Any, list[str]]:
    """Check one statement or a list, give each an id, set authority; return (body, ids).

    With `signed_verbatim`, signed statements are checked but left as they are.
    """
    batch = data if isinstance(data, list) else [data]
    if isinstance(data, list) and not data:
        raise BadRequest("the statement list is empty")
    if len(batch) > max_batch:
        raise PayloadTooLarge(f"a batch holds at most {max_batch} statements")
    ids: list[str] = []
    for index, statement in enumerate(batch):
        where = f"statements[{index}]" if isinstance(data, list) else "statement"
        _check_statement(statement, where)
        _complete(statement, authority, signed_verbatim, where)
        ids.append(statement["id"])
    if len({i.lower() for i in ids}) != len(ids):
        raise BadRequest("the batch holds the same statement id more than once")
    return data, ids


def prepare_put(data: Any, statement_id: str | None, authority: dict[str, Any],
                signed_verbatim: bool = False) -> Any:
    """Check a PUT body against its `statementId`, set the id and authority."""
    if statement_id is None:
        raise BadRequest("PUT /statements needs the statementId query parameter")
    statement_id = _canonical_uuid(statement_id, "statementId")
    _check_statement(data, "statement")
    if "id" in data and str(data["id"]).lower() != statement_id.lower():
        raise BadRequest("the statement's id differs from the statementId parameter")
    if not (signed_verbatim and is_signed(data)):
        data["id"] = data.get("id", statement_id)
    _complete(data, authority, signed_verbatim, "statement")
    return data
