"""Property tests of the strict statement validator.

Every statement the generator builds follows xAPI (1.0.3 or 2.0) and passes; every single
mutation that breaks one rule at one place is refused, with a path in the message.
"""

from __future__ import annotations

import copy
import hashlib
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.xapi.validation import validate_statement
from gateway.xapi.validation_activity import LISTS_BY_TYPE

V1, V2 = "1.0.3", "2.0.0"
VOIDED = "http://adlnet.gov/expapi/verbs/voided"
SIGNATURE = "http://adlnet.gov/expapi/attachments/signature"
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Path = tuple[str | int, ...]
Draw = Callable[[st.SearchStrategy[Any]], Any]

# ---- generators of valid parts -------------------------------------------------------------

iris = st.one_of(
    st.builds(
        "{}://{}/{}".format,
        st.sampled_from(["http", "https"]),
        st.sampled_from(["example.com", "lms.example.org", "x.io:8080"]),
        st.text(string.ascii_letters + string.digits + "-._~/", max_size=12),
    ),
    st.sampled_from(
        [
            "urn:uuid:8f87ccde-bb56-4c2e-ab83-44982ef22df0",
            "tag:example.com,2026:x",
            "http://example.com/فعل/خواندن",
            "https://example.com/a%20b?q=1#f",
        ]
    ),
)
tags = st.sampled_from(
    [
        "en",
        "en-US",
        "en-GB",
        "fr",
        "zh-Hant-TW",
        "es-419",
        "de-CH-1901",
        "x-private",
        "i-klingon",
        "tlh",
        "sl-rozaj-biske",
    ]
)
language_maps = st.dictionaries(tags, st.text(max_size=10), min_size=1, max_size=3)
uuids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
)
timestamps = st.builds(
    lambda moment, spec, z: (
        moment.isoformat(timespec=spec).replace("+00:00", "Z")
        if z
        else moment.isoformat(timespec=spec)
    ),
    st.datetimes(datetime(1970, 1, 1), datetime(2100, 1, 1), timezones=zones),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    st.booleans(),
)
durations = st.one_of(
    st.sampled_from(["PT4H35M59.14S", "P3Y1M29DT4H35M59.14S", "P3Y", "P4W", "PT1H0M0S", "P1D"]),
    st.integers(0, 10**6).map("PT{}S".format),
    st.builds(
        "PT{}H{}M{}.{}S".format,
        st.integers(0, 99),
        st.integers(0, 59),
        st.integers(0, 59),
        st.integers(0, 99),
    ),
)
names = st.text(min_size=1, max_size=8)
mboxes = st.builds(
    "mailto:{}@{}".format,
    st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=8),
    st.sampled_from(["example.com", "b.org", "mail.example.co.uk"]),
)
sha1s = st.binary(max_size=8).map(lambda b: hashlib.sha1(b).hexdigest())  # noqa: S324
accounts = st.fixed_dictionaries({"homePage": iris, "name": names})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)
extensions = st.dictionaries(iris, json_values, max_size=3)


def optional(**parts: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=parts)


@st.composite
def agents(draw: Draw, object_type: bool = False) -> dict[str, Any]:
    ifi = draw(st.sampled_from(["mbox", "mbox_sha1sum", "openid", "account"]))
    value = draw({"mbox": mboxes, "mbox_sha1sum": sha1s, "openid": iris, "account": accounts}[ifi])
    agent: dict[str, Any] = {ifi: value, **draw(optional(name=names))}
    if object_type or draw(st.booleans()):
        agent["objectType"] = "Agent"
    return agent


@st.composite
def groups(draw: Draw) -> dict[str, Any]:
    group: dict[str, Any] = {"objectType": "Group", **draw(optional(name=names))}
    if draw(st.booleans()):  # identified: one IFI, members optional
        identifier = draw(agents())
        identifier.pop("objectType", None)
        identifier.pop("name", None)
        group.update(identifier)
        group.update(draw(optional(member=st.lists(agents(), max_size=3))))
    else:
        group["member"] = draw(st.lists(agents(), min_size=1, max_size=3))
    return group


actors = agents() | groups()
verbs = st.fixed_dictionaries({"id": iris}, optional={"display": language_maps})


@st.composite
def component_lists(draw: Draw) -> list[dict[str, Any]]:
    ids = draw(
        st.lists(st.text(string.ascii_letters, min_size=1, max_size=6), unique=True, max_size=4)
    )
    return [{"id": i, **draw(optional(description=language_maps))} for i in ids]


