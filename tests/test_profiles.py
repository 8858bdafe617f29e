"""xAPI Profile Statement Templates: the cmi5 fixture profile, the rule algorithm, bad profiles.

tests/data/cmi5_profile.jsonld states cmi5's defined statements as templates; each one's
conforming statement matches it (and no other verb's template), and each targeted
violation of a rule does not. The rule algorithm itself is also checked, property-based,
against a line-by-line transcription of the specification's pseudocode.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.xapi.profiles import ProfileError, StatementTemplate, read_profile, templates_from

DATA = Path(__file__).parent / "data" / "cmi5_profile.jsonld"
CMI5 = "https://w3id.org/xapi/cmi5#"
CMI5_CATEGORY = "https://w3id.org/xapi/cmi5/context/categories/cmi5"
MOVEON_CATEGORY = "https://w3id.org/xapi/cmi5/context/categories/moveon"
EXT = "https://w3id.org/xapi/cmi5/context/extensions/"
REASON = "https://w3id.org/xapi/cmi5/result/extensions/reason"
ADL = "http://adlnet.gov/expapi/verbs/"
ADL_W3ID = "https://w3id.org/xapi/adl/verbs/"
COURSE_TYPE = "https://w3id.org/xapi/cmi5/activitytype/course"
AU = "https://course.example.org/au/1"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VERBS = {
    "launched": ADL + "launched",
    "initialized": ADL + "initialized",
    "completed": ADL + "completed",
    "passed": ADL + "passed",
    "failed": ADL + "failed",
    "abandoned": ADL_W3ID + "abandoned",
    "waived": ADL_W3ID + "waived",
    "terminated": ADL + "terminated",
    "satisfied": ADL_W3ID + "satisfied",
}
# What each cmi5 defined statement adds to the common part (result, context, object).
EXTRAS: dict[str, dict[str, Any]] = {
    "launched": {
        "context_extensions": {
            EXT + "launchmode": "Normal",
            EXT + "launchurl": "https://au.example.org/start",
            EXT + "moveon": "CompletedOrPassed",
        },
    },
    "initialized": {},
    "completed": {"result": {"completion": True, "duration": "PT4M12S"}, "moveon": True},
    "passed": {
        "result": {"success": True, "duration": "PT9M", "score": {"scaled": 0.9}},
        "context_extensions": {EXT + "masteryscore": 0.8},
        "moveon": True,
    },
    "failed": {
        "result": {"success": False, "duration": "PT9M", "score": {"scaled": 0.4}},
        "moveon": True,
    },
    "abandoned": {"result": {"duration": "PT30M"}},
    "waived": {
        "result": {"success": True, "completion": True, "extensions": {REASON: "Tested Out"}},
        "moveon": True,
    },
    "terminated": {"result": {"duration": "PT12M"}},
    "satisfied": {
        "object": {
            "objectType": "Activity",
            "id": "https://course.example.org/course",
            "definition": {"type": COURSE_TYPE},
        },
    },
}
NAMES = sorted(VERBS)


def conforming(name: str) -> dict[str, Any]:
    """A statement that follows the cmi5 template `name` (any verb for generalrestrictions)."""
    extras = copy.deepcopy(EXTRAS.get(name, {}))  # the tests mutate what this returns
    categories = [{"id": CMI5_CATEGORY}]
    if extras.get("moveon"):
        categories.append({"id": MOVEON_CATEGORY})
    made: dict[str, Any] = {
        "id": "6690e6c9-3ef0-4ed3-8b37-7f3964730bee",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "actor": {"account": {"homePage": "https://lms.example.org", "name": "learner-42"}},
        "verb": {"id": VERBS.get(name, ADL + "experienced")},
        "object": extras.get("object", {"objectType": "Activity", "id": AU}),
        "context": {
            "registration": "ec531277-b57b-4c15-8d91-d292c5b2b8f7",
            "contextActivities": {
                "category": categories,
                "grouping": [{"id": AU + "/publisher-id"}],
            },
            "extensions": {
                EXT + "sessionid": "d1b2c3e4-0000-4000-8000-000000000001",
                **extras.get("context_extensions", {}),
            },
        },
    }
    if "result" in extras:
        made["result"] = extras["result"]
    return made


@pytest.fixture(scope="module")
def profile() -> Any:
    return read_profile(DATA)


@pytest.fixture(scope="module")
def cmi5(profile: Any) -> dict[str, StatementTemplate]:
    names = [*NAMES, "generalrestrictions"]
    return dict(zip(names, templates_from(profile, [CMI5 + n for n in names]), strict=True))


def one_template(**properties: Any) -> StatementTemplate:
    """The single template of a made-up profile holding just `properties`."""
    document = {
        "id": "https://example.org/profile",
        "type": "Profile",
        "templates": [{"id": "https://example.org/t", "type": "StatementTemplate", **properties}],
    }
    (template,) = templates_from(document, ["https://example.org/t"])
    return template


def rule(**properties: Any) -> StatementTemplate:
    """A template with one rule and nothing else."""
    return one_template(rules=[properties])


# ---- the cmi5 profile ----------------------------------------------------------------------


def test_the_fixture_is_a_real_shaped_profile(profile: Any) -> None:
    assert profile["@context"] == "https://w3id.org/xapi/profiles/context"
    assert profile["type"] == "Profile"
    assert profile["conformsTo"] == "https://w3id.org/xapi/profiles#1.0"
    assert {t["id"] for t in profile["templates"]} == {
        CMI5 + n for n in [*NAMES, "generalrestrictions"]
    }
    rules = [r for t in profile["templates"] for r in t.get("rules", [])]
    assert {r.get("presence") for r in rules} >= {"included", "excluded", "recommended"}
    assert all(any(key in r for r in rules) for key in ("selector", "any", "all", "none"))
    assert any("|" in r["location"] for r in rules)


@pytest.mark.parametrize("name", NAMES)
def test_a_conforming_statement_matches_its_template_only(
    cmi5: dict[str, StatementTemplate], name: str
) -> None:
    statement = conforming(name)
    assert [n for n in NAMES if cmi5[n].matches(statement)] == [name]
    assert cmi5["generalrestrictions"].matches(statement)  # no determining property: all verbs


@pytest.mark.parametrize("name", NAMES)
def test_matching_leaves_the_statement_as_it_was(
    cmi5: dict[str, StatementTemplate], name: str
) -> None:
    statement = conforming(name)
    statement["context"]["contextActivities"]["grouping"] = {"id": AU + "/publisher-id"}
    before = copy.deepcopy(statement)
    assert cmi5[name].matches(statement)
    assert statement == before


Mutation = Callable[[dict[str, Any]], None]


def _drop_registration(s: dict[str, Any]) -> None:
    del s["context"]["registration"]


def _drop_cmi5_category(s: dict[str, Any]) -> None:
    categories = s["context"]["contextActivities"]["category"]
    categories[:] = [c for c in categories if c["id"] != CMI5_CATEGORY]


def _category_without_id(s: dict[str, Any]) -> None:
    # the selector finds no id in one category activity: unmatchable, so `included` fails
    s["context"]["contextActivities"]["category"].append({"objectType": "Activity"})


def _drop_grouping(s: dict[str, Any]) -> None:
    del s["context"]["contextActivities"]["grouping"]


def _drop_session(s: dict[str, Any]) -> None:
    del s["context"]["extensions"][EXT + "sessionid"]


def _other_verb(s: dict[str, Any]) -> None:
    s["verb"] = {"id": ADL + "experienced"}


COMMON_VIOLATIONS: dict[str, Mutation] = {
    "wrong verb": _other_verb,
    "no registration": _drop_registration,
    "no cmi5 category": _drop_cmi5_category,
    "a category activity without id": _category_without_id,
    "no grouping activity": _drop_grouping,
    "no session id": _drop_session,
}


@pytest.mark.parametrize("violation", sorted(COMMON_VIOLATIONS))
@pytest.mark.parametrize("name", NAMES)
def test_every_template_refuses_a_common_violation(
    cmi5: dict[str, StatementTemplate], name: str, violation: str
) -> None:
    statement = conforming(name)
    COMMON_VIOLATIONS[violation](statement)
    assert not cmi5[name].matches(statement)


def _set(path: str, value: Any) -> Mutation:
    def mutate(statement: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        level = statement
        for part in parents:
            level = level.setdefault(part, {})
        level[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(statement: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        level = statement
        for part in parents:
            level = level[part]
        del level[last]

    return mutate


def _add_moveon(s: dict[str, Any]) -> None:
    s["context"]["contextActivities"]["category"].append({"id": MOVEON_CATEGORY})


def _drop_moveon(s: dict[str, Any]) -> None:
    categories = s["context"]["contextActivities"]["category"]
    categories[:] = [c for c in categories if c["id"] != MOVEON_CATEGORY]


def _set_launch_extension(name: str, value: Any) -> Mutation:
    def mutate(statement: dict[str, Any]) -> None:
        statement["context"]["extensions"][EXT + name] = value

    return mutate


def _drop_launch_extension(name: str) -> Mutation:
    def mutate(statement: dict[str, Any]) -> None:
        del statement["context"]["extensions"][EXT + name]

    return mutate


SPECIFIC_VIOLATIONS: list[tuple[str, str, Mutation]] = [
    # all: [true] -- a false or a 1 is not true
    ("completed", "completion false", _set("result.completion", False)),
    ("completed", "completion 1", _set("result.completion", 1)),
    ("completed", "no completion", _delete("result.completion")),
    ("completed", "no duration", _delete("result.duration")),
    ("completed", "a score (excluded)", _set("result.score", {"scaled": 1.0})),
    ("completed", "a success (excluded)", _set("result.success", True)),
    ("completed", "no moveon category (any)", _drop_moveon),
    ("passed", "success false", _set("result.success", False)),
    ("passed", "a completion (excluded)", _set("result.completion", True)),
    ("passed", "no moveon category (any)", _drop_moveon),
    ("failed", "success true", _set("result.success", True)),
    ("failed", "no duration", _delete("result.duration")),
    ("launched", "a moveon category (none)", _add_moveon),
    ("launched", "a result completion (excluded, |)", _set("result.completion", True)),
    ("launched", "a result score (excluded, |)", _set("result.score", {"raw": 3})),
    ("launched", "launch mode not in all", _set_launch_extension("launchmode", "Sideways")),
    ("launched", "no launch mode", _drop_launch_extension("launchmode")),
    ("launched", "moveOn not in all", _set_launch_extension("moveon", "Whenever")),
    ("launched", "no launch url", _drop_launch_extension("launchurl")),
    ("initialized", "a moveon category (none)", _add_moveon),
    ("initialized", "a result success (excluded, |)", _set("result", {"success": True})),
    ("abandoned", "no duration", _delete("result.duration")),
    ("abandoned", "a moveon category (none)", _add_moveon),
    ("terminated", "a completion (excluded)", _set("result.completion", True)),
    ("waived", "a reason outside all", _set("result.extensions", {REASON: "Because"})),
    ("waived", "no reason", _delete("result.extensions")),
    ("waived", "a score (excluded)", _set("result.score", {"scaled": 1.0})),
    ("satisfied", "an object of another type (any)", _set("object.definition.type", AU)),
    ("satisfied", "an object without a type (selector: unmatchable)", _delete("object.definition")),
    ("satisfied", "a moveon category (none)", _add_moveon),
]


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        pytest.param(name, mutate, id=f"{name}: {what}")
        for name, what, mutate in SPECIFIC_VIOLATIONS
    ],
)
def test_a_targeted_violation_does_not_match(
    cmi5: dict[str, StatementTemplate], name: str, mutate: Mutation
) -> None:
    statement = conforming(name)
    mutate(statement)
    assert not cmi5[name].matches(statement)


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        pytest.param("passed", _delete("result.score"), id="passed without a score"),
        pytest.param("failed", _set("result.score", {"raw": 4}), id="failed, score not scaled"),
        pytest.param("passed", _drop_launch_extension("masteryscore"), id="no mastery score"),
        pytest.param("completed", _set("result.extensions", {"x:y": 1}), id="more in result"),
    ],
)
def test_recommended_rules_only_recommend(
    cmi5: dict[str, StatementTemplate], name: str, mutate: Mutation
) -> None:
    statement = conforming(name)
    mutate(statement)
    assert cmi5[name].matches(statement)


@pytest.mark.parametrize("name", NAMES)
def test_lone_context_activity_objects_count_as_lists_of_one(
    cmi5: dict[str, StatementTemplate], name: str
) -> None:
    statement = conforming(name)
    activities = statement["context"]["contextActivities"]
    activities["grouping"] = activities["grouping"][0]  # 0.95 style
    if len(activities["category"]) == 1:
        activities["category"] = activities["category"][0]
    assert cmi5[name].matches(statement)


@pytest.mark.parametrize(
    "statement",
    [None, [], "completed", 3, {}, {"verb": "completed"}, {"verb": {"id": ADL + "completed"}}],
)
def test_shapes_that_are_not_statements_do_not_match(
    cmi5: dict[str, StatementTemplate], statement: Any
) -> None:
    assert not any(template.matches(statement) for template in cmi5.values())


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from([CMI5_CATEGORY, MOVEON_CATEGORY, ADL + "completed", "included", True]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "verb",
                    "context",
                    "contextActivities",
                    "category",
                    "result",
                    "object",
                    "definition",
                    "type",
                    "extensions",
                    "registration",
                    "completion",
                    "scaled",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@SETTINGS
@given(statement=JSON)
def test_any_json_is_judged_without_raising(
    cmi5: dict[str, StatementTemplate], statement: Any
) -> None:
    assert all(template.matches(statement) in (True, False) for template in cmi5.values())


@SETTINGS
@given(name=st.sampled_from(NAMES), data=st.data())
def test_a_conforming_statement_with_additions_still_matches(
    cmi5: dict[str, StatementTemplate], name: str, data: st.DataObject
) -> None:
    """Properties no rule names (here: context/result extensions) do not change a match."""
    statement = conforming(name)
    extra = data.draw(st.dictionaries(st.sampled_from(["x:a", "x:b"]), JSON, max_size=2))
    statement["context"]["extensions"].update(extra)
    statement.setdefault("result", {}).setdefault("extensions", {}).update(extra)
    assert cmi5[name].matches(statement)


# ---- determining properties ----------------------------------------------------------------

PARENT_TYPE = "https://example.org/types/course"
OTHER_TYPE = "https://example.org/types/module"


def activity(type_: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"id": f"https://example.org/a/{type_}"}
    if type_ is not None:
        found["definition"] = {"type": type_}
    return found


def test_verb_is_compared_with_the_statement_verb_id() -> None:
    template = one_template(verb=ADL + "completed")
    assert template.matches({"verb": {"id": ADL + "completed"}})
    assert not template.matches({"verb": {"id": ADL + "passed"}})
    assert not template.matches({"object": {"id": AU}})


def test_object_activity_type_is_compared_with_the_object_definition_type() -> None:
    template = one_template(objectActivityType=PARENT_TYPE)
    assert template.matches({"object": activity(PARENT_TYPE)})
    assert not template.matches({"object": activity(OTHER_TYPE)})
    assert not template.matches({"object": activity()})


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("contextParentActivityType", "parent"),
        ("contextGroupingActivityType", "grouping"),
        ("contextCategoryActivityType", "category"),
        ("contextOtherActivityType", "other"),
    ],
)
def test_context_activity_types_must_all_be_in_their_list(name: str, kind: str) -> None:
    template = one_template(**{name: [PARENT_TYPE, OTHER_TYPE]})

    def with_activities(listed: Any, where: str = kind) -> dict[str, Any]:
        return {"context": {"contextActivities": {where: listed}}}

    both = [activity(PARENT_TYPE), activity(), activity(OTHER_TYPE)]
    assert template.matches(with_activities(both))  # a superset is fine
    assert not template.matches(with_activities([activity(PARENT_TYPE)]))  # all of them
    assert not template.matches(with_activities(both, "parent" if kind != "parent" else "other"))
    lone = one_template(**{name: [PARENT_TYPE]})
    assert lone.matches(with_activities(activity(PARENT_TYPE)))  # one object, 0.95 style


def test_attachment_usage_types_must_all_be_among_the_attachments() -> None:
    signature = "http://adlnet.gov/expapi/attachments/signature"
    certificate = "https://example.org/attachments/certificate"
    template = one_template(attachmentUsageType=[signature, certificate])
    both = {"attachments": [{"usageType": certificate}, {"usageType": signature}]}
    assert template.matches(both)
    assert not template.matches({"attachments": [{"usageType": signature}]})
    assert not template.matches({})


def test_determining_properties_are_checked_together() -> None:
    template = one_template(verb=ADL + "completed", objectActivityType=PARENT_TYPE)
    assert template.matches({"verb": {"id": ADL + "completed"}, "object": activity(PARENT_TYPE)})
    assert not template.matches({"verb": {"id": ADL + "passed"}, "object": activity(PARENT_TYPE)})
    assert not template.matches({"verb": {"id": ADL + "completed"}, "object": activity()})


# ---- StatementRef templates: the referenced statement is not checked -------------------------


def test_object_statement_ref_template_needs_a_statement_ref_but_not_its_statement() -> None:
    """objectStatementRefTemplate: unchecked as to the referenced statement (module docstring).

    The matcher sees one statement; the specification's algorithm passes a reference whose
    statement is not available, so any StatementRef object will do, whatever it points at.
    """
    template = one_template(
        verb=ADL + "voided",
        objectStatementRefTemplate=["https://example.org/no-such-template"],
        rules=[{"location": "$.object.id", "presence": "included"}],
    )
    ref = {"objectType": "StatementRef", "id": "6690e6c9-3ef0-4ed3-8b37-7f3964730bee"}
    assert template.object_statement_ref_templates == ("https://example.org/no-such-template",)
    assert template.matches({"verb": {"id": ADL + "voided"}, "object": ref})
    assert not template.matches({"verb": {"id": ADL + "voided"}, "object": activity()})
    # ...and its other properties still count
    assert not template.matches({"verb": {"id": ADL + "passed"}, "object": ref})
    assert not template.matches(
        {"verb": {"id": ADL + "voided"}, "object": {"objectType": "StatementRef"}}
    )


def test_context_statement_ref_template_needs_a_statement_ref_but_not_its_statement() -> None:
    template = one_template(contextStatementRefTemplate=[CMI5 + "launched"])
    ref = {"objectType": "StatementRef", "id": "6690e6c9-3ef0-4ed3-8b37-7f3964730bee"}
    assert template.matches({"context": {"statement": ref}})
    assert not template.matches({"context": {}})
    assert not template.matches({"context": {"statement": {"id": ref["id"]}}})


# ---- the rule algorithm --------------------------------------------------------------------


def test_included_needs_a_value_and_no_unmatchable_one() -> None:
    template = rule(
        location="$.context.contextActivities.grouping[*]", selector="$.id", presence="included"
    )
    assert template.matches({"context": {"contextActivities": {"grouping": [{"id": "a"}]}}})
    assert not template.matches({"context": {"contextActivities": {"grouping": []}}})
    assert not template.matches(
        {"context": {"contextActivities": {"grouping": [{"id": "a"}, {"name": "b"}]}}}
    )


def test_excluded_ignores_unmatchable_values() -> None:
    template = rule(location="$.items[*]", selector="$.id", presence="excluded")
    assert template.matches({})
    assert template.matches({"items": [{"name": "no id"}]})
    assert not template.matches({"items": [{"name": "no id"}, {"id": "x"}]})


def test_recommended_applies_value_lists_only_to_what_is_present() -> None:
    template = rule(
        location="$.result.extensions['x:grade']", presence="recommended", any=["A", "B"]
    )
    assert template.matches({})
    assert template.matches({"result": {"extensions": {"x:grade": "B"}}})
    assert not template.matches({"result": {"extensions": {"x:grade": "F"}}})


def test_without_presence_any_needs_a_value_but_all_and_none_do_not() -> None:
    """The specification's algorithm: `all` over nothing found holds (vacuously)."""
    assert not rule(location="$.a", any=["x"]).matches({})
    assert rule(location="$.a", all=["x"]).matches({})
    assert rule(location="$.a", none=["x"]).matches({})


