"""Which statements a forwarding target gets: its `filter`, checked as they are queued.

A filter is a mapping of conditions; all must hold, and each lists values any one of
which will do:

    filter:
      verb: [http://adlnet.gov/expapi/verbs/completed]
      activity: [https://course.example.org/c/1]        # the object, or any context activity
      activity_prefix: [https://course.example.org/]    # an IRI prefix of one of those
      activity_type: [http://adlnet.gov/expapi/activities/course]
      actor: [{mbox: mailto:learner@example.org}]       # by identifier (a Group: or a member)
      actor_homepage: [https://lms.example.org]         # an account's homePage
      authority: [{account: {homePage: ..., name: ...}}]
      registration: [6f1c...]                           # context.registration
      platform: [Moodle]                                # context.platform
      version: ["1.0", "2.0"]                           # the xAPI version it was written in
      profile: {file: cmi5.jsonld, templates: [https://w3id.org/xapi/cmi5#completed]}

A voiding statement is not judged by its own content: it goes where the statement it
voids went, so a target never keeps a statement its source voided (`voided_id` names it;
the target worker looks it up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.xapi.agents import agent_identity
from gateway.xapi.profiles import ProfileError, StatementTemplate, read_profile, templates_from

__all__ = ["CONDITIONS", "FilterError", "StatementFilter", "voided_id"]

VOIDED = "http://adlnet.gov/expapi/verbs/voided"
_CONTEXT_KINDS = ("parent", "grouping", "category", "other")


class FilterError(ValueError):
    """A filter that cannot be used (the configuration names the target)."""


def voided_id(statement: Any) -> str | None:
    """The id a voiding statement voids; None for any other statement."""
    if not isinstance(statement, dict):
        return None
    verb, target = statement.get("verb"), statement.get("object")
    if not isinstance(verb, dict) or verb.get("id") != VOIDED or not isinstance(target, dict):
        return None
    found = target.get("id")
    if target.get("objectType") != "StatementRef" or not isinstance(found, str):
        return None
    return found.lower()


def _activities(statement: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The statement's object activity and context activities (a SubStatement's too).

    `dict` checks, not `Mapping`: statements come from JSON, and an ABC check costs several
    times more on a path every queued statement takes.
    """
    inner = statement.get("object")
    levels: list[Mapping[str, Any]] = [statement]
    if isinstance(inner, dict) and _is_substatement(inner):
        levels.append(inner)
    for level in levels:
        target = level.get("object")
        if isinstance(target, dict) and target.get("objectType", "Activity") == "Activity":
            yield target
        context = level.get("context")
        kinds = context.get("contextActivities") if isinstance(context, dict) else None
        if not isinstance(kinds, dict):
            continue
        for kind in _CONTEXT_KINDS:
            listed = kinds.get(kind)
            for activity in listed if isinstance(listed, list) else [listed]:
                if isinstance(activity, dict):
                    yield activity


def _is_substatement(value: Any) -> bool:
    return isinstance(value, dict) and value.get("objectType") == "SubStatement"


def _activity_ids(statement: Mapping[str, Any]) -> Iterator[str]:
    for activity in _activities(statement):
        found = activity.get("id")
        if isinstance(found, str):
            yield found


def _agents(agent: Any) -> Iterator[Any]:
    """An Agent, or a Group and its members."""
    if isinstance(agent, dict):
        yield agent
        members = agent.get("member")
        if agent.get("objectType") == "Group" and isinstance(members, list):
            yield from members


def _context(statement: Mapping[str, Any], key: str) -> Any:
    context = statement.get("context")
    return context.get(key) if isinstance(context, dict) else None


def _minor(version: Any) -> str | None:
    """Major.minor of a version: filters compare "1.0" of "1.0.3"."""
    if not isinstance(version, str):
        return None
    return ".".join(version.split(".")[:2])


Check = Callable[[Mapping[str, Any], str | None], bool]


def _strings(name: str, values: list[Any]) -> frozenset[str]:
    if not all(isinstance(v, str) and v for v in values):
        raise FilterError(f"filter.{name}: a list of non-empty strings")
    return frozenset(values)


def _identities(name: str, values: list[Any]) -> frozenset[Any]:
    keys = [agent_identity(v) for v in values]
    if None in keys:
        raise FilterError(
            f"filter.{name}: a list of agents, each with one identifier (mbox, "
            "mbox_sha1sum, openid or account {homePage, name})"
        )
    return frozenset(keys)


def _verb(values: list[Any]) -> Check:
    wanted = _strings("verb", values)

    def check(statement: Mapping[str, Any], _: str | None) -> bool:
        verb = statement.get("verb")
        return isinstance(verb, dict) and verb.get("id") in wanted

    return check


def _activity(values: list[Any]) -> Check:
    wanted = _strings("activity", values)
    return lambda statement, _: any(i in wanted for i in _activity_ids(statement))


def _activity_prefix(values: list[Any]) -> Check:
    prefixes = tuple(_strings("activity_prefix", values))
    return lambda statement, _: any(i.startswith(prefixes) for i in _activity_ids(statement))


