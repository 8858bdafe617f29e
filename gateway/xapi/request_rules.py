"""xAPI request-level rules: each resource's query parameters per method, and their formats.

Pure (no aiohttp): `check_query` and `check_merge_document` raise BadRequest naming the
parameter. Section numbers are xAPI 1.0.3 Communication (xAPI-Communication.md); xAPI 2.0
(IEEE 9274.1.1) keeps the same parameters and only requires a time zone on timestamps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import jsoncodec
from gateway.errors import BadRequest
from gateway.xapi.agents import IFI_KEYS, AgentError, validate_actor, validate_agent
from gateway.xapi.formats import is_iri, is_timestamp, is_uuid

__all__ = [
    "DOCUMENT_RESOURCES",
    "PAGING_PARAMETERS",
    "check_merge_document",
    "check_query",
    "check_repeats",
]

# Checks one value; `v2` is True for an xAPI 2.0 request. Raises BadRequest.
Checker = Callable[[str, str, bool], None]

DOCUMENT_RESOURCES = frozenset({"state", "activity_profile", "agent_profile"})
_IFI_SET = frozenset(IFI_KEYS)
_DIGITS = re.compile(r"[0-9]+")
_FORMATS = frozenset({"ids", "exact", "canonical"})
_BOOLEANS = frozenset({"true", "false"})  # 2.1.3 note: "represented as true or false as in JSON"


def _bad(name: str, what: str) -> BadRequest:
    # The value is never echoed: an agent carries personal data.
    return BadRequest(f"query parameter {name!r}: {what}")


def _uuid(name: str, value: str, v2: bool) -> None:
    if not is_uuid(value):
        raise _bad(name, "must be a UUID (8-4-4-4-12 hexadecimal digits)")


def _iri(name: str, value: str, v2: bool) -> None:
    if not is_iri(value):
        raise _bad(name, "must be an IRI (an absolute one, with a scheme)")


def _timestamp(name: str, value: str, v2: bool) -> None:
    if not is_timestamp(value, zone_required=v2):
        zone = " with a time zone (xAPI 2.0)" if v2 else ""
        raise _bad(name, f"must be an ISO 8601 timestamp{zone}")


def _limit(name: str, value: str, v2: bool) -> None:
    if _DIGITS.fullmatch(value) is None:
        raise _bad(name, "must be a non-negative integer")


def _format(name: str, value: str, v2: bool) -> None:
    if value not in _FORMATS:
        raise _bad(name, "must be one of ids, exact, canonical")


def _boolean(name: str, value: str, v2: bool) -> None:
    if value not in _BOOLEANS:
        raise _bad(name, "must be true or false")


def _document_id(name: str, value: str, v2: bool) -> None:
    # An empty id is no id: some LRSes would then list, or DELETE, every document.
    if not value:
        raise _bad(name, "must not be empty")


def _opaque(name: str, value: str, v2: bool) -> None:
    """A storage LRS's own paging token: its business, not ours."""


def _agent_json(name: str, value: str) -> Any:
    try:
        return jsoncodec.loads(value)
    except jsoncodec.JSONDecodeError:
        raise _bad(name, "must be an Agent as JSON") from None


def _statement_agent(name: str, value: str, v2: bool) -> None:
    """2.1.3: an Agent or an identified Group (a Group with one identifier)."""
    actor = _agent_json(name, value)
    try:
        validate_actor(actor, name, closed=True)
    except AgentError as error:
        raise _bad(name, str(error)) from None
    if _IFI_SET.isdisjoint(actor):
        raise _bad(
            name, "an anonymous Group cannot be a filter; give an Agent or an identified Group"
        )


def _document_agent(name: str, value: str, v2: bool) -> None:
    """2.3, 2.4, 2.6: an Agent, never a Group (its identifier goes in an Agent instead)."""
    try:
        validate_agent(_agent_json(name, value), name, closed=True)
    except AgentError as error:
        raise _bad(name, str(error)) from None


