"""Strict statement validation: the whole xAPI Data chapter, 1.0.3 or 2.0 by request version.

Pure functions, no aiohttp. Section numbers are xAPI 1.0.3 Data (adlnet/xAPI-Spec,
xAPI-Data.md); "2.0" means IEEE 9274.1.1. What differs between the two:

- 2.0 timestamps must carry a time zone (1.0.3 only recommends one, 4.5.s1.b4);
- 2.0 contexts may have `contextAgents` and `contextGroups` (unknown properties in 1.0.x);
- a statement's `version` is 1.0.x under 1.0.x, 1.0.x or 2.0.x under 2.0 (2.4.10);
- an `authority` may be a 3-legged-OAuth Group of two Agents under 1.0.x only (2.4.9).
"""

from __future__ import annotations

import marshal
from collections.abc import Callable
from typing import Any

from gateway.errors import BadRequest
from gateway.xapi.agents import (
    ACCOUNT_KEYS,
    AGENT_KEYS,
    GROUP_KEYS,
    IFI_KEYS,
    IFI_SET,
    AgentError,
    validate_actor,
    validate_agent,
    validate_group,
)
from gateway.xapi.formats import (
    is_duration,
    is_iri,
    is_language_tag,
    is_mailto,
    is_media_type,
    is_sha1_hex,
    is_sha2_hex,
    is_statement_version,
    is_timestamp,
    is_uuid,
)
from gateway.xapi.validation_activity import (
    ACTIVITY_KEYS,
    COMPONENT_KEYS,
    COMPONENT_LISTS,
    DEFINITION_KEYS,
    LISTS_BY_TYPE,
    check_activity,
    check_closed,
    check_extensions,
    check_fields,
    check_iri,
    check_language_map,
    check_object,
    check_string,
)

__all__ = ["validate_statement"]

VOIDED = "http://adlnet.gov/expapi/verbs/voided"
SIGNATURE_USAGE = "http://adlnet.gov/expapi/attachments/signature"

STATEMENT_KEYS = frozenset(
    (
        "id",
        "actor",
        "verb",
        "object",
        "result",
        "context",
        "timestamp",
        "stored",
        "authority",
        "version",
        "attachments",
    )
)
# 2.4.4.3.s8.b3: a SubStatement MUST NOT have id, stored, version or authority.
SUBSTATEMENT_FORBIDDEN = ("id", "stored", "version", "authority")
SUBSTATEMENT_KEYS = (STATEMENT_KEYS - frozenset(SUBSTATEMENT_FORBIDDEN)) | {"objectType"}
VERB_KEYS = frozenset(("id", "display"))
STATEMENT_REF_KEYS = frozenset(("objectType", "id"))
RESULT_KEYS = frozenset(("score", "success", "completion", "response", "duration", "extensions"))
SCORE_KEYS = frozenset(("scaled", "raw", "min", "max"))
CONTEXT_KEYS_1 = frozenset(
    (
        "registration",
        "instructor",
        "team",
        "contextActivities",
        "revision",
        "platform",
        "language",
        "statement",
        "extensions",
    )
)
CONTEXT_KEYS_2 = CONTEXT_KEYS_1 | {"contextAgents", "contextGroups"}
CONTEXT_ACTIVITY_KEYS = frozenset(("parent", "grouping", "category", "other"))
CONTEXT_AGENT_KEYS = frozenset(("objectType", "agent", "relevantTypes"))
CONTEXT_GROUP_KEYS = frozenset(("objectType", "group", "relevantTypes"))
ATTACHMENT_KEYS = frozenset(
    (
        "usageType",
        "display",
        "description",
        "contentType",
        "length",
        "sha2",
        "fileUrl",
    )
)
ATTACHMENT_REQUIRED = ("usageType", "display", "contentType", "length", "sha2")
OBJECT_TYPES = "Activity, Agent, Group, StatementRef, SubStatement"
INTERACTION_ONLY_KEYS = frozenset(("correctResponsesPattern", *COMPONENT_LISTS))


