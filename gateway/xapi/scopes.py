"""The scope table: which scopes a caller holds and what they allow, per xAPI resource."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Literal

__all__ = [
    "KNOWN_SCOPES",
    "ROLE_SCOPES",
    "Resource",
    "ScopeSet",
    "covers",
    "is_allowed",
    "normalize_scopes",
    "statements_read_mode",
]


class Resource(enum.Enum):
    """xAPI resources the policy tells apart."""

    STATEMENTS = "statements"
    STATE = "state"
    ACTIVITY_PROFILE = "activity_profile"
    AGENT_PROFILE = "agent_profile"
    ACTIVITIES = "activities"
    AGENTS = "agents"
    OTHER = "other"  # anything else under /xAPI/: an LRS extension; only `all` or `all/read`


ScopeSet = frozenset[str]

# Composite scopes expand to what they contain; `all` and `all/read` are checked as is.
_EXPANSIONS: dict[str, tuple[str, ...]] = {
    "state": ("state/read", "state/write"),
    "profile": ("profile/read", "profile/write"),
}
KNOWN_SCOPES = frozenset(
    {
        "all",
        "all/read",
        "statements/write",
        "statements/read",
        "statements/read/mine",
        "state/read",
        "state/write",
        "profile/read",
        "profile/write",
        "define",
        "admin",
        "tokens/issue",
    }
)
_READ_SCOPES = frozenset(
    {
        "all/read",
        "statements/read",
        "statements/read/mine",
        "state/read",
        "profile/read",
        "define",
    }
)
_GATEWAY_SCOPES = frozenset({"admin", "tokens/issue"})
_ALIASES: dict[str, str] = {
    "activities_profile": "profile",  # SQL LRS
    "agents_profile": "profile",  # SQL LRS
    "xapi/all": "all",  # Learning Locker
    "xapi/read": "all/read",  # Learning Locker
}
ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "root": ("all",),
    "read-only": ("all/read",),
    "write-only": ("statements/write", "state/write", "profile/write"),
    "user": ("statements/write", "statements/read/mine", "state", "profile"),
}


def normalize_scopes(raw: Iterable[str], prefix: str = "") -> tuple[ScopeSet, list[str]]:
    """Strip the prefix, resolve aliases and composites; return (granted, ignored)."""
    granted: set[str] = set()
    ignored: list[str] = []
    for scope in raw:
        name = scope[len(prefix) :] if prefix and scope.startswith(prefix) else scope
        name = _ALIASES.get(name, name)
        if name in _EXPANSIONS:
            granted.update(_EXPANSIONS[name])
        elif name in KNOWN_SCOPES:
            granted.add(name)
        else:
            ignored.append(scope)
    return frozenset(granted), ignored


_READ_METHODS = frozenset({"GET", "HEAD"})
_NEEDED: dict[tuple[Resource, bool], frozenset[str]] = {
    (Resource.STATEMENTS, False): frozenset({"statements/read", "statements/read/mine"}),
    (Resource.STATEMENTS, True): frozenset({"statements/write"}),
    (Resource.STATE, False): frozenset({"state/read"}),
    (Resource.STATE, True): frozenset({"state/write"}),
    (Resource.ACTIVITY_PROFILE, False): frozenset({"profile/read"}),
    (Resource.ACTIVITY_PROFILE, True): frozenset({"profile/write"}),
    (Resource.AGENT_PROFILE, False): frozenset({"profile/read"}),
    (Resource.AGENT_PROFILE, True): frozenset({"profile/write"}),
    (Resource.ACTIVITIES, False): frozenset({"define"}),
    (Resource.AGENTS, False): frozenset({"define"}),
}


def is_allowed(scopes: ScopeSet, resource: Resource, method: str) -> bool:
    """Whether `scopes` allow `method` on `resource` (OPTIONS counts as a read)."""
    if "all" in scopes:
        return True
    read = method in _READ_METHODS or method == "OPTIONS"
    if read and "all/read" in scopes:
        return True
    return not scopes.isdisjoint(_NEEDED.get((resource, not read), frozenset()))


def covers(granted: ScopeSet, scope: str) -> bool:
    """Whether holding `granted` includes `scope` (a token may only narrow its issuer's)."""
    if scope in granted:
        return True
    if scope in _GATEWAY_SCOPES:
        return False  # `all` is about xAPI data, not about running the gateway
    if "all" in granted:
        return True
    if "all/read" in granted and scope in _READ_SCOPES:
        return True
    return scope == "statements/read/mine" and "statements/read" in granted


def statements_read_mode(scopes: ScopeSet) -> Literal["all", "mine"] | None:
    """How much of the statement stream the caller may read."""
    if not scopes.isdisjoint({"all", "all/read", "statements/read"}):
        return "all"
    if "statements/read/mine" in scopes:
        return "mine"
    return None