def _only_one_statement(query: Mapping[str, str]) -> None:
    """2.1.3.s2.b1-b2: statementId or voidedStatementId, never both, only with these two."""
    single = [name for name in ("statementId", "voidedStatementId") if name in query]
    if not single:
        return
    if len(single) == 2:
        raise BadRequest(
            "query parameters 'statementId' and 'voidedStatementId' cannot be used together"
        )
    others = sorted(name for name in query if name not in _SINGLE_STATEMENT_PARAMETERS)
    if others:
        raise _bad(
            others[0], f"cannot be used with {single[0]!r} (only 'attachments' and 'format' can)"
        )


def _listing_only(id_name: str) -> Callable[[Mapping[str, str]], None]:
    """2.3.s4, 2.6.s4, 2.7.s4: `since` limits a list of ids; with one id it means nothing."""

    def check(query: Mapping[str, str]) -> None:
        if id_name in query and "since" in query:
            raise _bad("since", f"lists document ids: it cannot be used with {id_name!r}")

    return check


@dataclass(frozen=True, slots=True)
class _Rule:
    """What one method on one resource takes."""

    allowed: Mapping[str, Checker]
    required: tuple[str, ...] = ()
    combined: Callable[[Mapping[str, str]], None] | None = None


_SINGLE_STATEMENT_PARAMETERS = frozenset(
    {"statementId", "voidedStatementId", "attachments", "format"}
)
# The `more` links of the LRSes behind us carry their own paging parameters (3.2.s3.b7
# note: an LRS may recognise parameters beyond the spec); a client following one sends
# them back. Learning Locker: cursor; Ralph: search_after, pit_id; SQL LRS: from.
PAGING_PARAMETERS = ("cursor", "search_after", "pit_id", "from")

_STATEMENTS_GET: dict[str, Checker] = {
    "statementId": _uuid,
    "voidedStatementId": _uuid,
    "agent": _statement_agent,
    "verb": _iri,
    "activity": _iri,
    "registration": _uuid,
    "related_activities": _boolean,
    "related_agents": _boolean,
    "since": _timestamp,
    "until": _timestamp,
    "limit": _limit,
    "format": _format,
    "attachments": _boolean,
    "ascending": _boolean,
    **{name: _opaque for name in PAGING_PARAMETERS},
}
_STATE_ONE = {
    "activityId": _iri,
    "agent": _document_agent,
    "registration": _uuid,
    "stateId": _document_id,
}
_ACTIVITY_PROFILE_ONE = {"activityId": _iri, "profileId": _document_id}
_AGENT_PROFILE_ONE = {"agent": _document_agent, "profileId": _document_id}

_RULES: dict[tuple[str, str], _Rule] = {
    ("statements", "GET"): _Rule(_STATEMENTS_GET, combined=_only_one_statement),
    ("statements", "PUT"): _Rule({"statementId": _uuid}, ("statementId",)),
    ("statements", "POST"): _Rule({}),
    ("state", "GET"): _Rule(
        {**_STATE_ONE, "since": _timestamp}, ("activityId", "agent"), _listing_only("stateId")
    ),
    ("state", "PUT"): _Rule(_STATE_ONE, ("activityId", "agent", "stateId")),
    ("state", "POST"): _Rule(_STATE_ONE, ("activityId", "agent", "stateId")),
    # Without stateId, DELETE removes every state of the activity and agent (2.3.s5).
    ("state", "DELETE"): _Rule(_STATE_ONE, ("activityId", "agent")),
    ("activity_profile", "GET"): _Rule(
        {**_ACTIVITY_PROFILE_ONE, "since": _timestamp}, ("activityId",), _listing_only("profileId")
    ),
    ("activity_profile", "PUT"): _Rule(_ACTIVITY_PROFILE_ONE, ("activityId", "profileId")),
    ("activity_profile", "POST"): _Rule(_ACTIVITY_PROFILE_ONE, ("activityId", "profileId")),
    ("activity_profile", "DELETE"): _Rule(_ACTIVITY_PROFILE_ONE, ("activityId", "profileId")),
    ("agent_profile", "GET"): _Rule(
        {**_AGENT_PROFILE_ONE, "since": _timestamp}, ("agent",), _listing_only("profileId")
    ),
    ("agent_profile", "PUT"): _Rule(_AGENT_PROFILE_ONE, ("agent", "profileId")),
    ("agent_profile", "POST"): _Rule(_AGENT_PROFILE_ONE, ("agent", "profileId")),
    ("agent_profile", "DELETE"): _Rule(_AGENT_PROFILE_ONE, ("agent", "profileId")),
    ("activities", "GET"): _Rule({"activityId": _iri}, ("activityId",)),
    ("agents", "GET"): _Rule({"agent": _document_agent}, ("agent",)),
    ("about", "GET"): _Rule({}),
}