def test_all_fails_on_an_unmatchable_value_even_without_presence() -> None:
    template = rule(location="$.items[*]", selector="$.id", all=["a"])
    assert template.matches({"items": [{"id": "a"}, {"id": "a"}]})
    assert not template.matches({"items": [{"id": "a"}, {}]})
    assert not template.matches({"items": [{"id": "a"}, {"id": "b"}]})


def test_any_and_none_look_at_each_value_found() -> None:
    assert rule(location="$.items[*]", any=["b", "z"]).matches({"items": ["a", "b"]})
    assert not rule(location="$.items[*]", any=["z"]).matches({"items": ["a", "b"]})
    assert not rule(location="$.items[*]", none=["b"]).matches({"items": ["a", "b"]})
    assert rule(location="$.items[*]", none=["z"]).matches({"items": ["a", "b"]})
    # a location that finds the array itself finds one value: the array
    assert rule(location="$.items", any=[["a", "b"]]).matches({"items": ["a", "b"]})
    assert not rule(location="$.items", any=["a"]).matches({"items": ["a", "b"]})


@pytest.mark.parametrize(
    ("wanted", "found", "expected"),
    [
        (True, 1, False),
        (1, True, False),
        (1, 1.0, True),
        ("1", 1, False),
        ({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, 2], [2, 1], False),
        (None, None, True),
    ],
)
def test_values_compare_as_json(wanted: Any, found: Any, expected: bool) -> None:
    assert rule(location="$.v", presence="included", any=[wanted]).matches({"v": found}) is expected