def validate_statement(statement: Any, version: str, where: str) -> None:
    """Raise BadRequest, naming the path from `where`, unless `statement` is valid xAPI.

    `version` is the request's xAPI version ("1.0", "1.0.3", "2.0.0", ...: 1.0.x or 2.0.x).
    The statement is never modified: a single-Activity contextActivities value is accepted
    as sent and not wrapped in an array (the LRS returns arrays, 2.4.6.2.s4.b3), so what
    the gateway checked is byte for byte what storage gets, and a signed statement's JWS
    payload still matches.
    """
    v2 = _is_v2(version)
    if _fast_statement(statement, v2, substatement=False):
        return
    try:
        _check_statement(statement, where, v2, substatement=False)
    except AgentError as exc:
        raise BadRequest(str(exc)) from None


def _is_v2(version: str) -> bool:
    if version == "1.0.3":
        return False
    if version == "2.0.0":
        return True
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
        raise BadRequest(
            f"{where}: a voiding statement (verb {VOIDED}) must have a StatementRef as its object"
        )


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
    kind, member, allowed = (
        ("contextGroup", "group", CONTEXT_GROUP_KEYS)
        if group
        else ("contextAgent", "agent", CONTEXT_AGENT_KEYS)
    )
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
            raise BadRequest(
                f"{where}.member: an authority Group has exactly two Agents "
                "(the OAuth consumer and the user)"
            )
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


# ---- the fast path ------------------------------------------------------------------------
# Nearly every statement written is valid. `_fast_statement` answers True only for a
# statement the checks above accept, with few calls and no path strings; False means "not
# sure", and the checks above then run and raise the exact error (or accept an uncommon
# form the fast path leaves to them). It never raises. It checks exact JSON types (`type(x)
# is str`), so anything unusual goes the slow way.


def _fast_language_map(value: Any) -> bool:
    if type(value) is not dict:
        return False
    for tag, text in value.items():
        if type(text) is not str or not is_language_tag(tag):
            return False
    return True


def _fast_extensions(value: Any) -> bool:
    if type(value) is not dict:
        return False
    return all(map(is_iri, value))


def _fast_agent(obj: Any) -> bool:
    if type(obj) is not dict or not AGENT_KEYS.issuperset(obj):
        return False
    if "objectType" in obj and obj["objectType"] != "Agent":
        return False
    if "name" in obj and type(obj["name"]) is not str:
        return False
    return _fast_ifi(obj, required=True)


def _fast_ifi(obj: dict[str, Any], *, required: bool) -> bool:
    present = IFI_SET.intersection(obj)
    if len(present) != 1:
        return not present and not required
    key = next(iter(present))
    value = obj[key]
    if key == "account":
        return (
            type(value) is dict
            and ACCOUNT_KEYS.issuperset(value)
            and is_iri(value.get("homePage"))
            and type(value.get("name")) is str
            and value["name"] != ""
        )
    if key == "mbox":
        return is_mailto(value)
    if key == "openid":
        return is_iri(value)
    return is_sha1_hex(value)


def _fast_group(obj: Any) -> bool:
    if type(obj) is not dict or obj.get("objectType") != "Group" or not GROUP_KEYS.issuperset(obj):
        return False
    if "name" in obj and type(obj["name"]) is not str:
        return False
    if not _fast_ifi(obj, required=False):
        return False
    if "member" not in obj:
        return not IFI_SET.isdisjoint(obj)
    members = obj["member"]
    if type(members) is not list or (not members and IFI_SET.isdisjoint(obj)):
        return False
    return all(map(_fast_agent, members))


def _fast_actor(obj: Any) -> bool:
    if type(obj) is dict and obj.get("objectType") == "Group":
        return _fast_group(obj)
    return _fast_agent(obj)


