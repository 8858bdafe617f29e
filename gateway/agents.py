"""xAPI Agent and Group checks, and identity comparison (for authority and read/mine)."""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from typing import Any

__all__ = ["AgentError", "agent_identity", "authority_includes", "validate_actor", "validate_agent"]

IFI_KEYS = ("mbox", "mbox_sha1sum", "openid", "account")
_SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")


class AgentError(ValueError):
    """An agent or group does not follow xAPI's rules; the message says which rule."""


def _check_ifi(obj: Mapping[str, Any], where: str, *, required: bool) -> None:
    present = [key for key in IFI_KEYS if key in obj]
    if len(present) > 1:
        raise AgentError(f"{where}: has {len(present)} identifiers ({', '.join(present)}); "
                         "exactly one of mbox, mbox_sha1sum, openid, account is allowed")
    if not present:
        if required:
            raise AgentError(f"{where}: needs exactly one of mbox, mbox_sha1sum, openid, account")
        return
    key = present[0]
    value = obj[key]
    if key == "mbox":
        if not isinstance(value, str) or not value.startswith("mailto:") or "@" not in value:
            raise AgentError(f"{where}.mbox: must be a mailto: IRI")
    elif key == "mbox_sha1sum":
        if not isinstance(value, str) or not _SHA1.match(value):
            raise AgentError(f"{where}.mbox_sha1sum: must be 40 hexadecimal characters")
    elif key == "openid":
        if not isinstance(value, str) or ":" not in value:
            raise AgentError(f"{where}.openid: must be a URI")
    else:
        if not isinstance(value, Mapping):
            raise AgentError(f"{where}.account: must be an object with homePage and name")
        home, name = value.get("homePage"), value.get("name")
        if not isinstance(home, str) or ":" not in home:
            raise AgentError(f"{where}.account.homePage: must be an IRL")
        if not isinstance(name, str) or not name:
            raise AgentError(f"{where}.account.name: must be a non-empty string")


def _check_name(obj: Mapping[str, Any], where: str) -> None:
    if "name" in obj and not isinstance(obj["name"], str):
        raise AgentError(f"{where}.name: must be a string")


def validate_agent(obj: Any, where: str = "agent") -> None:
    """Raise AgentError unless `obj` is an Agent with exactly one identifier."""
    if not isinstance(obj, Mapping):
        raise AgentError(f"{where}: must be an object")
    if obj.get("objectType", "Agent") != "Agent":
        raise AgentError(f"{where}.objectType: must be Agent")
    _check_ifi(obj, where, required=True)
    _check_name(obj, where)


def validate_actor(obj: Any, where: str = "actor") -> None:
    """Raise AgentError unless `obj` is a valid Agent or Group (identified or anonymous)."""
    if not isinstance(obj, Mapping):
        raise AgentError(f"{where}: must be an object")
    if obj.get("objectType") != "Group":
        validate_agent(obj, where)
        return
    _check_name(obj, where)
    _check_ifi(obj, where, required=False)
    members = obj.get("member")
    identified = any(key in obj for key in IFI_KEYS)
    if members is None:
        if not identified:
            raise AgentError(f"{where}: an anonymous Group needs a member list")
        return
    if not isinstance(members, list) or (not identified and not members):
        raise AgentError(f"{where}.member: must be a list of Agents")
    for index, member in enumerate(members):
        validate_agent(member, f"{where}.member[{index}]")


def _normal_mbox(mbox: str) -> str:
    # Domains are case-insensitive, and LRSes (Ralph) lowercase them when storing.
    local, at, domain = mbox.rpartition("@")
    return f"{local}{at}{domain.lower()}" if at else mbox


def agent_identity(obj: Any) -> Hashable | None:
    """A comparable key for an Agent or Group, None when `obj` is not identifiable.

    An identified Agent or Group is keyed by its identifier, an anonymous Group by its members'.
    """
    if not isinstance(obj, Mapping):
        return None
    for key in IFI_KEYS:
        if key in obj:
            value = obj[key]
            if key == "account":
                if not isinstance(value, Mapping):
                    return None
                return ("account", str(value.get("homePage")), str(value.get("name")))
            if not isinstance(value, str):
                return None
            return (key, _normal_mbox(value) if key == "mbox" else value)
    members = obj.get("member")
    if obj.get("objectType") == "Group" and isinstance(members, list):
        keys = frozenset(agent_identity(member) for member in members)
        return None if None in keys else ("group", keys)
    return None


def authority_includes(authority: Any, agent_key: Hashable) -> bool:
    """True when `authority` is the agent itself, or an (OAuth-style) Group with it as a member."""
    if agent_identity(authority) == agent_key:
        return True
    if isinstance(authority, Mapping) and authority.get("objectType") == "Group":
        members = authority.get("member")
        if isinstance(members, list):
            return any(agent_identity(member) == agent_key for member in members)
    return False