def test_a_null_found_is_a_matchable_value() -> None:
    assert rule(location="$.v", presence="included").matches({"v": None})
    assert not rule(location="$.v", presence="excluded").matches({"v": None})


def test_pipe_joins_whole_expressions() -> None:
    template = rule(
        location="$.result.success | $.result.completion", all=[True], presence="included"
    )
    assert template.matches({"result": {"success": True, "completion": True}})
    assert template.matches({"result": {"completion": True}})
    assert not template.matches({"result": {"success": True, "completion": False}})
    assert not template.matches({})
    # jsonpath-ng's own `|` would read `$.a.b|c.d` as `$.a.(b|c).d`
    assert rule(location="$.a.b|c.d", presence="included").matches({"c": {"d": 1}})


def test_a_pipe_inside_quotes_is_part_of_a_name() -> None:
    template = rule(location="$.context.extensions['x:a|b']", presence="included")
    assert template.matches({"context": {"extensions": {"x:a|b": 1}}})
    assert not template.matches({"context": {"extensions": {"x:a": 1, "b": 1}}})
    escaped = rule(location="$['it\\'s|here']", presence="included")
    assert escaped.matches({"it's|here": 1})


@pytest.mark.parametrize(
    ("location", "found", "absent"),
    [
        ("$..id", {"id": 1, "o": {"id": 2}, "l": [{"id": 3}]}, {"o": {"ids": [1]}}),
        ("$.l[0,2]", {"l": [1, 2, 3]}, {"l": []}),
        ("$['a','b']", {"a": 1, "b": 2}, {"c": 1}),
        ("$.*", {"a": 1}, {}),
        ("$.l[*]", {"l": [1]}, {"l": []}),
        ("object.id", {"object": {"id": 1}}, {"object": {}}),  # no `$`: the spec's example
    ],
)
def test_the_specifications_jsonpath_is_understood(
    location: str, found: dict[str, Any], absent: dict[str, Any]
) -> None:
    assert rule(location=location, presence="included").matches(found)
    assert not rule(location=location, presence="included").matches(absent)


