"""Launch restrictions (cmi5-style): a token limited to one actor, activity, registration.

A restricted token writes only statements about its actor (as `actor`), its activity (as
the object, or among the context activities) and its registration; reads only such
statements; and touches state, profiles and agents only for them. The gateway enforces it
whatever the query says: a restriction is not a filter the client may widen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Forbidden
from gateway.xapi.agents import AgentError, agent_identity, validate_agent
from gateway.xapi.scopes import Resource

__all__ = ["Restriction", "RestrictionError"]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_IRI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
# What may follow a restricted activity's IRI in a sub-activity's: a path, query or fragment.
_SUB_SEPARATORS = ("/", "?", "#")
_CONTEXT_KINDS = ("parent", "grouping", "category", "other")


class RestrictionError(ValueError):
    """A restriction that cannot be: the message says which part."""


@dataclass(frozen=True, slots=True)
class Restriction:
    """What a restricted token may touch; None parts are not restricted."""

    actor: dict[str, Any] | None = None
    activity: str | None = None
    registration: str | None = None
    sub_activities: bool = True  # the activity's sub-activities (by IRI prefix) too
    actor_key: Hashable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "actor_key", agent_identity(self.actor))

    @classmethod
    def parse(cls, raw: Any, *, sub_activities: bool) -> Restriction:
        """A restriction from its JSON form (a token request's `restrict`, a token's claim)."""
        if not isinstance(raw, Mapping):
            raise RestrictionError("restrict must be an object")
        unknown = sorted(set(raw) - {"actor", "activity", "registration"})
        if unknown:
            raise RestrictionError(f"restrict.{unknown[0]}: not a restriction")
        actor = raw.get("actor")
        if actor is not None:
            if isinstance(actor, Mapping) and actor.get("objectType") == "Group":
                raise RestrictionError("restrict.actor: must be an Agent, not a Group")
            try:
                validate_agent(actor, "restrict.actor")
            except AgentError as exc:
                raise RestrictionError(str(exc)) from None
        activity = raw.get("activity")
        if activity is not None and (
            not isinstance(activity, str) or _IRI.fullmatch(activity) is None
        ):
            raise RestrictionError("restrict.activity: must be an activity's IRI")
        registration = raw.get("registration")
        if registration is not None and (
            not isinstance(registration, str) or _UUID.fullmatch(registration) is None
        ):
            raise RestrictionError("restrict.registration: must be a UUID")
        if actor is None and activity is None and registration is None:
            raise RestrictionError("restrict needs an actor, an activity or a registration")
        return cls(
            dict(actor) if actor is not None else None,
            activity,
            registration.lower() if registration is not None else None,
            sub_activities,
        )

    def as_claim(self) -> dict[str, Any]:
        """The JSON form, for a token's claims."""
        claim: dict[str, Any] = {}
        if self.actor is not None:
            claim["actor"] = self.actor
        if self.activity is not None:
            claim["activity"] = self.activity
        if self.registration is not None:
            claim["registration"] = self.registration
        return claim

    # -- what is inside -----------------------------------------------------------------

    def covers_activity(self, iri: Any) -> bool:
        """Whether `iri` is the restricted activity (or, if allowed, one of its sub-activities)."""
        if self.activity is None:
            return True
        if not isinstance(iri, str):
            return False
        if iri == self.activity:
            return True
        return (
            self.sub_activities
            and iri.startswith(self.activity)
            and (
                self.activity.endswith(_SUB_SEPARATORS)
                or iri[len(self.activity)] in _SUB_SEPARATORS
            )
        )

    def covers_agent(self, agent: Any) -> bool:
        """Whether `agent` is the restricted actor."""
        return self.actor is None or agent_identity(agent) == self.actor_key

    def covers_registration(self, registration: Any) -> bool:
        """Whether `registration` is the restricted one."""
        return self.registration is None or (
            isinstance(registration, str) and registration.lower() == self.registration
        )

    def why_not(self, statement: Any) -> str | None:
        """Why `statement` is outside the restriction; None when it is inside."""
        if not isinstance(statement, Mapping):
            return "not a statement"
        if not self.covers_agent(statement.get("actor")):
            return "its actor is not the token's actor"
        context = statement.get("context")
        context = context if isinstance(context, Mapping) else {}
        if self.activity is not None and not any(
            self.covers_activity(iri) for iri in _activities_of(statement, context)
        ):
            return "neither its object nor its context activities are the token's activity"
        if not self.covers_registration(context.get("registration")):
            return "its context registration is not the token's registration"
        return None

    def allows(self, statement: Any) -> bool:
        """Whether a statement read from storage may be shown to the token's holder."""
        return self.why_not(statement) is None

    # -- requests -----------------------------------------------------------------------

    def check_write(self, statements: list[Any]) -> None:
        """403 unless every statement written is inside the restriction."""
        for index, statement in enumerate(statements):
            reason = self.why_not(statement)
            if reason is not None:
                where = f"statement {index}" if len(statements) > 1 else "the statement"
                raise Forbidden(f"the token is restricted: {where} is outside it ({reason})")

    def check_request(self, resource: Resource, method: str, query: Mapping[str, str]) -> None:
        """403 unless a request's parameters stay inside the restriction (not statements)."""
        if resource is Resource.STATEMENTS:
            self._check_statement_query(query)
        elif resource is Resource.STATE:
            self._check_agent_param(query)
            self._check_activity_param(query)
            if self.registration is not None and not self.covers_registration(
                query.get("registration")
            ):
                raise Forbidden("the token is restricted to one registration: give it")
        elif resource in (Resource.AGENT_PROFILE, Resource.AGENTS):
            self._check_agent_param(query)
        elif resource in (Resource.ACTIVITY_PROFILE, Resource.ACTIVITIES):
            self._check_activity_param(query)
        else:
            raise Forbidden(f"a restricted token cannot {method} this resource")

    def _check_agent_param(self, query: Mapping[str, str]) -> None:
        if self.actor is None:
            return
        try:
            agent = json.loads(query.get("agent", ""))
        except ValueError:
            agent = None
        if not self.covers_agent(agent):
            raise Forbidden("the token is restricted to one agent: ask about it only")

    def _check_activity_param(self, query: Mapping[str, str]) -> None:
        if self.activity is not None and not self.covers_activity(query.get("activityId")):
            raise Forbidden("the token is restricted to one activity: ask about it only")

    def _check_statement_query(self, query: Mapping[str, str]) -> None:
        if "agent" in query:
            self._check_agent_param(query)
        if self.actor is not None and query.get("related_agents", "false") != "false":
            raise Forbidden("a token restricted to one actor reads its own statements only")
        if "registration" in query and not self.covers_registration(query["registration"]):
            raise Forbidden("the token is restricted to another registration")

    def statement_query(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A statement query's parameters with the restriction's filters added.

        A single-statement query is left alone (xAPI allows nothing beside its id): what
        it finds is checked instead.
        """
        names = {name for name, _ in pairs}
        if names & {"statementId", "voidedStatementId"}:
            return pairs
        extra = []
        if self.actor is not None and "agent" not in names:
            extra.append(("agent", json.dumps(self.actor, separators=(",", ":"))))
        if self.registration is not None and "registration" not in names:
            extra.append(("registration", self.registration))
        return pairs + extra


def _activities_of(statement: Mapping[str, Any], context: Mapping[str, Any]) -> list[Any]:
    """The activity ids a statement is about: its object's, then its context activities'."""
    found = []
    target = statement.get("object")
    if isinstance(target, Mapping) and target.get("objectType", "Activity") == "Activity":
        found.append(target.get("id"))
    activities = context.get("contextActivities")
    if isinstance(activities, Mapping):
        for kind in _CONTEXT_KINDS:
            listed = activities.get(kind)
            for item in listed if isinstance(listed, list) else [listed]:
                if isinstance(item, Mapping):
                    found.append(item.get("id"))
    return found
