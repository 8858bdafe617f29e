"""The strict statement validator against examples written from the xAPI spec's text.

Section numbers are xAPI 1.0.3 Data (adlnet/xAPI-Spec xAPI-Data.md); "2.0" is IEEE 9274.1.1.
Valid examples are the spec's own (Appendix A, B, C and the sections' examples); each
invalid one breaks one rule and must be refused with the path in the message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from gateway.errors import BadRequest
from gateway.xapi.formats import (
    is_duration,
    is_iri,
    is_language_tag,
    is_mailto,
    is_timestamp,
)
from gateway.xapi.validation import validate_statement

V1, V2 = "1.0.3", "2.0.0"
ACTOR = {"objectType": "Agent", "mbox": "mailto:xapi@adlnet.gov"}
VERB = {"id": "http://adlnet.gov/expapi/verbs/created", "display": {"en-US": "created"}}
ACTIVITY = {"id": "http://example.adlnet.gov/xapi/example/activity"}
SUB_ID = "e05aa883-acaf-40ad-bf54-02c8ce485fb0"


def minimal() -> dict[str, Any]:
    """2.4.s2: the simplest possible statement."""
    return {
        "id": "12345678-1234-5678-1234-567812345678",
        "actor": copy.deepcopy(ACTOR),
        "verb": copy.deepcopy(VERB),
        "object": copy.deepcopy(ACTIVITY),
    }


def appendix_a_long() -> dict[str, Any]:
    """Appendix A: the long example, as returned by an LRS (authority, stored, version)."""
    return {
        "id": "6690e6c9-3ef0-4ed3-8b37-7f3964730bee",
        "actor": {
            "name": "Team PB",
            "mbox": "mailto:teampb@example.com",
            "objectType": "Group",
            "member": [
                {
                    "name": "Andrew Downes",
                    "objectType": "Agent",
                    "account": {"homePage": "http://www.example.com", "name": "13936749"},
                },
                {
                    "name": "Toby Nichols",
                    "openid": "http://toby.openid.example.org/",
                    "objectType": "Agent",
                },
                {
                    "name": "Ena Hills",
                    "objectType": "Agent",
                    "mbox_sha1sum": "ebd31e95054c018b10727ccffd2ef2ec3a016ee9",
                },
            ],
        },
        "verb": {
            "id": "http://adlnet.gov/expapi/verbs/attended",
            "display": {"en-GB": "attended", "en-US": "attended"},
        },
        "result": {
            "extensions": {
                "http://example.com/profiles/meetings/resultextensions/minuteslocation": (
                    "X:\\meetings\\minutes\\examplemeeting.one"
                )
            },
            "success": True,
            "completion": True,
            "response": "We agreed on some example actions.",
            "duration": "PT1H0M0S",
        },
        "context": {
            "registration": "ec531277-b57b-4c15-8d91-d292c5b2b8f7",
            "contextActivities": {
                "parent": [
                    {"id": "http://www.example.com/meetings/series/267", "objectType": "Activity"}
                ],
                "category": [
                    {
                        "id": "http://www.example.com/meetings/categories/teammeeting",
                        "objectType": "Activity",
                        "definition": {
                            "name": {"en": "team meeting"},
                            "description": {
                                "en": "A category of meeting used for regular team meetings."
                            },
                            "type": "http://example.com/expapi/activities/meetingcategory",
                        },
                    }
                ],
                "other": [
                    {
                        "id": "http://www.example.com/meetings/occurances/34257",
                        "objectType": "Activity",
                    },
                    {
                        "id": "http://www.example.com/meetings/occurances/3425567",
                        "objectType": "Activity",
                    },
                ],
            },
            "instructor": {
                "name": "Andrew Downes",
                "objectType": "Agent",
                "account": {"homePage": "http://www.example.com", "name": "13936749"},
            },
            "team": {"name": "Team PB", "mbox": "mailto:teampb@example.com", "objectType": "Group"},
            "platform": "Example virtual meeting software",
            "language": "tlh",
            "statement": {
                "objectType": "StatementRef",
                "id": "6690e6c9-3ef0-4ed3-8b37-7f3964730bee",
            },
        },
        "timestamp": "2013-05-18T05:32:34.804+00:00",
        "stored": "2013-05-18T05:32:34.804+00:00",
        "authority": {
            "account": {"homePage": "http://cloud.scorm.com/", "name": "anonymous"},
            "objectType": "Agent",
        },
        "version": "1.0.0",
        "object": {
            "id": "http://www.example.com/meetings/occurances/34534",
            "definition": {
                "extensions": {
                    "http://example.com/profiles/meetings/activitydefinitionextensions/room": {
                        "name": "Kilby",
                        "id": "http://example.com/rooms/342",
                    }
                },
                "name": {"en-GB": "example meeting", "en-US": "example meeting"},
                "description": {"en-GB": "An example meeting.", "en-US": "An example meeting."},
                "type": "http://adlnet.gov/expapi/activities/meeting",
                "moreInfo": "http://virtualmeeting.example.com/345256",
            },
            "objectType": "Activity",
        },
    }


def with_object(obj: dict[str, Any], **extra: Any) -> dict[str, Any]:
    statement = minimal()
    statement["object"] = obj
    statement.update(extra)
    return statement


def interaction(kind: str, **parts: Any) -> dict[str, Any]:
    """Appendix C: an activity of type cmi.interaction."""
    definition = {
        "description": {"en-US": "A question"},
        "type": "http://adlnet.gov/expapi/activities/cmi.interaction",
        "interactionType": kind,
        **parts,
    }
    return with_object({"id": "http://example.com/q1", "definition": definition})


def components(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "description": {"en-US": i.title()}} for i in ids]


SUBSTATEMENT = {  # 2.4.4.3.s9
    "objectType": "SubStatement",
    "actor": {"objectType": "Agent", "mbox": "mailto:test@example.com"},
    "verb": {"id": "http://example.com/visited", "display": {"en-US": "will visit"}},
    "object": {
        "objectType": "Activity",
        "id": "http://example.com/website",
        "definition": {"name": {"en-US": "Some Awesome Website"}},
    },
}
OAUTH_AUTHORITY = {  # 2.4.9.s8
    "objectType": "Group",
    "member": [
        {
            "account": {
                "homePage": "http://example.com/xAPI/OAuth/Token",
                "name": "oauth_consumer_x75db",
            }
        },
        {"mbox": "mailto:bob@example.com"},
    ],
}
CONTEXT_AGENTS = {  # 2.0 Context: contextAgents and contextGroups
    "contextAgents": [
        {
            "objectType": "contextAgent",
            "agent": {"objectType": "Agent", "mbox": "mailto:coach@example.com"},
            "relevantTypes": ["https://example.com/xapi/types/coach"],
        }
    ],
    "contextGroups": [
        {
            "objectType": "contextGroup",
            "group": {"objectType": "Group", "mbox": "mailto:team-1@example.com"},
            "relevantTypes": ["https://example.com/xapi/types/team"],
        }
    ],
}

VALID: dict[str, Callable[[], dict[str, Any]]] = {
    "minimal (2.4.s2)": minimal,
    "no id": lambda: {k: v for k, v in minimal().items() if k != "id"},
    "Appendix A long": appendix_a_long,
    "voiding (2.3.2.s3)": lambda: with_object(
        {"objectType": "StatementRef", "id": SUB_ID},
        verb={"id": "http://adlnet.gov/expapi/verbs/voided", "display": {"en-US": "voided"}},
    ),
    "StatementRef (2.4.4.3.s5)": lambda: with_object(
        {"objectType": "StatementRef", "id": "8f87ccde-bb56-4c2e-ab83-44982ef22df0"},
        result={"response": "Wow, nice work!"},
    ),
    "SubStatement (2.4.4.3.s9)": lambda: with_object(copy.deepcopy(SUBSTATEMENT)),
    "SubStatement of a StatementRef (B.s4)": lambda: with_object(
        {**copy.deepcopy(SUBSTATEMENT), "object": {"objectType": "StatementRef", "id": SUB_ID}}
    ),
    "SubStatement with a future timestamp and context": lambda: with_object(
        {
            **copy.deepcopy(SUBSTATEMENT),
            "timestamp": "2099-01-01T00:00:00Z",
            "context": {"platform": "web"},
        }
    ),
    "Agent object (B.s2)": lambda: with_object(
        {"name": "Andrew Downes", "mbox": "mailto:andrew@example.co.uk", "objectType": "Agent"}
    ),
    "identified Group object (B.s3)": lambda: with_object(
        {
            "name": "Example Group",
            "objectType": "Group",
            "account": {"homePage": "http://example.com/homePage", "name": "GroupAccount"},
            "member": [
                {
                    "name": "Andrew Downes",
                    "mbox": "mailto:andrew@example.com",
                    "objectType": "Agent",
                },
                {
                    "name": "Aaron Silvers",
                    "openid": "http://aaron.openid.example.org",
                    "objectType": "Agent",
                },
            ],
        }
    ),
    "anonymous Group actor": lambda: {
        **minimal(),
        "actor": {"objectType": "Group", "member": [{"mbox": "mailto:a@example.com"}]},
    },
    "account agent (2.4.2.4.s3)": lambda: {
        **minimal(),
        "actor": {
            "objectType": "Agent",
            "account": {"homePage": "http://www.example.com", "name": "1625378"},
        },
    },
    "true-false": lambda: interaction("true-false", correctResponsesPattern=["true"]),
    "choice": lambda: interaction(
        "choice",
        correctResponsesPattern=["golf[,]tetris"],
        choices=components("golf", "facebook", "tetris"),
    ),
    "fill-in": lambda: interaction("fill-in", correctResponsesPattern=["Bob's your uncle"]),
    "long-fill-in": lambda: interaction(
        "long-fill-in",
        correctResponsesPattern=[
            "{case_matters=false}{lang=en}To store and provide access to learning experiences."
        ],
    ),
    "likert": lambda: interaction(
        "likert", correctResponsesPattern=["likert_3"], scale=components("likert_0", "likert_3")
    ),
    "matching": lambda: interaction(
        "matching",
        correctResponsesPattern=["ben[.]3[,]chris[.]2"],
        source=components("ben", "chris"),
        target=components("2", "3"),
    ),
    "performance": lambda: interaction(
        "performance",
        correctResponsesPattern=["pong[.]1:[,]dg[.]:10"],
        steps=components("pong", "dg"),
    ),
    "sequencing": lambda: interaction(
        "sequencing", correctResponsesPattern=["tim[,]ben"], choices=components("tim", "ben")
    ),
    "numeric": lambda: interaction("numeric", correctResponsesPattern=["4[:]"]),
    "other": lambda: interaction("other", correctResponsesPattern=["(35.937432,-86.868896)"]),
    "no correct answer (empty pattern, 2.4.4.1.s11)": lambda: interaction(
        "choice", correctResponsesPattern=[], choices=components("a")
    ),
    "single-Activity contextActivities (2.4.6.2.s4.b2)": lambda: {
        **minimal(),
        "context": {"contextActivities": {"parent": {"id": "http://example.com/test1"}}},
    },
    "3-legged OAuth authority (2.4.9.s8)": lambda: {
        **minimal(),
        "authority": copy.deepcopy(OAUTH_AUTHORITY),
    },
    "score with all parts": lambda: {
        **minimal(),
        "result": {"score": {"scaled": -1, "raw": 0, "min": 0, "max": 10.5}},
    },
    "attachment": lambda: {
        **minimal(),
        "attachments": [
            {
                "usageType": "http://adlnet.gov/expapi/attachments/signature",
                "display": {"en-US": "Signature"},
                "description": {"en-US": "A JWS"},
                "contentType": "application/octet-stream",
                "length": 4235,
                "sha2": "672fa5fa658017f1b72d65036f13379c6ab05d4ab3b6664908d8acf0b6a0c634",
                "fileUrl": "https://example.com/sig",
            }
        ],
    },
    "extensions with any values, null too (4.1.s3.b2)": lambda: {
        **minimal(),
        "context": {"extensions": {"http://example.com/ext": None, "urn:x:y": [1, {"a": None}]}},
    },
    "IRI with non-ASCII characters (4.3)": lambda: {
        **minimal(),
        "verb": {"id": "http://example.com/فعل/خواندن"},
    },
}


V1_ONLY = {"3-legged OAuth authority (2.4.9.s8)"}  # see test_oauth_group_authority_is_1_0_only


@pytest.mark.parametrize(
    ("name", "version"),
    [
        (name, version)
        for name in VALID
        for version in (V1, V2)
        if version == V1 or name not in V1_ONLY
    ],
)
def test_spec_examples_pass(name: str, version: str) -> None:
    validate_statement(VALID[name](), version, "statement")


def test_the_statement_is_left_as_sent() -> None:
    statement = {**minimal(), "context": {"contextActivities": {"parent": {"id": "http://x.org/"}}}}
    before = copy.deepcopy(statement)
    validate_statement(statement, V1, "statement")
    assert statement == before


def mutate(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or with `...` delete) the value at a dotted path; `[n]` indexes lists."""

    def apply(statement: dict[str, Any]) -> None:
        *parents, last = path.replace("[", ".").replace("]", "").split(".")
        node: Any = statement
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is ...:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def case(
    base: Callable[[], dict[str, Any]], path: str, value: Any, message: str
) -> tuple[Callable[[], dict[str, Any]], str, Any, str]:
    return (base, path, value, message)


