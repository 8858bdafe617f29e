"""Launch restrictions, the pure part: which statements and requests are inside one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import Forbidden
from gateway.xapi.restrictions import Restriction, RestrictionError
from gateway.xapi.scopes import Resource

ANNA = {"mbox": "mailto:anna@example.org"}
AU = "https://course.example.org/au/1"
REG = "0b4f8c6e-8f3a-4a55-9a3b-6d2f3c1e9a10"


def restriction(**changes: Any) -> Restriction:
    raw = {"actor": ANNA, "activity": AU, "registration": REG.upper()} | changes
    return Restriction.parse({k: v for k, v in raw.items() if v is not None}, sub_activities=True)


def statement(**changes: Any) -> dict[str, Any]:
    return {
        "actor": {"objectType": "Agent", "mbox": "mailto:anna@EXAMPLE.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": AU},
        "context": {"registration": REG},
    } | changes


@pytest.mark.parametrize(
    ("iri", "inside"),
    [
        (AU, True),
        (AU + "/quiz", True),
        (AU + "#q1", True),
        (AU + "?part=2", True),
        (AU + "0", False),  # au/10 is another AU, not a sub-activity of au/1
        ("https://course.example.org/au", False),
        (None, False),
    ],
)
def test_sub_activities_go_on_from_the_iri_after_a_separator(iri: Any, inside: bool) -> None:
    assert restriction().covers_activity(iri) is inside
    exact = Restriction.parse({"activity": AU}, sub_activities=False)
    assert exact.covers_activity(iri) is (iri == AU)


def test_a_statement_is_inside_by_actor_activity_anywhere_and_registration() -> None:
    r = restriction()
    assert r.why_not(statement()) is None  # the registration's case and mbox domain ignored
    in_context = statement(
        object={"objectType": "StatementRef", "id": REG},
        context={"registration": REG, "contextActivities": {"parent": {"id": AU}}},
    )
    assert r.why_not(in_context) is None
    assert "actor" in (r.why_not(statement(actor={"mbox": "mailto:boris@example.org"})) or "")
    assert "activities" in (r.why_not(statement(object={"id": "https://x.org/other"})) or "")
    assert "registration" in (r.why_not(statement(context={})) or "")
    agent_object = statement(object={"objectType": "Agent", "id": AU, "mbox": "mailto:x@y.z"})
    assert r.why_not(agent_object) is not None  # an Agent's "id" is not an activity
    with pytest.raises(Forbidden, match="statement 1 is outside it"):
        r.check_write([statement(), statement(context={"registration": REG.replace("0", "1")})])


def test_parts_left_out_are_not_restricted() -> None:
    only_activity = Restriction.parse({"activity": AU}, sub_activities=True)
    assert only_activity.allows(statement(actor={"mbox": "mailto:boris@example.org"}, context={}))
    only_actor = Restriction.parse({"actor": ANNA}, sub_activities=True)
    assert only_actor.allows(statement(object={"id": "https://x.org/other"}, context={}))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("x", "must be an object"),
        ({}, "needs an actor"),
        ({"actor": {"objectType": "Group", "mbox": "mailto:g@x.org"}}, "not a Group"),
        ({"actor": {"mbox": "anna@example.org"}}, "restrict.actor"),
        ({"activity": "course 1"}, "activity's IRI"),
        ({"registration": "ABC"}, "UUID"),
        ({"verb": "x"}, "restrict.verb"),
    ],
)
def test_a_restriction_that_cannot_be_is_refused(raw: Any, message: str) -> None:
    with pytest.raises(RestrictionError, match=message):
        Restriction.parse(raw, sub_activities=True)


def test_requests_outside_are_403_and_queries_get_the_filters() -> None:
    r = restriction()
    anna, boris = json.dumps(ANNA), json.dumps({"mbox": "mailto:boris@example.org"})
    state = {"agent": anna, "activityId": AU + "/page/2", "registration": REG}
    r.check_request(Resource.STATE, "GET", state)
    r.check_request(Resource.AGENTS, "GET", {"agent": anna})
    r.check_request(Resource.ACTIVITIES, "GET", {"activityId": AU})
    r.check_request(Resource.STATEMENTS, "GET", {"agent": anna, "registration": REG})
    for resource, query in [
        (Resource.STATE, state | {"agent": boris}),
        (Resource.STATE, state | {"agent": "not json"}),
        (Resource.STATE, {k: v for k, v in state.items() if k != "registration"}),
        (Resource.AGENT_PROFILE, {"agent": boris, "profileId": "p"}),
        (Resource.ACTIVITY_PROFILE, {"activityId": "https://x.org/a", "profileId": "p"}),
        (Resource.STATEMENTS, {"agent": boris}),
        (Resource.STATEMENTS, {"related_agents": "true"}),
        (Resource.OTHER, {}),
    ]:
        with pytest.raises(Forbidden):
            r.check_request(resource, "GET", query)
    added = dict(r.statement_query([("limit", "10")]))
    assert json.loads(added["agent"]) == ANNA
    assert added["registration"] == REG
    by_id = [("statementId", REG)]
    assert r.statement_query(by_id) == by_id  # xAPI allows nothing beside an id


def test_the_claim_round_trips() -> None:
    r = restriction()
    assert Restriction.parse(r.as_claim(), sub_activities=True) == r