def test_rules_apply_to_a_substatement_with_lone_context_activities() -> None:
    template = rule(location="$.object.context.contextActivities.parent[*].id", any=["p"])
    inner = {
        "objectType": "SubStatement",
        "context": {"contextActivities": {"parent": {"id": "p"}}},
    }
    assert template.matches({"object": inner})


UNMATCHABLE = object()
VALUES = st.sampled_from(["a", "b", "c", 1, True, False, None])


def follows_rule_as_written(
    values: list[Any],
    presence: str | None,
    any_: list[Any] | None,
    all_: list[Any] | None,
    none: list[Any] | None,
) -> bool:
    """The specification's follows_rule, transcribed line by line (after apply_jsonpath)."""

    def contains(listed: list[Any], value: Any) -> bool:
        return any(type(v) is type(value) and v == value for v in listed)

    strict = True
    if presence == "included":
        if any(v is UNMATCHABLE for v in values):
            return False
        if not values:
            return False
    if presence == "excluded" and values and any(v is not UNMATCHABLE for v in values):
        return False
    if presence == "recommended":
        strict = False
    # "values does not intersect with rule.any" (UNMATCHABLE is in no list)
    intersects = any(v is not UNMATCHABLE and contains(any_ or [], v) for v in values)
    if any_ is not None and (strict or values) and not intersects:
        return False
    if all_ is not None and (strict or values):
        if any(v is UNMATCHABLE for v in values):
            return False
        for value in values:
            if not contains(all_, value):
                return False
    if none is not None and (strict or values):
        for value in values:
            if value is not UNMATCHABLE and contains(none, value):
                return False
    return True