@st.composite
def definitions(draw: Draw) -> dict[str, Any]:
    definition: dict[str, Any] = draw(
        optional(
            name=language_maps,
            description=language_maps,
            type=iris,
            moreInfo=iris,
            extensions=extensions,
        )
    )
    if draw(st.booleans()):
        kind = draw(st.sampled_from(sorted(LISTS_BY_TYPE)))
        definition["interactionType"] = kind
        definition.update(
            draw(optional(correctResponsesPattern=st.lists(st.text(max_size=8), max_size=3)))
        )
        for key in LISTS_BY_TYPE[kind]:
            if draw(st.booleans()):
                definition[key] = draw(component_lists())
    return definition


activities = st.builds(
    lambda activity_id, extra: {"id": activity_id, **extra},
    iris,
    optional(objectType=st.just("Activity"), definition=definitions()),
)
statement_refs = st.fixed_dictionaries({"objectType": st.just("StatementRef"), "id": uuids})


@st.composite
def scores(draw: Draw) -> dict[str, Any]:
    score: dict[str, Any] = draw(optional(scaled=st.floats(-1, 1) | st.integers(-1, 1)))
    low = draw(st.integers(-100, 100))
    high = low + draw(st.integers(1, 100))
    raw = draw(st.integers(low, high) | st.floats(low, high))
    score.update(draw(optional(min=st.just(low), max=st.just(high), raw=st.just(raw))))
    return score


results = optional(
    score=scores(),
    success=st.booleans(),
    completion=st.booleans(),
    response=st.text(max_size=8),
    duration=durations,
    extensions=extensions,
)
context_activity_lists = st.dictionaries(
    st.sampled_from(["parent", "grouping", "category", "other"]),
    activities | st.lists(activities, max_size=2),
    max_size=4,
)


@st.composite
def contexts(draw: Draw, version: str, object_is_activity: bool) -> dict[str, Any]:
    parts: dict[str, st.SearchStrategy[Any]] = {
        "registration": uuids,
        "instructor": actors,
        "team": groups(),
        "contextActivities": context_activity_lists,
        "language": tags,
        "statement": statement_refs,
        "extensions": extensions,
    }
    if object_is_activity:
        parts.update(revision=st.text(max_size=4), platform=st.text(max_size=4))
    if version == V2:
        relevant = optional(relevantTypes=st.lists(iris, max_size=2))
        parts["contextAgents"] = st.lists(
            st.builds(
                lambda agent, extra: {"objectType": "contextAgent", "agent": agent, **extra},
                agents(),
                relevant,
            ),
            max_size=2,
        )
        parts["contextGroups"] = st.lists(
            st.builds(
                lambda group, extra: {"objectType": "contextGroup", "group": group, **extra},
                groups(),
                relevant,
            ),
            max_size=2,
        )
    context: dict[str, Any] = draw(optional(**parts))
    return context


@st.composite
def attachments(draw: Draw) -> dict[str, Any]:
    signature = draw(st.booleans())
    attachment = {
        "usageType": SIGNATURE if signature else draw(iris),
        "display": draw(language_maps),
        "contentType": "application/octet-stream"
        if signature
        else draw(st.sampled_from(["application/pdf", "image/png", "text/plain; charset=utf-8"])),
        "length": draw(st.integers(0, 10**9)),
        "sha2": hashlib.new(
            draw(st.sampled_from(["sha224", "sha256", "sha384", "sha512"])),
            draw(st.binary(max_size=8)),
        ).hexdigest(),
    }
    attachment.update(draw(optional(description=language_maps, fileUrl=iris)))
    return attachment


def oauth_groups() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda members: {"objectType": "Group", "member": members},
        st.lists(agents(), min_size=2, max_size=2),
    )


@st.composite
def statements(draw: Draw, version: str, sub: bool = False) -> dict[str, Any]:
    objects = [activities, agents(object_type=True), groups(), statement_refs]
    if not sub:
        objects.append(statements(version, sub=True))
    obj = draw(st.one_of(objects))
    verb = draw(verbs)
    if not sub and obj.get("objectType") == "StatementRef" and draw(st.booleans()):
        verb["id"] = VOIDED
    statement: dict[str, Any] = {"actor": draw(actors), "verb": verb, "object": obj}
    if sub:
        statement["objectType"] = "SubStatement"
    is_activity = obj.get("objectType", "Activity") == "Activity"
    statement.update(
        draw(
            optional(
                result=results,
                context=contexts(version, is_activity),
                timestamp=timestamps,
                attachments=st.lists(attachments(), max_size=2),
            )
        )
    )
    if not sub:
        authority = agents() | oauth_groups() if version == V1 else agents()
        versions = ["1.0.0", "1.0.3"] + (["2.0.0"] if version == V2 else [])
        statement.update(
            draw(
                optional(
                    id=uuids,
                    stored=timestamps,
                    authority=authority,
                    version=st.sampled_from(versions),
                )
            )
        )
    return statement


