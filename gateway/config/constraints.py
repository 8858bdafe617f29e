"""Constraints on single settings, declared on the dataclass fields they constrain.

A field says what its value must be in its metadata, so that a new setting carries its
check with it instead of relying on someone to extend a list kept elsewhere:

    timeout: float = field(default=10.0, metadata=positive())
    validation: str = field(default="strict", metadata=one_of(VALIDATION_MODES))
    max_retries: int = field(metadata=at_least(0))

`declared_problems` walks a whole configuration and checks every declaration. Checks that
span several values (two settings that go together, one port that must differ from another)
stay code, in `gateway.config.settings`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONSTRAINT",
    "AtLeast",
    "Between",
    "Constraint",
    "OneOf",
    "Positive",
    "Problem",
    "at_least",
    "between",
    "declared_problems",
    "one_of",
    "positive",
]

# A problem: the keys (dotted paths) whose values are to blame, and the message naming them.
Problem = tuple[tuple[str, ...], str]

CONSTRAINT = "constraint"  # the field metadata key a constraint is declared under


class Constraint(ABC):
    """What one setting's value must be."""

    @abstractmethod
    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, to follow `key: ` in a message; None when it is fine."""


@dataclass(frozen=True)
class Positive(Constraint):
    """Greater than 0: a size, a count, a rate or a time the gateway divides or waits by."""

    def problem(self, value: Any) -> str | None:
        """See `Constraint.problem`."""
        return None if value > 0 else "must be greater than 0"


@dataclass(frozen=True)
class AtLeast(Constraint):
    """`low` or more."""

    low: int

    def problem(self, value: Any) -> str | None:
        """See `Constraint.problem`."""
        return None if value >= self.low else f"must be {self.low} or more"


@dataclass(frozen=True)
class Between(Constraint):
    """From `low` to `high`, both included; `message` keeps a setting's established wording."""

    low: float
    high: float
    message: str | None = None

    def problem(self, value: Any) -> str | None:
        """See `Constraint.problem`."""
        if self.low <= value <= self.high:
            return None
        return self.message or f"must be between {self.low} and {self.high}"


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of `allowed`; `message` keeps a setting's established wording."""

    allowed: tuple[str, ...]
    message: str | None = None

    def problem(self, value: Any) -> str | None:
        """See `Constraint.problem`."""
        if value in self.allowed:
            return None
        # At most 40 characters of the value: enough to recognise it, never a whole paste.
        return self.message or f"one of {', '.join(self.allowed)} (not {str(value)[:40]!r})"


def positive() -> Mapping[str, Constraint]:
    """Field metadata: the value must be greater than 0."""
    return {CONSTRAINT: Positive()}


def at_least(low: int) -> Mapping[str, Constraint]:
    """Field metadata: the value must be `low` or more."""
    return {CONSTRAINT: AtLeast(low)}


def between(low: float, high: float, *, message: str | None = None) -> Mapping[str, Constraint]:
    """Field metadata: the value must be from `low` to `high`."""
    return {CONSTRAINT: Between(low, high, message)}


def one_of(allowed: tuple[str, ...], *, message: str | None = None) -> Mapping[str, Constraint]:
    """Field metadata: the value must be one of `allowed`."""
    return {CONSTRAINT: OneOf(allowed, message)}


def declared_problems(config: Any) -> list[Problem]:
    """Every declared constraint that a value in dataclass `config` breaks, in field order.

    Sections (dataclass values) are walked into and named `section.key`; each item of a
    tuple of dataclasses is named `key[i]`, followed in messages by ` (label)` when the item
    has a label, as forwarding targets do: `forwardings[0] (analytics): timeout: ...`.
    """
    return list(_walk(config, "", ""))


def _walk(obj: Any, key_prefix: str, message_prefix: str) -> Iterator[Problem]:
    """`key_prefix` starts the blamed keys; `message_prefix` starts the messages."""
    for fld in dataclasses.fields(obj):
        value = getattr(obj, fld.name)
        key = f"{key_prefix}{fld.name}"
        named = f"{message_prefix}{fld.name}"
        if _is_instance(value):
            yield from _walk(value, f"{key}.", f"{named}.")
        elif isinstance(value, tuple) and all(map(_is_instance, value)):
            for index, item in enumerate(value):
                label = getattr(item, "label", None)
                where = f"{message_prefix}{fld.name}[{index}]"
                where += "" if label is None else f" ({label})"
                yield from _walk(item, f"{key}[{index}].", f"{where}: ")
        constraint = fld.metadata.get(CONSTRAINT)
        if constraint is None or value is None:  # None: an optional setting left unset
            continue
        problem = constraint.problem(value)
        if problem is not None:
            yield (key,), f"{named}: {problem}"


def _is_instance(value: Any) -> bool:
    """Whether `value` is a dataclass instance (not a dataclass type)."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)
