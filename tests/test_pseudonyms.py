"""Pseudonymised copies: no original identifier survives anywhere; the mapping is stable
and keyed. Property tests over statements with agents in every place xAPI puts them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.xapi.pseudonyms import Pseudonymiser, is_signed, without_signature

HOME = "https://pseudonyms.example.org"
KEY = b"k" * 32

# Identifiers and names are drawn from a marked alphabet, so a match in the output can
# only be a survivor (the statement's other strings never contain the marker).
token = st.text(alphabet="abcdefghij0123456789", min_size=6, max_size=12).map(lambda t: "zq" + t)


@st.composite
def agents(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["mbox", "mbox_sha1sum", "openid", "account"]))
    value = draw(token)
    agent: dict[str, Any] = {"objectType": "Agent", "name": draw(token)}
    if kind == "mbox":
        agent["mbox"] = f"mailto:{value}@{draw(token)}.org"
    elif kind == "mbox_sha1sum":
        agent["mbox_sha1sum"] = value
    elif kind == "openid":
        agent["openid"] = f"https://{value}.example.org/"
    else:
        agent["account"] = {"homePage": f"https://{draw(token)}.org", "name": value}
    return agent


@st.composite
def groups(draw: st.DrawFn) -> dict[str, Any]:
    group: dict[str, Any] = {
        "objectType": "Group",
        "name": draw(token),
        "member": draw(st.lists(agents(), min_size=1, max_size=3)),
    }
    if draw(st.booleans()):  # an identified Group
        group["mbox"] = f"mailto:{draw(token)}@groups.org"
    return group


actors = st.one_of(agents(), groups())


@st.composite
def statements(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "id": "6690e6c9-3ef0-4ed3-8b37-7f3964730bee",
        "actor": draw(actors),
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/activity"},
        "authority": draw(actors),
        "context": {
            "instructor": draw(actors),
            "team": draw(groups()),
            "contextAgents": [
                {"objectType": "contextAgent", "agent": draw(agents())}
                for _ in range(draw(st.integers(0, 2)))
            ],
            "contextGroups": [
                {"objectType": "contextGroup", "group": draw(groups())}
                for _ in range(draw(st.integers(0, 2)))
            ],
        },
    }
    choice = draw(st.sampled_from(["activity", "agent", "sub"] if depth == 0 else ["agent"]))
    if choice == "agent":
        statement["object"] = draw(actors)
    elif choice == "sub":
        sub = draw(statements(depth + 1))
        statement["object"] = {
            "objectType": "SubStatement",
            **{k: sub[k] for k in ("actor", "verb", "object", "context")},
        }
    return statement


def originals(value: Any) -> set[str]:
    """Every marked string in a statement: identifiers and names."""
    found: set[str] = set()
    if isinstance(value, dict):
        for item in value.values():
            found |= originals(item)
    elif isinstance(value, list):
        for item in value:
            found |= originals(item)
    elif isinstance(value, str) and "zq" in value:
        found.add(value)
    return found


@settings(max_examples=300, deadline=None)
@given(statements())
def test_no_original_identifier_or_name_survives(statement: dict[str, Any]) -> None:
    sent = json.dumps(Pseudonymiser(KEY, HOME).statement(statement))
    marks = originals(statement)
    assert marks  # the strategy did put identities in
    assert not any(mark in sent for mark in marks)
    assert "zq" not in sent


@settings(max_examples=100, deadline=None)
@given(agents(), statements())
def test_the_same_person_is_the_same_pseudonym_and_the_key_decides(
    agent: dict[str, Any], statement: dict[str, Any]
) -> None:
    one, same, other = (
        Pseudonymiser(KEY, HOME),
        Pseudonymiser(KEY, HOME),
        Pseudonymiser(b"o" * 32, HOME),
    )
    as_actor = one.statement({**statement, "actor": agent})["actor"]
    renamed = {**agent, "name": "someone else entirely"}  # names do not identify
    as_instructor = same.statement({**statement, "context": {"instructor": renamed}})
    assert as_actor == as_instructor["context"]["instructor"]
    assert as_actor["account"]["homePage"] == HOME
    assert other.agent(agent)["account"]["name"] != as_actor["account"]["name"]


def test_an_mbox_differing_only_in_domain_case_is_one_person() -> None:
    pseudonyms = Pseudonymiser(KEY, HOME)
    assert pseudonyms.agent({"mbox": "mailto:ada@Example.ORG"}) == pseudonyms.agent(
        {"mbox": "mailto:ada@example.org"}
    )


def test_an_anonymous_group_keeps_only_its_pseudonymised_members() -> None:
    group = {"objectType": "Group", "name": "zqteam", "member": [{"mbox": "mailto:zq1@a.org"}]}
    replaced = Pseudonymiser(KEY, HOME).agent(group)
    assert set(replaced) == {"objectType", "member"}
    assert "zq" not in json.dumps(replaced)


def test_a_signature_is_stripped_and_other_attachments_stay() -> None:
    signature = {"usageType": "http://adlnet.gov/expapi/attachments/signature", "sha2": "a"}
    other = {"usageType": "http://example.org/certificate", "sha2": "b"}
    statement = {"actor": {"mbox": "mailto:a@b.org"}, "attachments": [signature, other]}
    assert is_signed(statement)
    assert without_signature(statement)["attachments"] == [other]
    alone = without_signature({**statement, "attachments": [signature]})
    assert "attachments" not in alone
    assert not is_signed(alone)
    assert "k" * 32 not in repr(Pseudonymiser(KEY, HOME))