def _spec_names() -> dict[str, dict[str, str]]:
    """Every parameter the spec names for each resource (any method), by its lower case."""
    names: dict[str, dict[str, str]] = {}
    for (resource, _), rule in _RULES.items():
        names.setdefault(resource, {}).update(
            {name.lower(): name for name in rule.allowed if name not in PAGING_PARAMETERS}
        )
    return names


# 3.2.s3.b8: a known name in the wrong case gets its own message.
_SPEC_NAMES = _spec_names()


def check_repeats(query: Mapping[str, str]) -> None:
    """400 for a parameter given twice: the gateway and the LRS could each read another one."""
    # A MultiDict counts every item in len() but may iterate each name once.
    if len(query) != len(set(query)):
        seen: set[str] = set()
        for name, _ in query.items():
            if name in seen:
                raise _bad(name, "is given more than once")
            seen.add(name)


def check_query(resource: str, method: str, query: Mapping[str, str], *, v2: bool = False) -> None:
    """Raise BadRequest unless `query` is what `method` on `resource` takes (Comm 2, 3.2).

    `resource` is one of statements, state, activity_profile, agent_profile, activities,
    agents, about; a method the resource does not define is left to the handler.
    """
    rule = _RULES.get((resource, "GET" if method == "HEAD" else method))
    if rule is None:
        return
    if query:
        check_repeats(query)
        allowed = rule.allowed
        for name, value in query.items():
            checker = allowed.get(name)
            if checker is None:
                raise _unknown(resource, method, name)
            checker(name, value, v2)
    for name in rule.required:
        if name not in query:
            raise _bad(name, f"is required for {method} {_TITLES[resource]}")
    if rule.combined is not None:
        rule.combined(query)


_TITLES = {
    "statements": "statements",
    "state": "activities/state",
    "activity_profile": "activities/profile",
    "agent_profile": "agents/profile",
    "activities": "activities",
    "agents": "agents",
    "about": "about",
}


def _unknown(resource: str, method: str, name: str) -> BadRequest:
    known = _SPEC_NAMES[resource].get(name.lower())
    if known is not None and known != name:
        return _bad(name, f"parameters are case-sensitive: did you mean {known!r}?")
    if known is not None:
        return _bad(name, f"is not a parameter of {method} {_TITLES[resource]}")
    return _bad(name, f"is not a parameter of {_TITLES[resource]} in xAPI")


def check_merge_document(content_type: str, body: bytes) -> None:
    """2.2.s8.b1: a POST to a document resource merges JSON objects, nothing else."""
    if content_type != "application/json":
        raise BadRequest(
            "a POST to a document resource merges JSON objects: its Content-Type "
            "must be application/json (use PUT to store any other document)"
        )
    try:
        document = jsoncodec.loads(body)
    except jsoncodec.JSONDecodeError:
        raise BadRequest(
            "a POST to a document resource merges JSON objects: the body is not valid JSON"
        ) from None
    if not isinstance(document, dict):
        raise BadRequest(
            "a POST to a document resource merges JSON objects: the body is JSON but not an object"
        )