def _fast_components(value: Any) -> bool:
    if type(value) is not list:
        return False
    seen: set[str] = set()
    for component in value:
        if type(component) is not dict or not COMPONENT_KEYS.issuperset(component):
            return False
        component_id = component.get("id")
        if type(component_id) is not str or component_id in seen:
            return False
        seen.add(component_id)
        if "description" in component and not _fast_language_map(component["description"]):
            return False
    return True


def _fast_definition(definition: Any) -> bool:
    if type(definition) is not dict or not DEFINITION_KEYS.issuperset(definition):
        return False
    if "name" in definition and not _fast_language_map(definition["name"]):
        return False
    if "description" in definition and not _fast_language_map(definition["description"]):
        return False
    if "type" in definition and not is_iri(definition["type"]):
        return False
    if "moreInfo" in definition and not is_iri(definition["moreInfo"]):
        return False
    if "extensions" in definition and not _fast_extensions(definition["extensions"]):
        return False
    if "interactionType" not in definition:
        return INTERACTION_ONLY_KEYS.isdisjoint(definition)
    kind = definition["interactionType"]
    lists = LISTS_BY_TYPE.get(kind) if type(kind) is str else None
    if lists is None:
        return False
    if "correctResponsesPattern" in definition:
        patterns = definition["correctResponsesPattern"]
        if type(patterns) is not list:
            return False
        for pattern in patterns:
            if type(pattern) is not str:
                return False
    for key in COMPONENT_LISTS:
        if key in definition and (key not in lists or not _fast_components(definition[key])):
            return False
    return True


def _fast_activity(activity: Any) -> bool:
    if type(activity) is not dict or not ACTIVITY_KEYS.issuperset(activity):
        return False
    if "objectType" in activity and activity["objectType"] != "Activity":
        return False
    if not is_iri(activity.get("id")):
        return False
    return "definition" not in activity or _fast_definition(activity["definition"])


def _fast_context_activities(activities: Any) -> bool:
    if type(activities) is not dict or not CONTEXT_ACTIVITY_KEYS.issuperset(activities):
        return False
    for entry in activities.values():
        if type(entry) is list:
            for activity in entry:
                if not _fast_activity(activity):
                    return False
        elif not _fast_activity(entry):
            return False
    return True


# Statement after statement repeats the same Activities (with their long definitions) and
# contextActivities: a bounded memo of the valid ones spares checking them again. The key
# is marshal's format 2, which writes exact builtin types only (a str or dict subclass, an
# Enum, a cycle are refused: checked every time, as anything invalid is) and tells a list
# from a tuple, True from 1, 1 from 1.0: equal keys are values the checks cannot tell apart.
_MEMO_SIZE = 1024
_ACTIVITY_MEMO: set[bytes] = set()
_CONTEXT_ACTIVITIES_MEMO: set[bytes] = set()


def _memo_check(memo: set[bytes], check: Callable[[Any], bool], value: Any) -> bool:
    try:
        key = marshal.dumps(value, 2)
    except ValueError:  # unmarshallable, or nested too deep
        return check(value)
    if key in memo:
        return True
    if not check(value):
        return False
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo.add(key)
    return True


def _fast_statement_ref(ref: Any) -> bool:
    return (
        type(ref) is dict
        and STATEMENT_REF_KEYS.issuperset(ref)
        and ref.get("objectType") == "StatementRef"
        and is_uuid(ref.get("id"))
    )


def _fast_object(obj: Any, v2: bool, in_substatement: bool) -> bool:
    if type(obj) is not dict:
        return False
    kind = obj.get("objectType", "Activity")
    if kind == "Activity":
        if "objectType" not in obj and not IFI_SET.isdisjoint(obj):
            return False
        return _memo_check(_ACTIVITY_MEMO, _fast_activity, obj)
    if kind == "Agent":
        return _fast_agent(obj)
    if kind == "Group":
        return _fast_group(obj)
    if kind == "StatementRef":
        return _fast_statement_ref(obj)
    if kind == "SubStatement" and not in_substatement:
        return _fast_statement(obj, v2, substatement=True)
    return False