versions = st.sampled_from([V1, V2])


@SETTINGS
@given(data=st.data())
def test_every_generated_statement_passes(data: st.DataObject) -> None:
    version = data.draw(versions)
    validate_statement(data.draw(statements(version)), version, "statement")


# ---- where a statement can be broken, and how ----------------------------------------------


def sites(value: Any, kind: str, path: Path, out: list[tuple[Path, str]]) -> None:
    """Collect (path, kind) for every place of the statement, by what xAPI says is there."""
    out.append((path, kind))
    walker = WALKERS.get(kind)
    if walker is not None:
        walker(value, path, out)


def _keys(
    value: dict[str, Any],
    path: Path,
    out: list[tuple[Path, str]],
    kinds: dict[str, str],
    required: tuple[str, ...] = (),
) -> None:
    for key, kind in kinds.items():
        if key in value:
            sites(value[key], kind, (*path, key), out)
    for key in required:
        out.append(((*path, key), "required"))


def _list(kind: str) -> Callable[[Any, Path, list[tuple[Path, str]]], None]:
    def walk(value: list[Any], path: Path, out: list[tuple[Path, str]]) -> None:
        for index, item in enumerate(value):
            sites(item, kind, (*path, index), out)

    return walk


IFI_KINDS = {
    "mbox": "mbox",
    "mbox_sha1sum": "sha1",
    "openid": "iri",
    "account": "account",
    "name": "string",
}


def _walk_agent(value: dict[str, Any], path: Path, out: list[tuple[Path, str]]) -> None:
    _keys(value, path, out, IFI_KINDS)
    ifi = next(key for key in ("mbox", "mbox_sha1sum", "openid", "account") if key in value)
    out.append(((*path, ifi), "required"))
    out.append((path, "agent_ifi"))


def _walk_group(value: dict[str, Any], path: Path, out: list[tuple[Path, str]]) -> None:
    _keys(value, path, out, {**IFI_KINDS, "member": "agents"})
    if not any(key in value for key in ("mbox", "mbox_sha1sum", "openid", "account")):
        out.append(((*path, "member"), "required"))


def _walk_actor(value: dict[str, Any], path: Path, out: list[tuple[Path, str]]) -> None:
    (_walk_group if value.get("objectType") == "Group" else _walk_agent)(value, path, out)


def _walk_object(value: dict[str, Any], path: Path, out: list[tuple[Path, str]]) -> None:
    kind = value.get("objectType", "Activity")
    if kind == "SubStatement":
        out.append((path, "sub"))
    walker = {
        "Activity": WALKERS["activity"],
        "Agent": _walk_agent,
        "Group": _walk_group,
        "StatementRef": WALKERS["statement_ref"],
        "SubStatement": WALKERS["sub"],
    }[kind]
    walker(value, path, out)


def _walk_context_activities(
    value: dict[str, Any], path: Path, out: list[tuple[Path, str]]
) -> None:
    for key, entry in value.items():
        sites(entry, "activities" if isinstance(entry, list) else "activity", (*path, key), out)


def _walk_statement(value: dict[str, Any], path: Path, out: list[tuple[Path, str]]) -> None:
    _keys(
        value,
        path,
        out,
        {
            "id": "uuid",
            "actor": "actor",
            "verb": "verb",
            "object": "object",
            "result": "result",
            "context": "context",
            "timestamp": "timestamp",
            "stored": "timestamp",
            "authority": "actor",
            "version": "version",
            "attachments": "attachments",
        },
        required=("actor", "verb", "object"),
    )