ITEMS = st.lists(st.one_of(VALUES.map(lambda v: {"v": v}), st.just({"w": 0})), max_size=5)
VALUE_LISTS = st.none() | st.lists(VALUES, min_size=1, max_size=3)


@SETTINGS
@given(
    items=ITEMS,
    selector=st.booleans(),
    presence=st.sampled_from([None, "included", "excluded", "recommended"]),
    any_=VALUE_LISTS,
    all_=VALUE_LISTS,
    none=VALUE_LISTS,
)
def test_rules_follow_the_specifications_algorithm(
    items: list[dict[str, Any]],
    selector: bool,
    presence: str | None,
    any_: list[Any] | None,
    all_: list[Any] | None,
    none: list[Any] | None,
) -> None:
    properties: dict[str, Any] = {"presence": presence, "any": any_, "all": all_, "none": none}
    properties = {k: v for k, v in properties.items() if v is not None}
    if not properties:
        properties["presence"] = "recommended"  # a rule must say something
        presence = "recommended"
    if selector:
        properties |= {"location": "$.items[*]", "selector": "$.v"}
        values = [item.get("v", UNMATCHABLE) for item in items]
    else:
        properties |= {"location": "$.items[*].v"}
        values = [item["v"] for item in items if "v" in item]
    expected = follows_rule_as_written(values, presence, any_, all_, none)
    assert rule(**properties).matches({"items": items}) is expected


