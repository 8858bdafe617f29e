"""xAPI Agent and Group checks, and identity comparison (for authority and read/mine)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from gateway.xapi.formats import is_iri, is_mailto, is_sha1_hex

__all__ = [
    "IFI_SET",
    "AgentError",
    "agent_identity",
    "authority_includes",
    "validate_actor",
    "validate_agent",
    "validate_group",
]

IFI_KEYS = ("mbox", "mbox_sha1sum", "openid", "account")
IFI_SET = _IFI_SET = frozenset(IFI_KEYS)
# The properties xAPI defines (Data 2.4.2.1, 2.4.2.2, 2.4.2.4); with `closed`, no others.
AGENT_KEYS = frozenset(("objectType", "name", *IFI_KEYS))
GROUP_KEYS = AGENT_KEYS | {"member"}
ACCOUNT_KEYS = frozenset(("homePage", "name"))


class AgentError(ValueError):
    """An agent or group does not follow xAPI's rules; the message says which rule."""


def _check_closed(obj: dict[str, Any], allowed: frozenset[str], where: str, kind: str) -> None:
    if not allowed.issuperset(obj):
        unknown = sorted(str(key) for key in obj if key not in allowed)
        raise AgentError(f"{where}.{unknown[0]}: is not a property of {kind}")


def _check_account(value: Any, where: str, closed: bool) -> None:
    if not isinstance(value, dict):
        raise AgentError(f"{where}: must be an object with homePage and name")
    if closed:
        _check_closed(value, ACCOUNT_KEYS, where, "an account")
    if not is_iri(value.get("homePage")):
        raise AgentError(f"{where}.homePage: must be an IRL")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise AgentError(f"{where}.name: must be a non-empty string")


def _check_ifi(obj: dict[str, Any], where: str, *, required: bool, closed: bool) -> None:
    present = _IFI_SET.intersection(obj)  # one C call: this runs for every agent written
    if len(present) != 1:
        if len(present) > 1:
            names = [key for key in IFI_KEYS if key in present]
            raise AgentError(
                f"{where}: has {len(names)} identifiers ({', '.join(names)}); "
                "exactly one of mbox, mbox_sha1sum, openid, account is allowed"
            )
        if required:
            raise AgentError(f"{where}: needs exactly one of mbox, mbox_sha1sum, openid, account")
        return
    key = next(iter(present))
    value = obj[key]
    if key == "mbox":
        if not is_mailto(value):
            raise AgentError(f"{where}.mbox: must be a mailto: IRI")
    elif key == "mbox_sha1sum":
        if not is_sha1_hex(value):
            raise AgentError(f"{where}.mbox_sha1sum: must be 40 hexadecimal characters")
    elif key == "openid":
        if not is_iri(value):
            raise AgentError(f"{where}.openid: must be a URI")
    else:
        _check_account(value, f"{where}.account", closed)


def _check_name(obj: dict[str, Any], where: str) -> None:
    if "name" in obj and not isinstance(obj["name"], str):
        raise AgentError(f"{where}.name: must be a string")


def validate_agent(obj: Any, where: str = "agent", *, closed: bool = False) -> None:
    """Raise AgentError unless `obj` is an Agent with exactly one identifier.

    With `closed`, a property xAPI does not define is an error too (Data 2.2.s4.b8).
    """
    if not isinstance(obj, dict):
        raise AgentError(f"{where}: must be an object")
    if "objectType" in obj and obj["objectType"] != "Agent":
        raise AgentError(f"{where}.objectType: must be Agent")
    if closed:
        _check_closed(obj, AGENT_KEYS, where, "an Agent")
    _check_ifi(obj, where, required=True, closed=closed)
    _check_name(obj, where)


def validate_group(obj: Any, where: str = "group", *, closed: bool = False) -> None:
    """Raise AgentError unless `obj` is a Group, identified or anonymous (Data 2.4.2.2)."""
    if not isinstance(obj, dict):
        raise AgentError(f"{where}: must be an object")
    if obj.get("objectType") != "Group":
        raise AgentError(f"{where}.objectType: must be Group")
    if closed:
        _check_closed(obj, GROUP_KEYS, where, "a Group")
    _check_name(obj, where)
    _check_ifi(obj, where, required=False, closed=closed)
    if "member" not in obj:
        if _IFI_SET.isdisjoint(obj):
            raise AgentError(f"{where}: an anonymous Group needs a member list")
        return
    members = obj["member"]
    if not isinstance(members, list):
        raise AgentError(f"{where}.member: must be a list of Agents")
    if not members and _IFI_SET.isdisjoint(obj):
        raise AgentError(f"{where}.member: an anonymous Group needs at least one member")
    for index, member in enumerate(members):
        # A member is an Agent, never a Group (2.4.2.2.s4.b2, 2.4.2.2.s5.b2).
        validate_agent(member, f"{where}.member[{index}]", closed=closed)


def validate_actor(obj: Any, where: str = "actor", *, closed: bool = False) -> None:
    """Raise AgentError unless `obj` is a valid Agent or Group (identified or anonymous)."""
    if isinstance(obj, dict) and obj.get("objectType") == "Group":
        validate_group(obj, where, closed=closed)
    else:
        validate_agent(obj, where, closed=closed)


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
