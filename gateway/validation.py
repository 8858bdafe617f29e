"""Strict statement validation: the whole xAPI Data chapter, 1.0.3 or 2.0 by request version.

Pure functions, no aiohttp. Section numbers are xAPI 1.0.3 Data (adlnet/xAPI-Spec,
xAPI-Data.md); "2.0" means IEEE 9274.1.1. What differs between the two:

- 2.0 timestamps must carry a time zone (1.0.3 only recommends one, 4.5.s1.b4);
- 2.0 contexts may have `contextAgents` and `contextGroups` (unknown properties in 1.0.x);
- a statement's `version` is 1.0.x under 1.0.x, 1.0.x or 2.0.x under 2.0 (2.4.10);
- an `authority` may be a 3-legged-OAuth Group of two Agents under 1.0.x only (2.4.9).
"""

from __future__ import annotations

from typing import Any

from gateway.agents import IFI_KEYS, AgentError, validate_actor, validate_agent, validate_group
from gateway.errors import BadRequest
from gateway.validation_activity import (
    check_activity,
    check_closed,
    check_extensions,
    check_fields,
    check_iri,
    check_language_map,
    check_object,
    check_string,
)
from gateway.validation_formats import (
    is_duration,
    is_language_tag,
    is_media_type,
    is_sha2_hex,
    is_statement_version,
    is_timestamp,
    is_uuid,
)

__all__ = ["validate_statement"]

VOIDED = "http://adlnet.gov/expapi/verbs/voided"
SIGNATURE_USAGE = "http://adlnet.gov/expapi/attachments/signature"

STATEMENT_KEYS = frozenset((
    "id", "actor", "verb", "object", "result", "context", "timestamp", "stored",
    "authority", "version", "attachments",
))
# 2.4.4.3.s8.b3: a SubStatement MUST NOT have id, stored, version or authority.
SUBSTATEMENT_FORBIDDEN = ("id", "stored", "version", "authority")
SUBSTATEMENT_KEYS = (STATEMENT_KEYS - frozenset(SUBSTATEMENT_FORBIDDEN)) | {"objectType"}
VERB_KEYS = frozenset(("id", "display"))
STATEMENT_REF_KEYS = frozenset(("objectType", "id"))
RESULT_KEYS = frozenset(("score", "success", "completion", "response", "duration", "extensions"))
SCORE_KEYS = frozenset(("scaled", "raw", "min", "max"))
CONTEXT_KEYS_1 = frozenset((
    "registration", "instructor", "team", "contextActivities", "revision", "platform",
    "language", "statement", "extensions",
))
CONTEXT_KEYS_2 = CONTEXT_KEYS_1 | {"contextAgents", "contextGroups"}
CONTEXT_ACTIVITY_KEYS = frozenset(("parent", "grouping", "category", "other"))
CONTEXT_AGENT_KEYS = frozenset(("objectType", "agent", "relevantTypes"))
CONTEXT_GROUP_KEYS = frozenset(("objectType", "group", "relevantTypes"))
ATTACHMENT_KEYS = frozenset((
    "usageType", "display", "description", "contentType", "length", "sha2", "fileUrl",
))
ATTACHMENT_REQUIRED = ("usageType", "display", "contentType", "length", "sha2")
OBJECT_TYPES = "Activity, Agent, Group, StatementRef, SubStatement"


def validate_statement(statement: Any, version: str, where: str) -> None:
    """Raise BadRequest, naming the path from `where`, unless `statement` is valid xAPI.

    `version` is the request's xAPI version ("1.0", "1.0.3", "2.0.0", ...: 1.0.x or 2.0.x).
    The statement is never modified: a single-Activity contextActivities value is accepted
    as sent and not wrapped in an array (the LRS returns arrays, 2.4.6.2.s4.b3), so what
    the gateway checked is byte for byte what storage gets, and a signed statement's JWS
    payload still matches.
    """
    v2 = _is_v2(version)
    try:
        _check_statement(statement, where, v2, substatement=False)
    except AgentError as exc:
        raise BadRequest(str(exc)) from None