WALKERS: dict[str, Callable[[Any, Path, list[tuple[Path, str]]], None]] = {
    "statement": _walk_statement,
    "sub": _walk_statement,
    "actor": _walk_actor,
    "agent": _walk_agent,
    "group": _walk_group,
    "agents": _list("agent"),
    "object": _walk_object,
    "account": lambda v, p, o: _keys(
        v, p, o, {"homePage": "iri", "name": "string"}, required=("homePage", "name")
    ),
    "verb": lambda v, p, o: _keys(
        v, p, o, {"id": "iri", "display": "language_map"}, required=("id",)
    ),
    "activity": lambda v, p, o: _keys(
        v, p, o, {"id": "iri", "definition": "definition"}, required=("id",)
    ),
    "activities": _list("activity"),
    "definition": lambda v, p, o: _keys(
        v,
        p,
        o,
        {
            "name": "language_map",
            "description": "language_map",
            "type": "iri",
            "moreInfo": "iri",
            "extensions": "extensions",
            "correctResponsesPattern": "strings",
            "choices": "components",
            "scale": "components",
            "source": "components",
            "target": "components",
            "steps": "components",
        },
    ),
    "components": _list("component"),
    "component": lambda v, p, o: _keys(
        v, p, o, {"id": "string", "description": "language_map"}, required=("id",)
    ),
    "statement_ref": lambda v, p, o: _keys(v, p, o, {"id": "uuid"}, required=("id",)),
    "result": lambda v, p, o: _keys(
        v,
        p,
        o,
        {
            "score": "score",
            "success": "bool",
            "completion": "bool",
            "response": "string",
            "duration": "duration",
            "extensions": "extensions",
        },
    ),
    "score": lambda v, p, o: _keys(v, p, o, dict.fromkeys(v, "number")),
    "context": lambda v, p, o: _keys(
        v,
        p,
        o,
        {
            "registration": "uuid",
            "instructor": "actor",
            "team": "group",
            "contextActivities": "context_activities",
            "revision": "string",
            "platform": "string",
            "language": "language",
            "statement": "statement_ref",
            "extensions": "extensions",
            "contextAgents": "context_agents",
            "contextGroups": "context_groups",
        },
    ),
    "context_activities": _walk_context_activities,
    "context_agents": _list("context_agent"),
    "context_groups": _list("context_group"),
    "context_agent": lambda v, p, o: _keys(
        v, p, o, {"agent": "agent", "relevantTypes": "iris"}, required=("agent",)
    ),
    "context_group": lambda v, p, o: _keys(
        v, p, o, {"group": "group", "relevantTypes": "iris"}, required=("group",)
    ),
    "iris": _list("iri"),
    "attachments": _list("attachment"),
    "attachment": lambda v, p, o: _keys(
        v,
        p,
        o,
        {
            "usageType": "iri",
            "display": "language_map",
            "description": "language_map",
            "contentType": "media_type",
            "length": "length",
            "sha2": "sha2",
            "fileUrl": "iri",
        },
        required=("usageType", "display", "contentType", "length", "sha2"),
    ),
}
# Kinds that are JSON objects with a fixed set of properties: an unknown one is refused.
CLOSED = {
    "statement",
    "sub",
    "actor",
    "agent",
    "group",
    "object",
    "account",
    "verb",
    "activity",
    "definition",
    "component",
    "statement_ref",
    "result",
    "score",
    "context",
    "context_activities",
    "context_agent",
    "context_group",
    "attachment",
}
# Values that are wrong for every place of a kind (and valid nowhere there).
WRONG: dict[str, list[Any]] = {
    "object": [5, "x", None, True],
    "iri": ["", "no scheme", "http://a b", "/relative", 5, None],
    "language_map": ["x", 5, None, {"en_US": "x"}, {"en": 5}, {"en": None}],
    "language": ["en_US", "", 5, None],
    "uuid": ["x", "8f87ccdebb564c2eab8344982ef22df0", "8f87ccde-bb56-4c2e-ab83-44982ef22df", 5],
    "timestamp": ["x", "2013-02-30T00:00:00Z", "2013-05-18", "2013-05-18T05:32:34-00:00", 5],
    "duration": ["1h", "P", "PT", "P1W1D", 5, None],
    "bool": ["true", 1, None],
    "string": [5, None, True, ["x"]],
    "strings": ["x", [5], [None], None],
    "number": ["1", None, True, [1]],
    "mbox": ["a@b.org", "mailto:", "mailto:a", 5],
    "sha1": ["x", "z" * 40, 5],
    "sha2": ["x", "a" * 63, 5],
    "media_type": ["pdf", "", 5],
    "length": [-1, 1.5, "1", True, None],
    "version": ["0.95", "1.0", "3.0.0", 1.0, None],
    "list": ["x", 5, None],
    "extensions": ["x", 5, None, {"no scheme": 1}],
}
LIST_KINDS = {
    "agents",
    "activities",
    "components",
    "attachments",
    "iris",
    "context_agents",
    "context_groups",
}


def render(path: Path) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)[1:]


def get(statement: Any, path: Path) -> Any:
    for part in path:
        statement = statement[part]
    return statement