def _activity_type(values: list[Any]) -> Check:
    wanted = _strings("activity_type", values)

    def check(statement: Mapping[str, Any], _: str | None) -> bool:
        for activity in _activities(statement):
            definition = activity.get("definition")
            if isinstance(definition, dict) and definition.get("type") in wanted:
                return True
        return False

    return check


def _actor(values: list[Any]) -> Check:
    wanted = _identities("actor", values)
    return lambda statement, _: any(
        agent_identity(a) in wanted for a in _agents(statement.get("actor"))
    )


def _actor_homepage(values: list[Any]) -> Check:
    wanted = _strings("actor_homepage", values)

    def check(statement: Mapping[str, Any], _: str | None) -> bool:
        for agent in _agents(statement.get("actor")):
            account = agent.get("account") if isinstance(agent, dict) else None
            if isinstance(account, dict) and account.get("homePage") in wanted:
                return True
        return False

    return check


def _authority(values: list[Any]) -> Check:
    wanted = _identities("authority", values)
    return lambda statement, _: any(
        agent_identity(a) in wanted for a in _agents(statement.get("authority"))
    )


def _registration(values: list[Any]) -> Check:
    wanted = frozenset(v.lower() for v in _strings("registration", values))

    def check(statement: Mapping[str, Any], _: str | None) -> bool:
        found = _context(statement, "registration")
        return isinstance(found, str) and found.lower() in wanted

    return check


def _platform(values: list[Any]) -> Check:
    wanted = _strings("platform", values)
    return lambda statement, _: _context(statement, "platform") in wanted


def _version(values: list[Any]) -> Check:
    wanted = frozenset(_minor(v) for v in _strings("version", values))

    def check(statement: Mapping[str, Any], written_in: str | None) -> bool:
        # The statement's own `version` if it has one, else the request's header.
        return _minor(statement.get("version") or written_in or "1.0.0") in wanted

    return check


def _profile(values: list[Any], base: Path | None) -> Check:
    """Any of the named xAPI Profile statement templates (gateway.xapi.profiles)."""
    templates: list[StatementTemplate] = []
    for spec in values:
        if (
            not isinstance(spec, Mapping)
            or set(spec) != {"file", "templates"}
            or not isinstance(spec["file"], str)
            or not isinstance(spec["templates"], list)
            or not spec["templates"]
        ):
            raise FilterError("filter.profile: {file: PATH, templates: [template ids]}")
        path = Path(spec["file"])
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            templates += templates_from(read_profile(path), spec["templates"])
        except ProfileError as exc:
            raise FilterError(f"filter.profile: {exc}") from None
    return lambda statement, _: any(template.matches(statement) for template in templates)


CONDITIONS: Mapping[str, Callable[[list[Any]], Check]] = {
    "verb": _verb,
    "activity": _activity,
    "activity_prefix": _activity_prefix,
    "activity_type": _activity_type,
    "actor": _actor,
    "actor_homepage": _actor_homepage,
    "authority": _authority,
    "registration": _registration,
    "platform": _platform,
    "version": _version,
}


@dataclass(frozen=True, slots=True)
class StatementFilter:
    """A target's filter, compiled once.

    `quick` runs on the request path as statements are queued (microseconds: ids and
    strings compared); a profile's templates (JSONPath rules, about 0.1 ms a statement)
    are left to the target's worker, which applies the whole filter as it sends.
    """

    checks: tuple[Check, ...]
    described: str
    slow: tuple[Check, ...] = ()

    @classmethod
    def compile(cls, spec: Mapping[str, Any], base: Path | None = None) -> StatementFilter:
        """From the configuration's mapping; FilterError says what is wrong.

        `base`: where a profile's relative `file` is (the configuration's directory). A
        profile file is read here: compile at start, off the event loop.
        """
        if not isinstance(spec, Mapping) or not spec:
            raise FilterError("filter: a mapping of conditions (verb, activity, ...)")
        checks = []
        slow = []
        for name, values in spec.items():
            if name == "profile":
                listed = values if isinstance(values, list) else [values]
                slow.append(_profile(listed, base))
                continue
            make = CONDITIONS.get(name)
            if make is None:
                raise FilterError(
                    f"filter: unknown condition {str(name)[:40]!r} "
                    f"(known: {', '.join(CONDITIONS)}, profile)"
                )
            listed = values if isinstance(values, list) else [values]
            if not listed:
                raise FilterError(f"filter.{name}: an empty list matches nothing")
            checks.append(make(listed))
        return cls(tuple(checks), ", ".join(sorted(spec)), tuple(slow))

    def quick(self, statement: Any, written_in: str | None = None) -> bool:
        """Whether the target may get `statement`, judged by the cheap conditions alone."""
        if not isinstance(statement, dict):
            return False
        return all(check(statement, written_in) for check in self.checks)

    def matches(self, statement: Any, written_in: str | None = None) -> bool:
        """Whether the target gets `statement` (never asked of a voiding statement)."""
        return self.quick(statement, written_in) and all(
            check(statement, written_in) for check in self.slow
        )
