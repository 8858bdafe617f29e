"""Credentials files: Ralph's JSON list or Rustici's `username:secret:role` lines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.passwords import is_bcrypt_hash
from gateway.secret import Secret
from gateway.xapi.agents import AgentError, validate_agent
from gateway.xapi.scopes import ROLE_SCOPES, ScopeSet, normalize_scopes

__all__ = ["Credential", "CredentialsError", "ParsedCredentials", "parse_credentials"]


class CredentialsError(ValueError):
    """The credentials file cannot be used; the message names the entry, never a secret."""


@dataclass(frozen=True, slots=True)
class Credential:
    """One user: a bcrypt hash (or, for Rustici lines, possibly plain text), scopes, agent."""

    username: str
    secret: Secret
    hashed: bool
    scopes: ScopeSet
    agent: dict[str, Any]
    tenant: str | None = None  # its tenant's storage and targets (None: the default's)


@dataclass(frozen=True)
class ParsedCredentials:
    """What a file holds, and what the operator should be told about it."""

    users: dict[str, Credential]
    warnings: list[str] = field(default_factory=list)


def parse_credentials(
    text: str,
    *,
    account_homepage: str,
    scope_prefix: str = "",
    tenants: frozenset[str] | None = None,
) -> ParsedCredentials:
    """Parse either format; JSON when the text starts with `[`.

    `tenants`: the configured tenant names; an entry naming another is an error (never
    the default tenant in its place). None: not checked (commands that only read).
    """
    if text.lstrip().startswith("["):
        return _parse_ralph_json(text, account_homepage, scope_prefix, tenants)
    return _parse_rustici_lines(text, account_homepage)


def _account(homepage: str, username: str) -> dict[str, Any]:
    return {"objectType": "Agent", "account": {"homePage": homepage, "name": username}}


def _parse_ralph_json(
    text: str, homepage: str, prefix: str, tenants: frozenset[str] | None
) -> ParsedCredentials:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(entries, list):
        raise CredentialsError("the JSON must be a list of credential objects")
    users: dict[str, Credential] = {}
    warnings: list[str] = []
    for index, entry in enumerate(entries):
        where = f"entry {index + 1}"
        if not isinstance(entry, dict):
            raise CredentialsError(f"{where}: must be an object")
        username = entry.get("username")
        if not isinstance(username, str) or not username or ":" in username:
            raise CredentialsError(f"{where}: 'username' must be a non-empty string without ':'")
        where = f"{where} ({username!r})"
        hashed = entry.get("hash")
        if not isinstance(hashed, str) or not is_bcrypt_hash(hashed):
            raise CredentialsError(f"{where}: 'hash' must be a bcrypt hash ($2a$, $2b$ or $2y$)")
        raw_scopes = entry.get("scopes", [])
        if not isinstance(raw_scopes, list) or not all(isinstance(s, str) for s in raw_scopes):
            raise CredentialsError(f"{where}: 'scopes' must be a list of strings")
        scopes, ignored = normalize_scopes(raw_scopes, prefix)
        if ignored:
            warnings.append(f"{where}: unknown scopes ignored: {', '.join(ignored)}")
        if not scopes:
            warnings.append(f"{where}: no known scope, this user can do nothing")
        agent = entry.get("agent")
        if agent is None:
            agent = _account(homepage, username)
            warnings.append(f"{where}: no 'agent', using account {homepage} / {username}")
        else:
            try:
                validate_agent(agent, f"{where}: agent")
            except AgentError as exc:
                raise CredentialsError(str(exc)) from None
        tenant = entry.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise CredentialsError(f"{where}: 'tenant' must be a tenant's name")
        if tenant is not None and tenants is not None and tenant not in tenants:
            known = ", ".join(sorted(tenants)) or "none configured"
            raise CredentialsError(f"{where}: no tenant {tenant!r} (tenants: {known})")
        if username in users:
            raise CredentialsError(f"{where}: the username appears more than once")
        users[username] = Credential(username, Secret(hashed), True, scopes, agent, tenant)
    return ParsedCredentials(users, warnings)


def _parse_rustici_lines(text: str, homepage: str) -> ParsedCredentials:
    users: dict[str, Credential] = {}
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        username, _, rest = line.partition(":")
        secret, _, role = rest.rpartition(":")
        if not username or not secret or not role:
            raise CredentialsError(f"{where}: expected username:secret:role")
        role = role.strip().lower()
        if role not in ROLE_SCOPES:
            # The role is not echoed: on a line missing it, it is the end of the password.
            raise CredentialsError(
                f"{where} ({username!r}): the role after the last ':' is not one of "
                f"{', '.join(ROLE_SCOPES)}"
            )
        hashed = is_bcrypt_hash(secret)
        if not hashed:
            warnings.append(
                f"{where} ({username!r}): plain-text secret; store a bcrypt hash "
                "instead (lrs-gateway auth add prints one)"
            )
        if username in users:
            raise CredentialsError(f"{where} ({username!r}): the username appears more than once")
        scopes, _ = normalize_scopes(ROLE_SCOPES[role])
        users[username] = Credential(
            username, Secret(secret), hashed, scopes, _account(homepage, username)
        )
    return ParsedCredentials(users, warnings)