REFUSED = {
    # 2.2.s2.b3: actor, verb, object are required
    "no actor": case(minimal, "actor", ..., "statement.actor: is required"),
    "no verb": case(minimal, "verb", ..., "statement.verb: is required"),
    "no object": case(minimal, "object", ..., "statement.object: is required"),
    # 2.2.s4.b1.b5 / b7 / 2.2.s4.b8: unknown properties and wrong case, anywhere
    "unknown top-level property": case(minimal, "foo", 1, "statement.foo: is not a property"),
    "wrong-case key": case(minimal, "Actor", ACTOR, "statement.Actor: is not a property"),
    "unknown verb property": case(minimal, "verb.name", {"en": "x"}, "statement.verb.name"),
    "unknown agent property": case(minimal, "actor.age", 3, "statement.actor.age"),
    "unknown account property": case(
        appendix_a_long, "context.instructor.account.x", 1, "context.instructor.account.x"
    ),
    "unknown activity property": case(minimal, "object.name", "x", "statement.object.name"),
    "unknown definition property": case(
        appendix_a_long, "object.definition.foo", 1, "statement.object.definition.foo"
    ),
    "unknown result property": case(appendix_a_long, "result.grade", "A", "result.grade"),
    "unknown context property": case(appendix_a_long, "context.team2", {}, "context.team2"),
    "contextAgents in 1.0.x": case(
        appendix_a_long,
        "context.contextAgents",
        [],
        "statement.context.contextAgents: is not a property",
    ),
    # 2.2.s4.b1: nulls, strings for numbers and booleans
    "null result": case(minimal, "result", None, "statement.result: must be an object"),
    "null name": case(minimal, "actor.name", None, "statement.actor.name: must be a string"),
    "string for a boolean": case(
        appendix_a_long, "result.success", "true", "statement.result.success: must be true or false"
    ),
    "string for a number": case(
        appendix_a_long,
        "result.score",
        {"raw": "1"},
        "statement.result.score.raw: must be a number",
    ),
    "boolean for a number": case(
        appendix_a_long,
        "result.score",
        {"raw": True},
        "statement.result.score.raw: must be a number",
    ),
    # 2.4.1, 4.4: UUIDs
    "id not a UUID": case(minimal, "id", "1234", "statement.id: must be a UUID"),
    "id without hyphens": case(minimal, "id", "12345678123456781234567812345678", "statement.id"),
    "registration not a UUID": case(
        appendix_a_long,
        "context.registration",
        "x",
        "statement.context.registration: must be a UUID",
    ),
    "StatementRef id not a UUID": case(
        appendix_a_long, "context.statement.id", "abc", "statement.context.statement.id"
    ),
    # 2.4.2: Agents and Groups
    "agent with two IFIs": case(
        appendix_a_long,
        "context.instructor.mbox",
        "mailto:a@b.org",
        "statement.context.instructor: has 2 identifiers",
    ),
    "agent without IFI": case(minimal, "actor", {"name": "x"}, "statement.actor: needs exactly"),
    "mbox not mailto": case(
        appendix_a_long,
        "context.instructor",
        {"mbox": "a@example.com"},
        "statement.context.instructor.mbox: must be a mailto: IRI",
    ),
    "mbox without address": case(minimal, "actor.mbox", "mailto:", "statement.actor.mbox"),
    "mbox_sha1sum not hex": case(
        minimal, "actor", {"mbox_sha1sum": "z" * 40}, "statement.actor.mbox_sha1sum"
    ),
    "openid not a URI": case(minimal, "actor", {"openid": "toby"}, "statement.actor.openid"),
    "account without name": case(
        minimal, "actor", {"account": {"homePage": "http://x.org"}}, "statement.actor.account.name"
    ),
    "account homePage not an IRL": case(
        minimal,
        "actor",
        {"account": {"homePage": "www.example.com", "name": "a"}},
        "statement.actor.account.homePage: must be an IRL",
    ),
    "anonymous group without members": case(
        minimal, "actor", {"objectType": "Group"}, "statement.actor: an anonymous Group needs"
    ),
    "anonymous group with empty members": case(
        minimal, "actor", {"objectType": "Group", "member": []}, "statement.actor.member"
    ),
    "group member is a group (2.4.2.2.s4.b2)": case(
        appendix_a_long,
        "actor.member[1]",
        {"objectType": "Group", "mbox": "mailto:g@x.org"},
        "statement.actor.member[1].objectType: must be Agent",
    ),
    "team is an Agent": case(
        appendix_a_long,
        "context.team",
        {"mbox": "mailto:a@b.org"},
        "statement.context.team.objectType: must be Group",
    ),
    "agent objectType lowercase (2.2.s4.b1.b6)": case(
        minimal, "actor.objectType", "agent", "statement.actor.objectType: must be Agent"
    ),
    # 2.4.3: Verb
    "verb without id": case(minimal, "verb", {"display": {"en-US": "x"}}, "statement.verb.id"),
    "verb id not an IRI": case(minimal, "verb.id", "created", "statement.verb.id: must be an IRI"),
    "verb id empty": case(minimal, "verb.id", "", "statement.verb.id: must be an IRI"),
    "verb id with a space": case(minimal, "verb.id", "http://x.org/a b", "statement.verb.id"),
    "display not a language map": case(
        minimal, "verb.display", "created", "statement.verb.display: must be a language map"
    ),
    "display with a bad language tag": case(
        minimal, "verb.display", {"en_US": "x"}, "statement.verb.display: 'en_US' is not"
    ),
    "display with a number value": case(
        minimal, "verb.display", {"en": 1}, "statement.verb.display.en: must be a string"
    ),
    # 2.4.4: Object
    "unknown objectType": case(
        minimal, "object.objectType", "Thing", "statement.object.objectType: must be one of"
    ),
    "activity without id": case(
        minimal,
        "object",
        {"objectType": "Activity"},
        "statement.object.id: an Activity needs an id",
    ),
    "activity id relative": case(minimal, "object.id", "/activities/1", "statement.object.id"),
    "agent object without objectType (2.4.4.2.s1.b1)": case(
        minimal, "object", {"mbox": "mailto:a@b.org"}, "statement.object.objectType"
    ),
    "definition type not an IRI": case(
        appendix_a_long,
        "object.definition.type",
        "meeting",
        "statement.object.definition.type: must be an IRI",
    ),
    "moreInfo not an IRL": case(
        appendix_a_long,
        "object.definition.moreInfo",
        "345256",
        "statement.object.definition.moreInfo: must be an IRL",
    ),
    "definition name not a language map": case(
        appendix_a_long, "object.definition.name", "x", "statement.object.definition.name"
    ),
    "extension key not an IRI (4.1.s3.b1)": case(
        appendix_a_long,
        "object.definition.extensions",
        {"room": 1},
        "statement.object.definition.extensions: the key 'room' is not an IRI",
    ),
    # 2.4.4.1 interactions
    "bad interactionType": case(
        lambda: interaction("choice"),
        "object.definition.interactionType",
        "Choice",
        "statement.object.definition.interactionType",
    ),
    "pattern without interactionType (2.4.4.1.s13.b1)": case(
        lambda: interaction("choice", correctResponsesPattern=["a"]),
        "object.definition.interactionType",
        ...,
        "definition.correctResponsesPattern: only",
    ),
    "pattern not strings": case(
        lambda: interaction("numeric"),
        "object.definition.correctResponsesPattern",
        [4],
        "definition.correctResponsesPattern: must be an array of strings",
    ),
    "component list the type lacks": case(
        lambda: interaction("true-false"),
        "object.definition.choices",
        components("a"),
        "statement.object.definition.choices: an interaction of type true-false has no",
    ),
    "duplicate component ids (2.4.4.1.s16.b1)": case(
        lambda: interaction("choice", choices=components("a", "b")),
        "object.definition.choices[1].id",
        "a",
        "definition.choices[1].id: 'a' is already used",
    ),
    "component without id": case(
        lambda: interaction("likert", scale=components("a")),
        "object.definition.scale[0].id",
        ...,
        "statement.object.definition.scale[0].id: is required",
    ),
    "component with unknown property": case(
        lambda: interaction("matching", source=components("a")),
        "object.definition.source[0].name",
        "x",
        "definition.source[0].name: is not a property",
    ),
    # 2.4.4.3 StatementRef and SubStatement
    "StatementRef without objectType in context": case(
        appendix_a_long, "context.statement.objectType", ..., "context.statement.objectType"
    ),
    "StatementRef with extra property": case(
        appendix_a_long, "context.statement.definition", {}, "context.statement.definition"
    ),
    "SubStatement with id (2.4.4.3.s8.b3)": case(
        lambda: with_object(copy.deepcopy(SUBSTATEMENT)),
        "object.id",
        SUB_ID,
        "statement.object.id: a SubStatement must not have it",
    ),
    "SubStatement with authority": case(
        lambda: with_object(copy.deepcopy(SUBSTATEMENT)),
        "object.authority",
        ACTOR,
        "statement.object.authority: a SubStatement must not have it",
    ),
    "SubStatement with stored": case(
        lambda: with_object(copy.deepcopy(SUBSTATEMENT)),
        "object.stored",
        "2013-05-18T05:32:34Z",
        "statement.object.stored",
    ),
    "SubStatement with version": case(
        lambda: with_object(copy.deepcopy(SUBSTATEMENT)),
        "object.version",
        "1.0.0",
        "statement.object.version",
    ),
    "nested SubStatement (2.4.4.3.s8.b4)": case(
        lambda: with_object(copy.deepcopy(SUBSTATEMENT)),
        "object.object",
        copy.deepcopy(SUBSTATEMENT),
        "statement.object.object: a SubStatement cannot contain",
    ),
    "SubStatement validated as a statement (2.4.4.3.s8.b2)": case(
        lambda: with_object(copy.deepcopy(SUBSTATEMENT)),
        "object.verb",
        ...,
        "statement.object.verb: is required",
    ),
    # 2.3.2 voiding
    "voiding an Activity": case(
        minimal,
        "verb.id",
        "http://adlnet.gov/expapi/verbs/voided",
        "statement.object: a voiding statement",
    ),
    # 2.4.5 result
    "scaled above 1": case(
        appendix_a_long,
        "result.score",
        {"scaled": 1.01},
        "statement.result.score.scaled: must be between -1 and 1",
    ),
    "scaled below -1": case(
        appendix_a_long, "result.score", {"scaled": -2}, "statement.result.score.scaled"
    ),
    "raw below min": case(
        appendix_a_long,
        "result.score",
        {"raw": -1, "min": 0},
        "statement.result.score.raw: must not be less than min",
    ),
    "raw above max": case(
        appendix_a_long,
        "result.score",
        {"raw": 11, "max": 10},
        "statement.result.score.raw: must not be greater than max",
    ),
    "min above max": case(
        appendix_a_long,
        "result.score",
        {"min": 5, "max": 1},
        "statement.result.score.min: must be less than max",
    ),
    "min equal to max (2.4.5.1: less than)": case(
        appendix_a_long, "result.score", {"min": 5, "max": 5}, "statement.result.score.min"
    ),
    "response not a string": case(
        appendix_a_long, "result.response", 42, "statement.result.response: must be a string"
    ),
    "duration not ISO 8601": case(
        appendix_a_long,
        "result.duration",
        "1 hour",
        "statement.result.duration: must be an ISO 8601 duration",
    ),
    "duration as a number": case(
        appendix_a_long, "result.duration", 3600, "statement.result.duration"
    ),
    # 2.4.6 context
    "revision with an Agent object (2.4.6.s4.b1)": case(
        lambda: with_object({"objectType": "Agent", "mbox": "mailto:a@b.org"}),
        "context",
        {"revision": "2"},
        "statement.context.revision: only allowed",
    ),
    "platform with a StatementRef object (2.4.6.s4.b2)": case(
        lambda: with_object({"objectType": "StatementRef", "id": SUB_ID}),
        "context",
        {"platform": "x"},
        "statement.context.platform: only allowed",
    ),
    "platform not a string": case(
        appendix_a_long, "context.platform", 3, "statement.context.platform: must be a string"
    ),
    "language not RFC 5646": case(
        appendix_a_long,
        "context.language",
        "english language",
        "statement.context.language: must be an RFC 5646",
    ),
    "bad contextActivities key (2.4.6.2.s4.b1)": case(
        appendix_a_long,
        "context.contextActivities.parents",
        [],
        "statement.context.contextActivities.parents: is not a property",
    ),
    "contextActivities value a string (2.4.6.2.s4.b2)": case(
        appendix_a_long,
        "context.contextActivities.parent",
        "http://x.org/",
        "statement.context.contextActivities.parent: must be an object",
    ),
    "contextActivities entry without id": case(
        appendix_a_long,
        "context.contextActivities.other[1]",
        {"objectType": "Activity"},
        "statement.context.contextActivities.other[1].id",
    ),
    "contextActivities entry an Agent": case(
        appendix_a_long,
        "context.contextActivities.other[0].objectType",
        "Agent",
        "statement.context.contextActivities.other[0].objectType: must be Activity",
    ),
    # 2.4.7, 2.4.8, 4.5 timestamps
    "timestamp not ISO 8601": case(
        minimal,
        "timestamp",
        "18 May 2013",
        "statement.timestamp: must be an ISO 8601 date and time",
    ),
    "timestamp date only": case(minimal, "timestamp", "2013-05-18", "statement.timestamp"),
    "timestamp month 13": case(minimal, "timestamp", "2013-13-18T05:32:34Z", "statement.timestamp"),
    "timestamp 30 February": case(
        minimal, "timestamp", "2013-02-30T05:32:34Z", "statement.timestamp"
    ),
    "timestamp negative zero offset": case(
        minimal, "timestamp", "2013-05-18T05:32:34-00:00", "statement.timestamp"
    ),
    "timestamp mixed basic and extended": case(
        minimal, "timestamp", "20130518T05:32:34Z", "statement.timestamp"
    ),
    "stored not a timestamp": case(minimal, "stored", "yesterday", "statement.stored"),
    # 2.4.9 authority
    "authority with two IFIs": case(
        minimal,
        "authority",
        {"mbox": "mailto:a@b.org", "openid": "http://a.org/"},
        "statement.authority: has 2 identifiers",
    ),
    "authority mbox not mailto": case(
        minimal,
        "authority",
        {"mbox": "bob@example.com"},
        "statement.authority.mbox: must be a mailto: IRI",
    ),
    "authority group of three": case(
        minimal,
        "authority",
        {
            "objectType": "Group",
            "member": [
                {"mbox": "mailto:a@b.org"},
                {"mbox": "mailto:b@b.org"},
                {"mbox": "mailto:c@b.org"},
            ],
        },
        "statement.authority.member: an authority Group has exactly two Agents",
    ),
    "authority identified group": case(
        minimal,
        "authority",
        {**OAUTH_AUTHORITY, "mbox": "mailto:g@b.org"},
        "statement.authority: an authority Group must be anonymous",
    ),
    "authority account name a number": case(
        minimal,
        "authority",
        {"account": {"homePage": "http://x.org", "name": 7}},
        "statement.authority.account.name",
    ),
    # 2.4.10 version
    "version 0.95": case(minimal, "version", "0.95", "statement.version: must be 1.0.x"),
    "version 1.0": case(minimal, "version", "1.0", "statement.version"),
    "version a number": case(minimal, "version", 1.0, "statement.version"),
    # 2.4.11 attachments
    "attachments not an array": case(minimal, "attachments", {}, "statement.attachments: must be"),
    "attachment without sha2": case(
        lambda: VALID["attachment"](),
        "attachments[0].sha2",
        ...,
        "statement.attachments[0].sha2: is required",
    ),
    "attachment sha2 not hex": case(
        lambda: VALID["attachment"](),
        "attachments[0].sha2",
        "x" * 64,
        "statement.attachments[0].sha2: must be a hex SHA-2",
    ),
    "attachment length negative": case(
        lambda: VALID["attachment"](),
        "attachments[0].length",
        -1,
        "statement.attachments[0].length: must be a non-negative integer",
    ),
    "attachment length a float": case(
        lambda: VALID["attachment"](),
        "attachments[0].length",
        12.5,
        "statement.attachments[0].length",
    ),
    "attachment usageType not an IRI": case(
        lambda: VALID["attachment"](),
        "attachments[0].usageType",
        "signature",
        "statement.attachments[0].usageType: must be an IRI",
    ),
    "attachment contentType not a media type": case(
        lambda: VALID["attachment"](),
        "attachments[0].contentType",
        "pdf",
        "statement.attachments[0].contentType",
    ),
    "signature not octet-stream (2.6.s4.b1)": case(
        lambda: VALID["attachment"](),
        "attachments[0].contentType",
        "application/json",
        "statement.attachments[0].contentType: a signature's must be",
    ),
    "attachment fileUrl relative": case(
        lambda: VALID["attachment"](),
        "attachments[0].fileUrl",
        "sig.jws",
        "statement.attachments[0].fileUrl: must be an IRL",
    ),
    "attachment display missing": case(
        lambda: VALID["attachment"](),
        "attachments[0].display",
        ...,
        "statement.attachments[0].display: is required",
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_spec_violations_are_refused_with_their_path(name: str) -> None:
    base, path, value, message = REFUSED[name]
    statement = base()
    mutate(path, value)(statement)
    with pytest.raises(BadRequest) as caught:
        validate_statement(statement, V1, "statement")
    assert message in caught.value.message


def test_batch_paths_name_the_statement() -> None:
    statement = appendix_a_long()
    statement["context"]["instructor"]["mbox"] = "mailto:a@b.org"
    del statement["context"]["instructor"]["account"]
    statement["context"]["instructor"]["mbox"] = "a@b.org"
    with pytest.raises(
        BadRequest,
        match=r"^statements\[3\]\.context\.instructor\.mbox: must be "
        r"a mailto: IRI",
    ):
        validate_statement(statement, V1, "statements[3]")


# What differs between xAPI 1.0.3 and 2.0 (IEEE 9274.1.1).


def test_timestamps_need_a_time_zone_in_2_0_only() -> None:
    statement = {**minimal(), "timestamp": "2013-05-18T05:32:34.804"}
    validate_statement(statement, V1, "statement")  # 4.5.s1.b4: SHOULD include a time zone
    with pytest.raises(BadRequest, match=r"statement.timestamp: .* with a time zone"):
        validate_statement(statement, V2, "statement")
    statement["timestamp"] += "+02:00"
    validate_statement(statement, V2, "statement")


def test_context_agents_and_groups_are_2_0_only() -> None:
    statement = {**minimal(), "context": copy.deepcopy(CONTEXT_AGENTS)}
    validate_statement(statement, V2, "statement")
    with pytest.raises(BadRequest, match=r"statement.context.contextAgents: is not a property"):
        validate_statement(statement, V1, "statement")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("context.contextAgents[0].objectType", "Agent", "contextAgents[0].objectType: must be"),
        ("context.contextAgents[0].agent", ..., "contextAgents[0].agent: is required"),
        (
            "context.contextAgents[0].agent",
            {"objectType": "Group", "mbox": "mailto:g@b.org"},
            "contextAgents[0].agent.objectType: must be Agent",
        ),
        ("context.contextAgents[0].relevantTypes", ["coach"], "contextAgents[0].relevantTypes[0]"),
        ("context.contextAgents[0].role", "x", "contextAgents[0].role: is not a property"),
        ("context.contextGroups[0].objectType", "contextAgent", "contextGroups[0].objectType"),
        ("context.contextGroups[0].group", {"key": "Should fail"}, "contextGroups[0].group"),
        ("context.contextGroups", {}, "statement.context.contextGroups: must be an array"),
    ],
)
def test_context_agents_rules(path: str, value: Any, message: str) -> None:
    statement = {**minimal(), "context": copy.deepcopy(CONTEXT_AGENTS)}
    mutate(path, value)(statement)
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_statement(statement, V2, "statement")


