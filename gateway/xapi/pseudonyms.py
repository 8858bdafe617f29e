"""Pseudonymised copies of statements: every agent becomes an account named by a keyed hash.

A target with `pseudonymise` gets each statement with every Agent and Group identifier
replaced: the actor, an Agent or Group object, the authority, context instructor and
team, Group members, SubStatements (their actor, object and context), and xAPI 2.0's
contextAgents and contextGroups. An identified agent becomes
`{"objectType": ..., "account": {"homePage": HOMEPAGE, "name": HMAC-SHA256(key, its
identifier)}}`: the same person, the same pseudonym, for one key; names are dropped. An
anonymous Group keeps only its (pseudonymised) members.

A signature cannot survive a change: a signed statement loses its signature attachment
(`strip`) or is not sent (`skip`), the target's choice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from gateway.xapi.agents import agent_identity

__all__ = ["SIGNATURE_USAGE", "Pseudonymiser", "is_signed", "without_signature"]

SIGNATURE_USAGE = "http://adlnet.gov/expapi/attachments/signature"
_AGENT_TYPES = ("Agent", "Group")


def is_signed(statement: Any) -> bool:
    """Whether a statement carries a signature attachment."""
    attachments = statement.get("attachments") if isinstance(statement, Mapping) else None
    return isinstance(attachments, list) and any(
        isinstance(a, Mapping) and a.get("usageType") == SIGNATURE_USAGE for a in attachments
    )


def without_signature(statement: dict[str, Any]) -> dict[str, Any]:
    """The statement without its signature attachment (the others kept)."""
    kept = [a for a in statement.get("attachments", []) if a.get("usageType") != SIGNATURE_USAGE]
    stripped = {k: v for k, v in statement.items() if k != "attachments"}
    if kept:
        stripped["attachments"] = kept
    return stripped


class Pseudonymiser:
    """Replaces agent identifiers with keyed pseudonyms (one key, one mapping)."""

    def __init__(self, key: bytes, homepage: str) -> None:
        self._key = key
        self._homepage = homepage

    def __repr__(self) -> str:
        return f"Pseudonymiser(homepage={self._homepage!r})"  # never the key

    def pseudonym(self, agent: Any) -> str | None:
        """The name an identified agent gets; None for one without an identifier."""
        identity = agent_identity(agent)
        if identity is None or (isinstance(identity, tuple) and identity[0] == "group"):
            return None
        canonical = json.dumps(identity, separators=(",", ":"))
        return hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()[:40]

    def agent(self, agent: Any) -> Any:
        """An Agent or Group as the target sees it."""
        if not isinstance(agent, Mapping):
            return agent
        kind = agent.get("objectType") or "Agent"
        replaced: dict[str, Any] = {"objectType": kind}
        name = self.pseudonym(agent)
        if name is not None:
            replaced["account"] = {"homePage": self._homepage, "name": name}
        members = agent.get("member")
        if kind == "Group" and isinstance(members, list):
            replaced["member"] = [self.agent(member) for member in members]
        return replaced

    def statement(self, statement: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `statement` with every agent replaced (the input is not changed)."""
        copied = dict(statement)
        for key in ("actor", "authority"):
            if key in copied:
                copied[key] = self.agent(copied[key])
        target = copied.get("object")
        if isinstance(target, Mapping):
            kind = target.get("objectType")
            if kind in _AGENT_TYPES:
                copied["object"] = self.agent(target)
            elif kind == "SubStatement":
                copied["object"] = self.statement(target)
        context = copied.get("context")
        if isinstance(context, Mapping):
            copied["context"] = self._context(context)
        return copied

    def _context(self, context: Mapping[str, Any]) -> dict[str, Any]:
        copied = dict(context)
        for key in ("instructor", "team"):
            if key in copied:
                copied[key] = self.agent(copied[key])
        for key, inner in (("contextAgents", "agent"), ("contextGroups", "group")):
            listed = copied.get(key)
            if isinstance(listed, list):
                copied[key] = [
                    {**entry, inner: self.agent(entry.get(inner))}
                    if isinstance(entry, Mapping)
                    else entry
                    for entry in listed
                ]
        return copied