def _is_v2(version: str) -> bool:
    major_minor = version.split(".")[:2]
    if major_minor == ["2", "0"]:
        return True
    if major_minor == ["1", "0"]:
        return False
    raise ValueError(f"statements are validated for xAPI 1.0.x and 2.0.x, not {version!r}")


def _check_statement(value: Any, where: str, v2: bool, *, substatement: bool) -> None:
    statement = check_object(value, where)
    if substatement:
        for key in SUBSTATEMENT_FORBIDDEN:
            if key in statement:
                raise BadRequest(f"{where}.{key}: a SubStatement must not have it")
        check_closed(statement, SUBSTATEMENT_KEYS, where, "a SubStatement")
    else:
        check_closed(statement, STATEMENT_KEYS, where, "a Statement")
    for key in ("actor", "verb", "object"):  # 2.2.s2.b3
        if key not in statement:
            raise BadRequest(f"{where}.{key}: is required")
    if "id" in statement and not is_uuid(statement["id"]):
        raise BadRequest(f"{where}.id: must be a UUID in its standard string form")
    validate_actor(statement["actor"], f"{where}.actor", closed=True)
    verb_id = _check_verb(statement["verb"], f"{where}.verb")
    if verb_id == VOIDED and not substatement:
        _check_voiding(statement["object"], f"{where}.object")
    is_activity = _check_object(statement["object"], f"{where}.object", v2, substatement)
    if "result" in statement:
        _check_result(statement["result"], f"{where}.result")
    if "context" in statement:
        _check_context(statement["context"], f"{where}.context", v2, is_activity)
    for key in ("timestamp", "stored"):  # stored: validated, then overwritten (2.4.8.s3.b2)
        if key in statement and not is_timestamp(statement[key], zone_required=v2):
            zone = " with a time zone" if v2 else ""
            raise BadRequest(f"{where}.{key}: must be an ISO 8601 date and time{zone}")
    if "authority" in statement:
        _check_authority(statement["authority"], f"{where}.authority", v2)
    if "version" in statement and not is_statement_version(statement["version"], v2=v2):
        allowed = "1.0.x or 2.0.x" if v2 else "1.0.x"
        raise BadRequest(f"{where}.version: must be {allowed}")
    if "attachments" in statement:
        _check_attachments(statement["attachments"], f"{where}.attachments")


def _check_verb(value: Any, where: str) -> Any:
    verb = check_fields(value, VERB_KEYS, where, "a Verb")
    if "id" not in verb:
        raise BadRequest(f"{where}.id: is required")
    check_iri(verb["id"], f"{where}.id")
    if "display" in verb:
        check_language_map(verb["display"], f"{where}.display")
    return verb["id"]


def _check_voiding(value: Any, where: str) -> None:
    # 2.3.2.s2.b1: a voiding statement's object is a StatementRef (the id is checked after).
    if not isinstance(value, dict) or value.get("objectType") != "StatementRef":
        raise BadRequest(f"{where}: a voiding statement (verb {VOIDED}) must have a "
                         "StatementRef as its object")


def _check_object(value: Any, where: str, v2: bool, in_substatement: bool) -> bool:
    """Check a statement's object; True when it is an Activity."""
    obj = check_object(value, where)
    if "objectType" not in obj:
        if any(key in obj for key in IFI_KEYS):  # 2.4.4.2.s1.b1
            raise BadRequest(f"{where}.objectType: an Agent or Group as object must say so")
        check_activity(obj, where)  # 2.4.4.s2: no objectType means Activity
        return True
    kind = obj["objectType"]
    if kind == "Activity":
        check_activity(obj, where)
        return True
    if kind == "Agent":
        validate_agent(obj, where, closed=True)
    elif kind == "Group":
        validate_group(obj, where, closed=True)
    elif kind == "StatementRef":
        _check_statement_ref(obj, where)
    elif kind == "SubStatement":
        if in_substatement:  # 2.4.4.3.s8.b4
            raise BadRequest(f"{where}: a SubStatement cannot contain a SubStatement")
        _check_statement(obj, where, v2, substatement=True)
    else:
        raise BadRequest(f"{where}.objectType: must be one of {OBJECT_TYPES}")
    return False