def test_statement_versions() -> None:
    for version in ("1.0.0", "1.0.3", "1.0.12"):
        validate_statement({**minimal(), "version": version}, V1, "statement")
        validate_statement({**minimal(), "version": version}, V2, "statement")
    validate_statement({**minimal(), "version": "2.0.0"}, V2, "statement")
    with pytest.raises(BadRequest, match=r"statement.version: must be 1.0.x$"):
        validate_statement({**minimal(), "version": "2.0.0"}, V1, "statement")
    with pytest.raises(BadRequest, match=r"statement.version: must be 1.0.x or 2.0.x"):
        validate_statement({**minimal(), "version": "3.0.0"}, V2, "statement")


def test_oauth_group_authority_is_1_0_only() -> None:
    statement = {**minimal(), "authority": copy.deepcopy(OAUTH_AUTHORITY)}
    validate_statement(statement, V1, "statement")
    with pytest.raises(BadRequest, match=r"statement.authority.objectType: must be Agent"):
        validate_statement(statement, V2, "statement")


@pytest.mark.parametrize("version", ["1.0", "1.0.0", "1.0.3", "2.0", "2.0.0"])
def test_request_versions_taken(version: str) -> None:
    validate_statement(minimal(), version, "statement")


def test_other_request_versions_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"1.0.x and 2.0.x"):
        validate_statement(minimal(), "0.95", "statement")