# ---- profiles that cannot be used ----------------------------------------------------------


@pytest.mark.parametrize("document", [None, [], {}, {"templates": {}}, {"type": "Profile"}])
def test_a_document_that_is_not_a_profile_is_refused(document: Any) -> None:
    with pytest.raises(ProfileError, match="not an xAPI Profile: it has no `templates` list"):
        templates_from(document, [CMI5 + "completed"])


def test_an_unknown_template_id_is_refused(profile: Any) -> None:
    with pytest.raises(
        ProfileError,
        match=r"template https://w3id.org/xapi/cmi5#finished: not in the profile "
        r"https://w3id.org/xapi/cmi5$",
    ):
        templates_from(profile, [CMI5 + "completed", CMI5 + "finished"])


def test_only_the_named_templates_are_compiled_in_the_order_named(profile: Any) -> None:
    document = copy.deepcopy(profile)
    document["templates"].append({"id": "https://example.org/broken", "rules": "no"})
    found = templates_from(document, [CMI5 + "passed", CMI5 + "launched"])
    assert [t.id for t in found] == [CMI5 + "passed", CMI5 + "launched"]
    assert templates_from(document, []) == ()


def test_template_ids_must_not_be_one_string(profile: Any) -> None:
    with pytest.raises(TypeError, match="not one string"):
        templates_from(profile, CMI5 + "completed")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("$.result[?(@.success)]", "not valid JSONPath: .*Unexpected character: \\?"),
        ("$.result[", "not valid JSONPath: Parse error"),
        ("$.", "not valid JSONPath: Parse error"),
        ("", "a JSONPath string"),
        ("   ", "a JSONPath string"),
        ("$.a | ", "an empty `|` alternative"),
        ("$.a & $.b", "`&` outside quotes"),
        ("$.list[-1]", "not valid JSONPath for xAPI Profiles: negative index"),
        ("$.list[1:2]", "not valid JSONPath for xAPI Profiles: slice"),
        ("$.a.`parent`", "not valid JSONPath for xAPI Profiles: parent"),
        ("$.a.`this`", "not valid JSONPath for xAPI Profiles: this"),
        ("$.a where $.b", "not valid JSONPath for xAPI Profiles: where"),
    ],
)
@pytest.mark.parametrize("part", ["location", "selector"])
def test_a_bad_jsonpath_is_refused_naming_template_rule_and_path(
    path: str, reason: str, part: str
) -> None:
    properties = {"location": "$.ok", "presence": "included", part: path}
    with pytest.raises(ProfileError, match=reason) as refused:
        one_template(rules=[{"location": "$.fine", "presence": "included"}, properties])
    assert str(refused.value).startswith(f"template https://example.org/t: rules[1].{part}: ")
    if path.strip():
        assert repr(path) in str(refused.value)


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        (
            {"location": "$.a", "presence": "required"},
            r"rules\[0\]\.presence: included, excluded or recommended, not 'required'",
        ),
        ({"location": "$.a", "any": "x"}, r"rules\[0\]\.any: a non-empty list of values, not 'x'"),
        ({"location": "$.a", "all": {"x": 1}}, r"rules\[0\]\.all: a non-empty list of values"),
        (
            {"location": "$.a", "none": []},
            r"rules\[0\]\.none: a non-empty list of values, not \[\]",
        ),
        ({"location": "$.a"}, r"rules\[0\]: a rule needs presence, any, all or none"),
        ({"location": "$.a", "scopeNote": {"en": "x"}}, r"rules\[0\]: a rule needs presence"),
        ({"presence": "included"}, r"rules\[0\]: a rule needs a location"),
        (
            {"location": 3, "presence": "included"},
            r"rules\[0\]\.location: a JSONPath string, not 3",
        ),
    ],
)
def test_a_bad_rule_is_refused(properties: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=f"^template https://example.org/t: {message}"):
        one_template(rules=[properties])


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"rules": {"location": "$.a"}}, "rules: a list of Statement Template Rules"),
        ({"rules": ["$.a"]}, r"rules\[0\]: a Statement Template Rule object"),
        ({"verb": ["x:v"]}, "verb: an IRI string"),
        ({"objectActivityType": ""}, "objectActivityType: an IRI string"),
        ({"contextCategoryActivityType": "x:t"}, "contextCategoryActivityType: a non-empty list"),
        ({"contextParentActivityType": []}, "contextParentActivityType: a non-empty list"),
        ({"attachmentUsageType": ["x:u", 3]}, "attachmentUsageType: every member an IRI string"),
        ({"objectStatementRefTemplate": "x:t"}, "objectStatementRefTemplate: a non-empty list"),
        (
            {"objectActivityType": "x:t", "objectStatementRefTemplate": ["x:s"]},
            "objectActivityType and objectStatementRefTemplate exclude each other",
        ),
    ],
)
def test_a_bad_template_is_refused(properties: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=f"^template https://example.org/t: {message}"):
        one_template(**properties)


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        ([{"type": "StatementTemplate"}], r"templates\[0\]: a Statement Template without an `id`"),
        (["x:t"], r"templates\[0\]: a Statement Template without an `id`"),
        ([{"id": "x:t"}, {"id": "x:t"}], "template x:t: the profile has it twice"),
    ],
)
def test_a_bad_templates_list_is_refused(templates: list[Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        templates_from({"templates": templates}, ["x:t"])


@SETTINGS
@given(
    path=st.text(alphabet="$.*[]'\"\\|&,:?@()`-_ 0123456789abc", max_size=16) | st.text(max_size=8)
)
def test_any_path_text_compiles_or_is_refused_as_a_profile_error(path: str) -> None:
    def compiled_or_refusal() -> StatementTemplate | str:
        try:
            return rule(location=path, presence="included")
        except ProfileError as refused:
            return str(refused)

    found = compiled_or_refusal()
    if isinstance(found, str):
        assert found.startswith("template https://example.org/t: rules[0].location: ")
    else:
        assert found.matches({"a": [1, {"b": "c"}]}) in (True, False)


def test_matching_never_parses_jsonpath(
    cmi5: dict[str, StatementTemplate], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_parsing(path: str) -> Any:
        raise AssertionError(f"parsed {path!r} while matching")

    monkeypatch.setattr("gateway.xapi.profiles.parse_jsonpath", no_parsing)
    for name in NAMES:
        assert cmi5[name].matches(conforming(name))


def test_read_profile_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonld"
    with pytest.raises(ProfileError, match=f"^{missing}: cannot read the profile: No such file"):
        read_profile(missing)
    with pytest.raises(ProfileError, match=f"^{tmp_path}: cannot read the profile"):
        read_profile(tmp_path)


@pytest.mark.parametrize("content", [b"", b"{", b"{'a': 1}", b"\xff\xfe{}", b"[1,]"])
def test_read_profile_names_a_file_that_is_not_json(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.jsonld"
    bad.write_bytes(content)
    with pytest.raises(ProfileError, match=f"^{bad}: the profile is not JSON: "):
        read_profile(bad)