def _check_statement_ref(value: Any, where: str) -> None:
    ref = check_fields(value, STATEMENT_REF_KEYS, where, "a StatementRef")
    if ref.get("objectType") != "StatementRef":  # 2.4.4.3.s4.b1
        raise BadRequest(f"{where}.objectType: must be StatementRef")
    if not is_uuid(ref.get("id")):  # 2.4.4.3.s4.b2
        raise BadRequest(f"{where}.id: must be a statement's UUID")


def _is_number(value: Any) -> bool:
    # Exact types: a JSON boolean is a Python int subclass. NaN and infinities are no JSON.
    kind = type(value)
    return kind is int or (kind is float and value - value == 0)


def _check_score(value: Any, where: str) -> None:
    score = check_fields(value, SCORE_KEYS, where, "a Score")
    for key in score:
        if not _is_number(score[key]):
            raise BadRequest(f"{where}.{key}: must be a number")
    if "scaled" in score and not -1 <= score["scaled"] <= 1:
        raise BadRequest(f"{where}.scaled: must be between -1 and 1")
    low, high, raw = score.get("min"), score.get("max"), score.get("raw")
    # 2.4.5.1 table: min is "less than max", max "greater than min": strictly.
    if low is not None and high is not None and not low < high:
        raise BadRequest(f"{where}.min: must be less than max")
    if raw is not None and low is not None and raw < low:
        raise BadRequest(f"{where}.raw: must not be less than min")
    if raw is not None and high is not None and raw > high:
        raise BadRequest(f"{where}.raw: must not be greater than max")


def _check_result(value: Any, where: str) -> None:
    result = check_fields(value, RESULT_KEYS, where, "a Result")
    if "score" in result:
        _check_score(result["score"], f"{where}.score")
    for key in ("success", "completion"):
        if key in result and not isinstance(result[key], bool):
            raise BadRequest(f"{where}.{key}: must be true or false")
    if "response" in result:
        check_string(result["response"], f"{where}.response")
    if "duration" in result and not is_duration(result["duration"]):
        raise BadRequest(f"{where}.duration: must be an ISO 8601 duration (e.g. PT1H30M)")
    if "extensions" in result:
        check_extensions(result["extensions"], f"{where}.extensions")


def _check_context_activities(value: Any, where: str) -> None:
    activities = check_fields(value, CONTEXT_ACTIVITY_KEYS, where, "contextActivities")
    for key, entry in activities.items():
        # 2.4.6.2.s4.b2: a single Activity or an array of them (left as sent).
        if isinstance(entry, list):
            for index, activity in enumerate(entry):
                check_activity(activity, f"{where}.{key}[{index}]")
        else:
            check_activity(entry, f"{where}.{key}")


def _check_relevant_types(entry: dict[str, Any], where: str) -> None:
    if "relevantTypes" in entry:
        types = entry["relevantTypes"]
        if not isinstance(types, list):
            raise BadRequest(f"{where}.relevantTypes: must be an array of IRIs")
        for index, iri in enumerate(types):
            check_iri(iri, f"{where}.relevantTypes[{index}]")


def _check_context_agents(value: Any, where: str, group: bool) -> None:
    """2.0 contextAgents / contextGroups: arrays of {objectType, agent|group, relevantTypes}."""
    if not isinstance(value, list):
        raise BadRequest(f"{where}: must be an array")
    kind, member, allowed = (("contextGroup", "group", CONTEXT_GROUP_KEYS) if group
                             else ("contextAgent", "agent", CONTEXT_AGENT_KEYS))
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        entry = check_fields(item, allowed, here, f"a {kind}")
        if entry.get("objectType") != kind:
            raise BadRequest(f"{here}.objectType: must be {kind}")
        if member not in entry:
            raise BadRequest(f"{here}.{member}: is required")
        if group:
            validate_group(entry[member], f"{here}.{member}", closed=True)
        else:
            validate_agent(entry[member], f"{here}.{member}", closed=True)
        _check_relevant_types(entry, here)


