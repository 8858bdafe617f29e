"""Strict checks of Activities, their definitions and interactions, language maps, extensions.

Part of the statement validator (gateway.xapi.validation); sections are xAPI 1.0.3 Data.
Every check raises BadRequest with a message that starts with the path of the culprit.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest
from gateway.xapi.formats import is_iri, is_language_tag

__all__ = [
    "check_activity",
    "check_closed",
    "check_extensions",
    "check_fields",
    "check_iri",
    "check_language_map",
    "check_object",
    "check_string",
]

ACTIVITY_KEYS = frozenset(("objectType", "id", "definition"))
DEFINITION_KEYS = frozenset(
    (
        "name",
        "description",
        "type",
        "moreInfo",
        "extensions",
        "interactionType",
        "correctResponsesPattern",
        "choices",
        "scale",
        "source",
        "target",
        "steps",
    )
)
COMPONENT_KEYS = frozenset(("id", "description"))
COMPONENT_LISTS = ("choices", "scale", "source", "target", "steps")
# 2.4.4.1.s15 table 2: the component lists each interactionType supports.
LISTS_BY_TYPE: dict[str, frozenset[str]] = {
    "true-false": frozenset(),
    "choice": frozenset(("choices",)),
    "fill-in": frozenset(),
    "long-fill-in": frozenset(),
    "matching": frozenset(("source", "target")),
    "performance": frozenset(("steps",)),
    "sequencing": frozenset(("choices",)),
    "likert": frozenset(("scale",)),
    "numeric": frozenset(),
    "other": frozenset(),
}


def check_closed(obj: dict[str, Any], allowed: frozenset[str], where: str, kind: str) -> None:
    """Refuse a property xAPI does not define for this object (2.2.s4.b1.b7, 2.2.s4.b8)."""
    if not allowed.issuperset(obj):
        unknown = sorted(str(key) for key in obj if key not in allowed)
        raise BadRequest(f"{where}.{unknown[0]}: is not a property of {kind}")


def check_object(value: Any, where: str) -> dict[str, Any]:
    """Return `value` if it is a JSON object, else raise."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: must be an object")
    return value


def check_fields(value: Any, allowed: frozenset[str], where: str, kind: str) -> dict[str, Any]:
    """Return `value` if it is a JSON object with only `allowed` properties, else raise."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: must be an object")
    if not allowed.issuperset(value):
        check_closed(value, allowed, where, kind)
    return value


def check_iri(value: Any, where: str, what: str = "an IRI") -> None:
    """Refuse anything but an absolute IRI (an IRL is checked the same way)."""
    if not is_iri(value):
        raise BadRequest(f"{where}: must be {what} (absolute, with a scheme)")


def check_string(value: Any, where: str) -> None:
    """Refuse anything but a string (a number or null is not one: 2.2.s4.b1)."""
    if not isinstance(value, str):
        raise BadRequest(f"{where}: must be a string")


def check_language_map(value: Any, where: str) -> None:
    """A language map: RFC 5646 tags to strings (4.2, 2.2.s4.b2)."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: must be a language map (an object of language tags)")
    for tag, text in value.items():
        if not is_language_tag(tag):
            raise BadRequest(f"{where}: {str(tag)[:40]!r} is not an RFC 5646 language tag")
        if not isinstance(text, str):
            raise BadRequest(f"{where}.{tag}: must be a string")


def check_extensions(value: Any, where: str) -> None:
    """Extensions: an object with IRI keys; values are never judged (4.1.s3.b1, b2)."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: must be an object with IRI keys")
    for key in value:
        if not is_iri(key):
            raise BadRequest(f"{where}: the key {str(key)[:60]!r} is not an IRI")


def _check_components(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise BadRequest(f"{where}: must be an array of interaction components")
    seen: set[str] = set()
    for index, component in enumerate(value):
        here = f"{where}[{index}]"
        check_fields(component, COMPONENT_KEYS, here, "an interaction component")
        if "id" not in component:
            raise BadRequest(f"{here}.id: is required")
        component_id = component["id"]
        check_string(component_id, f"{here}.id")
        if component_id in seen:  # 2.4.4.1.s16.b1: ids within a list are distinct
            raise BadRequest(f"{here}.id: {component_id[:40]!r} is already used in this list")
        seen.add(component_id)
        if "description" in component:
            check_language_map(component["description"], f"{here}.description")


def _check_interaction(definition: dict[str, Any], where: str) -> None:
    if "interactionType" not in definition:
        # 2.4.4.1.s13.b1: an interaction activity MUST have a valid interactionType.
        for key in ("correctResponsesPattern", *COMPONENT_LISTS):
            if key in definition:
                raise BadRequest(
                    f"{where}.{key}: only an interaction activity has it "
                    "(interactionType is missing)"
                )
        return
    kind = definition["interactionType"]
    lists = LISTS_BY_TYPE.get(kind) if isinstance(kind, str) else None
    if lists is None:
        raise BadRequest(f"{where}.interactionType: must be one of {', '.join(LISTS_BY_TYPE)}")
    if "correctResponsesPattern" in definition:
        patterns = definition["correctResponsesPattern"]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise BadRequest(f"{where}.correctResponsesPattern: must be an array of strings")
    for key in COMPONENT_LISTS:
        if key in definition:
            if key not in lists:  # 2.4.4.1.s13.b3 lets the LRS refuse a list the type lacks
                raise BadRequest(f"{where}.{key}: an interaction of type {kind} has no {key}")
            _check_components(definition[key], f"{where}.{key}")


def _check_definition(value: Any, where: str) -> None:
    definition = check_fields(value, DEFINITION_KEYS, where, "an Activity definition")
    for key in ("name", "description"):
        if key in definition:
            check_language_map(definition[key], f"{where}.{key}")
    if "type" in definition:
        check_iri(definition["type"], f"{where}.type")
    if "moreInfo" in definition:
        check_iri(definition["moreInfo"], f"{where}.moreInfo", "an IRL")
    if "extensions" in definition:
        check_extensions(definition["extensions"], f"{where}.extensions")
    _check_interaction(definition, where)


def check_activity(value: Any, where: str) -> None:
    """An Activity (2.4.4.1): objectType Activity if given, an IRI id, a definition."""
    activity = check_fields(value, ACTIVITY_KEYS, where, "an Activity")
    if "objectType" in activity and activity["objectType"] != "Activity":
        raise BadRequest(f"{where}.objectType: must be Activity")
    if "id" not in activity:
        raise BadRequest(f"{where}.id: an Activity needs an id")
    check_iri(activity["id"], f"{where}.id")
    if "definition" in activity:
        _check_definition(activity["definition"], f"{where}.definition")