# The formats, one by one.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://example.com/xapi/verbs#defenestrated", True),
        ("urn:uuid:1234", True),
        ("mailto:a@b.org", True),
        ("tag:example.com,2026:x", True),
        ("http://a.org/%41", True),
        ("", False),
        ("http:", False),
        ("example.com/x", False),
        ("/relative", False),
        ("http://a.org/a b", False),
        ("http://a.org/<x>", False),
        ("http://a.org/%4", False),
        ("1http://a.org", False),
        ("http://a.org/\n", False),
        (None, False),
        (7, False),
    ],
)
def test_iri(value: Any, expected: bool) -> None:
    assert is_iri(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mailto:xapi@adlnet.gov", True),
        ("mailto:first.last+tag@sub.example.co.uk", True),
        ("mailto:", False),
        ("mailto:a", False),
        ("mailto:@b.org", False),
        ("mailto:a@", False),
        ("mailto:a@b@c", False),
        ("MAILTO:a@b.org", False),
        ("a@b.org", False),
        ("mailto:a b@c.org", False),
    ],
)
def test_mailto(value: str, expected: bool) -> None:
    assert is_mailto(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("en", True),
        ("en-US", True),
        ("es-MX", True),
        ("zh-Hant-TW", True),
        ("tlh", True),
        ("sl-rozaj-biske", True),
        ("de-CH-1901", True),
        ("en-US-x-twain", True),
        ("x-whatever", True),
        ("i-klingon", True),
        ("zh-min-nan", True),
        ("es-419", True),
        ("en-a-bbb-x-a-ccc", True),
        ("EN-us", True),
        ("", False),
        ("e", False),
        ("english", True),
        ("englishes", False),
        ("en_US", False),
        ("en-", False),
        ("en--US", False),
        ("en-US-", False),
        ("a-DE", False),
        ("x", False),
        ("en-abcdefghi", False),
        ("12", False),
    ],
)
def test_language_tag(value: str, expected: bool) -> None:
    # "english" is 7 letters: a registered-language-shaped tag (5*8ALPHA), well formed.
    assert is_language_tag(value) is expected