def _check_context(value: Any, where: str, v2: bool, object_is_activity: bool) -> None:
    context = check_fields(value, CONTEXT_KEYS_2 if v2 else CONTEXT_KEYS_1, where, "a Context")
    if "registration" in context and not is_uuid(context["registration"]):
        raise BadRequest(f"{where}.registration: must be a UUID in its standard string form")
    if "instructor" in context:
        validate_actor(context["instructor"], f"{where}.instructor", closed=True)
    if "team" in context:
        validate_group(context["team"], f"{where}.team", closed=True)
    if "contextActivities" in context:
        _check_context_activities(context["contextActivities"], f"{where}.contextActivities")
    for key in ("revision", "platform"):
        if key in context:
            check_string(context[key], f"{where}.{key}")
            if not object_is_activity:  # 2.4.6.s4.b1, b2
                raise BadRequest(f"{where}.{key}: only allowed when the object is an Activity")
    if "language" in context and not is_language_tag(context["language"]):
        raise BadRequest(f"{where}.language: must be an RFC 5646 language tag")
    if "statement" in context:
        _check_statement_ref(context["statement"], f"{where}.statement")
    if "extensions" in context:
        check_extensions(context["extensions"], f"{where}.extensions")
    if "contextAgents" in context:
        _check_context_agents(context["contextAgents"], f"{where}.contextAgents", False)
    if "contextGroups" in context:
        _check_context_agents(context["contextGroups"], f"{where}.contextGroups", True)


def _check_authority(value: Any, where: str, v2: bool) -> None:
    # 2.4.9.s3.b1: an Agent, except in 3-legged OAuth (1.0.x): a Group of two Agents.
    if not v2 and isinstance(value, dict) and value.get("objectType") == "Group":
        validate_group(value, where, closed=True)
        if any(key in value for key in IFI_KEYS):
            raise BadRequest(f"{where}: an authority Group must be anonymous (3-legged OAuth)")
        if len(value["member"]) != 2:
            raise BadRequest(f"{where}.member: an authority Group has exactly two Agents "
                             "(the OAuth consumer and the user)")
        return
    validate_agent(value, where, closed=True)


def _check_attachment(value: Any, where: str) -> None:
    attachment = check_fields(value, ATTACHMENT_KEYS, where, "an Attachment")
    for key in ATTACHMENT_REQUIRED:
        if key not in attachment:
            raise BadRequest(f"{where}.{key}: is required")
    check_iri(attachment["usageType"], f"{where}.usageType")
    check_language_map(attachment["display"], f"{where}.display")
    if "description" in attachment:
        check_language_map(attachment["description"], f"{where}.description")
    content_type = attachment["contentType"]
    if not is_media_type(content_type):
        raise BadRequest(f"{where}.contentType: must be an Internet Media Type (type/subtype)")
    length = attachment["length"]
    if type(length) is not int or length < 0:
        raise BadRequest(f"{where}.length: must be a non-negative integer")
    if not is_sha2_hex(attachment["sha2"]):
        raise BadRequest(f"{where}.sha2: must be a hex SHA-2 digest (SHA-224/256/384/512)")
    if "fileUrl" in attachment:
        check_iri(attachment["fileUrl"], f"{where}.fileUrl", "an IRL")
    # 2.6.s4.b1: a signature is an application/octet-stream attachment.
    if attachment["usageType"] == SIGNATURE_USAGE and content_type != "application/octet-stream":
        raise BadRequest(f"{where}.contentType: a signature's must be application/octet-stream")


def _check_attachments(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise BadRequest(f"{where}: must be an array of Attachment objects")
    for index, attachment in enumerate(value):
        _check_attachment(attachment, f"{where}[{index}]")
