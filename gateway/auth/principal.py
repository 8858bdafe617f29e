"""The authenticated caller, whatever the scheme that proved it."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from gateway.xapi.agents import agent_identity
from gateway.xapi.restrictions import Restriction
from gateway.xapi.scopes import ScopeSet

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: id, xAPI agent (the future `authority`), scopes, scheme, tenant."""

    id: str
    agent: dict[str, Any]
    scopes: ScopeSet
    scheme: str
    tenant: str | None = None
    expires_at: float | None = field(default=None, compare=False)  # bearer tokens: their exp
    restriction: Restriction | None = None  # a launch token's actor/activity/registration
    agent_key: Hashable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: read/mine compares it against every statement of every page.
        object.__setattr__(self, "agent_key", agent_identity(self.agent))