def _fast_score(score: Any) -> bool:
    if type(score) is not dict or not SCORE_KEYS.issuperset(score):
        return False
    for number in score.values():
        kind = type(number)
        if not (kind is int or (kind is float and number - number == 0)):
            return False
    if "scaled" in score and not -1 <= score["scaled"] <= 1:
        return False
    low, high, raw = score.get("min"), score.get("max"), score.get("raw")
    if low is not None and high is not None and not low < high:
        return False
    if raw is not None and low is not None and raw < low:
        return False
    return not (raw is not None and high is not None and raw > high)


def _fast_result(result: Any) -> bool:
    if type(result) is not dict or not RESULT_KEYS.issuperset(result):
        return False
    if "score" in result and not _fast_score(result["score"]):
        return False
    if "success" in result and type(result["success"]) is not bool:
        return False
    if "completion" in result and type(result["completion"]) is not bool:
        return False
    if "response" in result and type(result["response"]) is not str:
        return False
    if "duration" in result and not is_duration(result["duration"]):
        return False
    return "extensions" not in result or _fast_extensions(result["extensions"])


def _fast_context(context: Any, object_is_activity: bool) -> bool:
    if type(context) is not dict or not CONTEXT_KEYS_1.issuperset(context):
        return False  # 2.0's contextAgents and contextGroups go the slow way
    if "registration" in context and not is_uuid(context["registration"]):
        return False
    if "instructor" in context and not _fast_actor(context["instructor"]):
        return False
    if "team" in context and not _fast_group(context["team"]):
        return False
    if "contextActivities" in context and not _memo_check(
        _CONTEXT_ACTIVITIES_MEMO, _fast_context_activities, context["contextActivities"]
    ):
        return False
    for key in ("revision", "platform"):
        if key in context and (type(context[key]) is not str or not object_is_activity):
            return False
    if "language" in context and not is_language_tag(context["language"]):
        return False
    if "statement" in context and not _fast_statement_ref(context["statement"]):
        return False
    return "extensions" not in context or _fast_extensions(context["extensions"])


def _fast_statement(statement: Any, v2: bool, *, substatement: bool) -> bool:
    if type(statement) is not dict:
        return False
    if not (SUBSTATEMENT_KEYS if substatement else STATEMENT_KEYS).issuperset(statement):
        return False
    if "actor" not in statement or "verb" not in statement or "object" not in statement:
        return False
    if "id" in statement and not is_uuid(statement["id"]):
        return False
    if not _fast_actor(statement["actor"]):
        return False
    verb = statement["verb"]
    if type(verb) is not dict or not VERB_KEYS.issuperset(verb):
        return False
    verb_id = verb.get("id")
    if verb_id == VOIDED or not is_iri(verb_id):
        return False  # voiding statements go the slow way
    if "display" in verb and not _fast_language_map(verb["display"]):
        return False
    obj = statement["object"]
    if not _fast_object(obj, v2, substatement):
        return False
    if "result" in statement and not _fast_result(statement["result"]):
        return False
    if "context" in statement:
        is_activity = obj.get("objectType", "Activity") == "Activity"
        if not _fast_context(statement["context"], is_activity):
            return False
    if "timestamp" in statement and not is_timestamp(statement["timestamp"], zone_required=v2):
        return False
    if "stored" in statement and not is_timestamp(statement["stored"], zone_required=v2):
        return False
    if "authority" in statement:
        authority = statement["authority"]
        if not _fast_agent(authority):
            return False  # a 3-legged-OAuth Group (1.0.x) goes the slow way
    if "version" in statement and not is_statement_version(statement["version"], v2=v2):
        return False
    if "attachments" in statement:
        try:
            _check_attachments(statement["attachments"], "statement.attachments")
        except BadRequest:
            return False
    return True