def put(statement: Any, path: Path, value: Any) -> None:
    get(statement, path[:-1])[path[-1]] = value


Mutation = tuple[Callable[[Any], object], Path]  # what to do, the path to be named


def setter(path: Path, value: Any) -> Callable[[Any], object]:
    return lambda statement: put(statement, path, value)


def breakings(kind: str, path: Path, value: Any) -> list[Mutation]:
    """Mutations that break a rule at this place."""
    found: list[Mutation] = []
    if kind == "required":
        found.append((lambda s: get(s, path[:-1]).pop(path[-1]), path[:-1]))
    if kind in CLOSED:
        found.append((setter((*path, "zzUnknown"), 1), path))
    if kind in CLOSED and path:  # the statement itself is never replaced
        found += [(setter(path, wrong), path[:-1]) for wrong in WRONG["object"]]
    if kind in LIST_KINDS:
        found += [(setter(path, wrong), path[:-1]) for wrong in WRONG["list"]]
    found += [(setter(path, wrong), path[:-1]) for wrong in WRONG.get(kind, [])]
    if kind == "agent_ifi":  # a second identifier (2.4.2.1.s2.b2)
        extra, other = (
            ("openid", "http://a.org/") if "openid" not in value else ("mbox", "mailto:a@b.org")
        )
        found.append((setter((*path, extra), other), path))
    if kind == "score":
        found.append((setter((*path, "scaled"), 1.5), path))
        found.append((lambda s: get(s, path).update(min=3, max=3), path))
        found.append((lambda s: get(s, path).update(min=0, max=10, raw=11), path))
    if kind == "components" and len(value) >= 2:  # distinct ids (2.4.4.1.s16.b1)
        found.append((setter((*path, 1, "id"), value[0]["id"]), path))
    if kind == "definition" and "interactionType" in value:
        lists = LISTS_BY_TYPE[value["interactionType"]]
        missing = next(
            k for k in ("choices", "scale", "source", "target", "steps") if k not in lists
        )
        found.append((setter((*path, missing), []), path))
    if kind == "sub":  # 2.4.4.3.s8.b3, b4
        found += [
            (setter((*path, key), forbidden), path)
            for key, forbidden in [
                ("id", "8f87ccde-bb56-4c2e-ab83-44982ef22df0"),
                ("version", "1.0.0"),
                ("stored", "2013-05-18T05:32:34Z"),
                ("authority", {"mbox": "mailto:a@b.org"}),
            ]
        ]
        found.append((setter((*path, "object"), copy.deepcopy(value)), path))
    return found


def add_to_context(**parts: Any) -> Callable[[Any], object]:
    return lambda statement: statement.setdefault("context", {}).update(parts)


def statement_breakings(statement: dict[str, Any], version: str) -> list[Mutation]:
    """Rules about the statement as a whole."""
    found: list[Mutation] = []
    kind = statement["object"].get("objectType", "Activity")
    if kind != "StatementRef":  # 2.3.2.s2.b1
        found.append((setter(("verb", "id"), VOIDED), ()))
    if kind != "Activity":  # 2.4.6.s4.b1
        found.append((add_to_context(revision="1"), ()))
    one = {"objectType": "Group", "member": [{"mbox": "mailto:a@b.org"}]}
    two = {
        "objectType": "Group",
        "member": [{"mbox": "mailto:a@b.org"}, {"mbox": "mailto:c@b.org"}],
    }
    if version == V1:
        found += [
            (add_to_context(contextAgents=[]), ()),
            (setter(("version",), "2.0.0"), ()),
            (setter(("authority",), one), ()),
        ]
    else:
        found += [
            (setter(("timestamp",), "2013-05-18T05:32:34.123"), ()),
            (setter(("authority",), two), ()),
        ]
    return found


@SETTINGS
@given(data=st.data())
def test_every_single_breaking_mutation_is_refused(data: st.DataObject) -> None:
    version = data.draw(versions)
    statement = data.draw(statements(version))
    places: list[tuple[Path, str]] = []
    sites(statement, "statement", (), places)
    choices = [
        mutation
        for path, kind in places
        for mutation in breakings(kind, path, None if kind == "required" else get(statement, path))
    ]
    choices += statement_breakings(statement, version)
    mutate, named = data.draw(st.sampled_from(choices))
    broken = copy.deepcopy(statement)
    mutate(broken)
    with pytest.raises(BadRequest) as caught:
        validate_statement(broken, version, "statement")
    assert caught.value.message.startswith(render(("statement", *named)))