@pytest.mark.parametrize(
    ("value", "v1", "v2"),
    [
        ("2013-05-18T05:32:34.804+00:00", True, True),
        ("2015-11-18T12:17:00Z", True, True),
        ("2013-05-18T05:32:34.123456789Z", True, True),
        ("2013-05-18T05:32:34,5Z", True, True),
        ("2013-05-18T05:32Z", True, True),
        ("2013-05-18T05Z", True, True),
        ("20130518T053234Z", True, True),
        ("20130518T053234+0530", True, True),
        ("2016-12-31T23:59:60Z", True, True),
        ("2024-02-29T00:00:00Z", True, True),
        ("2013-05-18T05:32:34+05", True, True),
        ("2013-05-18T05:32:34", True, False),
        ("2013-05-18T05:32:34.804", True, False),
        ("2013-05-18", False, False),
        ("2013-05-18 05:32:34Z", False, False),
        ("2013-05-18t05:32:34z", False, False),
        ("2023-02-29T00:00:00Z", False, False),
        ("1900-02-29T00:00:00Z", False, False),
        ("2013-05-18T24:00:00Z", False, False),
        ("2013-05-18T05:60:00Z", False, False),
        ("2013-05-18T05:32:34+24:00", False, False),
        ("2013-05-18T05:32:34-00:00", False, False),
        ("2013-05-18T05:32:34-0000", False, False),
        ("2013-05-18T05:32:34+0530", False, False),
        ("2013-5-18T05:32:34Z", False, False),
        ("٢٠١٣-05-18T05:32:34Z", False, False),
        ("2013-05-18T05:32:34.Z", False, False),
    ],
)
def test_timestamp(value: str, v1: bool, v2: bool) -> None:
    assert is_timestamp(value, zone_required=False) is v1
    assert is_timestamp(value, zone_required=True) is v2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("PT4H35M59.14S", True),
        ("P3Y1M29DT4H35M59.14S", True),
        ("P3Y", True),
        ("P4W", True),
        ("PT1234S", True),
        ("PT1H0M0S", True),
        ("P1D", True),
        ("PT0.5S", True),
        ("PT1,5S", True),
        ("P0D", True),
        ("PT12.5S", True),
        # 4.6 table row 2 writes "P16559.14S": ISO 8601:2004 4.4.3.2 puts seconds after a T.
        ("P16559.14S", False),
        ("P4W1D", False),
        ("P", False),
        ("PT", False),
        ("P1DT", False),
        ("1H", False),
        ("PT1.5H30M", False),
        ("P0003-02-01T00:00:00", False),
        ("pt1h", False),
        ("PT-1S", False),
        ("P1M2Y", False),
    ],
)
def test_duration(value: str, expected: bool) -> None:
    assert is_duration(value) is expected
