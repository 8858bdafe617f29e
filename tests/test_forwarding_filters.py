"""Per-target filters: each condition, any-of within one, all of them together."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from test_profiles import conforming

from gateway.xapi.filters import FilterError, StatementFilter, voided_id

PROFILE = Path(__file__).parent / "data" / "cmi5_profile.jsonld"
CMI5 = "https://w3id.org/xapi/cmi5#"

COURSE = "https://course.example.org/c/1"
BASE: dict[str, Any] = {
    "id": "6690e6c9-3ef0-4ed3-8b37-7f3964730bee",
    "actor": {"mbox": "mailto:learner@Example.org"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {
        "id": f"{COURSE}/quiz",
        "definition": {"type": "http://adlnet.gov/expapi/activities/assessment"},
    },
    "authority": {"account": {"homePage": "https://lms.example.org", "name": "lms"}},
    "context": {
        "registration": "EC531277-B57B-4C15-8D91-D292C5B2B8F7",
        "platform": "Moodle",
        "contextActivities": {
            "parent": [{"id": COURSE}],
            "grouping": {"id": "https://program.example.org/p"},  # 0.95 style: one object
        },
    },
}


def statement(**changes: Any) -> dict[str, Any]:
    made = copy.deepcopy(BASE)
    made.update(changes)
    return made


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"verb": ["http://adlnet.gov/expapi/verbs/completed"]}, True),
        ({"verb": ["http://adlnet.gov/expapi/verbs/passed"]}, False),
        ({"activity": [COURSE]}, True),  # a context parent
        ({"activity": ["https://program.example.org/p"]}, True),  # a lone grouping object
        ({"activity": ["https://course.example.org/c/2"]}, False),
        ({"activity_prefix": ["https://course.example.org/"]}, True),
        ({"activity_prefix": ["https://other.example.org/"]}, False),
        ({"activity_type": ["http://adlnet.gov/expapi/activities/assessment"]}, True),
        ({"activity_type": ["http://adlnet.gov/expapi/activities/course"]}, False),
        ({"actor": [{"mbox": "mailto:learner@example.org"}]}, True),  # mbox: case-blind domain
        ({"actor": [{"mbox": "mailto:someone@example.org"}]}, False),
        ({"actor_homepage": ["https://lms.example.org"]}, False),  # the actor has no account
        (
            {"authority": [{"account": {"homePage": "https://lms.example.org", "name": "lms"}}]},
            True,
        ),
        ({"registration": ["ec531277-b57b-4c15-8d91-d292c5b2b8f7"]}, True),  # any case
        ({"registration": ["00000000-0000-4000-8000-000000000000"]}, False),
        ({"platform": ["Moodle", "Canvas"]}, True),
        ({"platform": ["Canvas"]}, False),
        ({"version": ["1.0.3"]}, True),  # no version: written in the header's (1.0.3)
        ({"version": ["2.0.0"]}, False),
        # All conditions must hold.
        ({"verb": ["http://adlnet.gov/expapi/verbs/completed"], "platform": ["Canvas"]}, False),
        ({"verb": ["http://adlnet.gov/expapi/verbs/completed"], "platform": ["Moodle"]}, True),
    ],
)
def test_each_condition(spec: dict[str, Any], expected: bool) -> None:
    assert StatementFilter.compile(spec).matches(statement(), "1.0.3") is expected


def test_a_group_actor_matches_by_a_member_and_accounts_by_homepage() -> None:
    group = {
        "objectType": "Group",
        "member": [{"account": {"homePage": "https://sso.example.org", "name": "u1"}}],
    }
    item = statement(actor=group)
    assert StatementFilter.compile({"actor_homepage": ["https://sso.example.org"]}).matches(item)
    assert StatementFilter.compile(
        {"actor": [{"account": {"homePage": "https://sso.example.org", "name": "u1"}}]}
    ).matches(item)


def test_a_substatements_activities_count() -> None:
    item = statement(
        object={
            "objectType": "SubStatement",
            "actor": {"mbox": "mailto:a@b.org"},
            "verb": {"id": "http://example.org/plans"},
            "object": {"id": "https://course.example.org/c/9"},
        },
        context={},
    )
    assert StatementFilter.compile({"activity": ["https://course.example.org/c/9"]}).matches(item)


def test_the_statements_own_version_wins_over_the_requests() -> None:
    item = statement(version="2.0.0")
    assert StatementFilter.compile({"version": ["2.0"]}).matches(item, "1.0.3")
    assert not StatementFilter.compile({"version": ["1.0"]}).matches(item, "1.0.3")
    assert StatementFilter.compile({"version": ["2.0.0"]}).matches(statement(), "2.0.0")


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ({}, "a mapping of conditions"),
        ({"colour": ["red"]}, "unknown condition 'colour'"),
        ({"verb": []}, "an empty list matches nothing"),
        ({"verb": [3]}, "filter.verb: a list of non-empty strings"),
        ({"actor": [{"name": "no identifier"}]}, "filter.actor: a list of agents"),
    ],
)
def test_a_bad_filter_says_what_is_wrong(spec: Any, said: str) -> None:
    with pytest.raises(FilterError, match=said):
        StatementFilter.compile(spec)


def test_a_voiding_statement_names_what_it_voids() -> None:
    voiding = {
        "actor": {"mbox": "mailto:admin@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
        "object": {"objectType": "StatementRef", "id": "6690E6C9-3EF0-4ED3-8B37-7F3964730BEE"},
    }
    assert voided_id(voiding) == "6690e6c9-3ef0-4ed3-8b37-7f3964730bee"
    assert voided_id(statement()) is None
    assert voided_id({**voiding, "object": {"id": "http://x.org/a"}}) is None


def test_a_profile_condition_takes_statements_that_follow_any_named_template() -> None:
    spec = {"file": PROFILE.name, "templates": [CMI5 + "completed", CMI5 + "passed"]}
    check = StatementFilter.compile({"profile": spec}, PROFILE.parent)  # relative: the base
    assert check.matches(conforming("completed"))
    assert check.matches(conforming("passed"))
    assert not check.matches(conforming("launched"))  # another template's
    broken = conforming("completed")
    del broken["context"]["registration"]  # cmi5 requires it
    assert not check.matches(broken)
    both = StatementFilter.compile(
        {"profile": spec, "platform": ["Moodle"]}, PROFILE.parent
    )  # with another condition: all must hold
    assert not both.matches(conforming("completed"))


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ({"file": "cmi5_profile.jsonld"}, "filter.profile: {file: PATH, templates:"),
        ({"file": "nowhere.jsonld", "templates": ["x"]}, "filter.profile: .*nowhere.jsonld"),
        (
            {"file": "cmi5_profile.jsonld", "templates": ["https://example.org/none"]},
            "filter.profile: .*https://example.org/none",
        ),
    ],
)
def test_a_bad_profile_condition_says_what_is_wrong(spec: Any, said: str) -> None:
    with pytest.raises(FilterError, match=said):
        StatementFilter.compile({"profile": spec}, PROFILE.parent)
