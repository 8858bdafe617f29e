"""Which statements follow an xAPI Profile's Statement Templates (xAPI Profiles 1.0).

A Statement Template matches a statement when the statement has all of the template's
Determining Properties and follows all of its rules, as the Profiles specification's
"Statement Template Validation" algorithm (communication document, 2.1) decides it:

* Determining Properties. `verb` equals the statement's verb id; `objectActivityType`
  equals the object's `definition.type`; each of `contextParentActivityType`,
  `contextGroupingActivityType`, `contextCategoryActivityType` and
  `contextOtherActivityType` lists types that must all be among the `definition.type`s of
  that contextActivities list (equal or a superset); `attachmentUsageType` lists usage
  types that must all be among the attachments' `usageType`s.
* Rules. `location` (JSONPath) finds values in the statement; a `selector` (JSONPath),
  if given, is applied to each of them and what it finds replaces them, a location where
  it finds nothing counting as one *unmatchable* value. Then: `presence: included` needs
  a matchable value and no unmatchable one; `excluded` needs no matchable value;
  `recommended` makes `any`, `all` and `none` apply only when something was found. `any`
  needs one of its values among the matchable ones; `all` needs every matchable value to
  be one of its values and no unmatchable value (so `all` holds when nothing at all is
  found and presence is not `included`: that is the algorithm, not an oversight); `none`
  needs none of its values among the matchable ones. Values compare as JSON (`true` is
  not `1`; objects compare by content), and a JSON `null` found is a matchable value.
* StatementRef templates. With `objectStatementRefTemplate` the object must be a
  StatementRef, and with `contextStatementRefTemplate` the context must have a
  `statement` StatementRef; that much is checked. Whether the *referenced* statement
  matches one of the named templates is NOT checked: this matcher sees one statement at a
  time, and the specification's algorithm passes a reference whose statement is not
  available to the checker. A template with these properties therefore matches on
  everything else it says.

JSONPath is the specification's: goessner's syntax without filter or script expressions
(names, non-negative indexes, `*`, `..`, and comma unions inside brackets), plus the
Profiles' own `|` joining whole expressions, whose results are concatenated. jsonpath-ng
parses and evaluates each expression; the `|` is split here, outside quotes, because
jsonpath-ng's own `|` is deprecated and binds tighter than `.` (`a.b | c.d` would mean
`a.(b|c).d`). contextActivities given as single objects (xAPI 0.95 style) are read as
lists of one, as the specification requires before rules are applied.

Not covered: Patterns (they judge sequences of statements, by registration), the
multi-template outcome of `validates` (success / invalid / unmatched: callers combine
`matches` over the templates they hold), and a profile's own well-formedness beyond what
compiling the named templates needs.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.jsonpath import Child, Descendants, Fields, Index, JSONPath, Root, Wildcard
from jsonpath_ng.parser import parse as parse_jsonpath

from gateway import jsoncodec

__all__ = ["ProfileError", "StatementTemplate", "TemplateRule", "read_profile", "templates_from"]

INCLUDED: Final = "included"
EXCLUDED: Final = "excluded"
RECOMMENDED: Final = "recommended"
PRESENCES: Final = frozenset({INCLUDED, EXCLUDED, RECOMMENDED})

# Determining property -> the contextActivities list its activity types are looked up in.
CONTEXT_ACTIVITY_TYPE_PROPERTIES: Final = (
    ("contextParentActivityType", "parent"),
    ("contextGroupingActivityType", "grouping"),
    ("contextCategoryActivityType", "category"),
    ("contextOtherActivityType", "other"),
)

# jsonpath-ng nodes the Profiles' JSONPath subset is made of. Anything else it can parse
# (slices, `where`, `parent`, `this`) is outside the specification, so a profile using it
# is refused rather than evaluated with semantics no other validator would share.
_PATH_JOINS: Final = (Child, Descendants)
_PATH_PARTS: Final = (Root, Fields, Wildcard, Index, *_PATH_JOINS)


class ProfileError(ValueError):
    """A profile or template that cannot be used.

    The message names what: the template id, the rule's index, the JSONPath.
    """


@dataclass(frozen=True, slots=True)
class _Query:
    """A compiled Profiles JSONPath: its `|`-joined expressions, each parsed once."""

    source: str
    expressions: tuple[JSONPath, ...] = field(compare=False, repr=False)

    def values(self, data: Any) -> list[Any]:
        """Every value the expressions find in `data`, in order; [] when none do."""
        found: list[Any] = []
        for expression in self.expressions:
            found.extend(match.value for match in expression.find(data))
        return found


@dataclass(frozen=True, slots=True)
class TemplateRule:
    """One Statement Template Rule, compiled: JSONPaths parsed, value lists made sets."""

    location: _Query
    selector: _Query | None = None
    presence: str | None = None
    any_of: frozenset[Hashable] | None = None
    all_of: frozenset[Hashable] | None = None
    none_of: frozenset[Hashable] | None = None

    def is_followed_by(self, statement: Mapping[str, Any]) -> bool:
        """Whether `statement` (contextActivities already as lists) follows this rule."""
        matchable, unmatchable = self._evaluated(statement)
        if self.presence == INCLUDED and (unmatchable or not matchable):
            return False
        if self.presence == EXCLUDED and matchable:
            return False
        if self.presence == RECOMMENDED and not matchable and not unmatchable:
            return True  # nothing there: any/all/none bind only what is present
        if self.any_of is not None and self.any_of.isdisjoint(matchable):
            return False
        if self.all_of is not None and (unmatchable or not matchable <= self.all_of):
            return False
        return self.none_of is None or self.none_of.isdisjoint(matchable)

    def _evaluated(self, statement: Mapping[str, Any]) -> tuple[set[Hashable], bool]:
        """The matchable values (as JSON keys), and whether there is an unmatchable one.

        Every test of the algorithm is about membership, so a set of keys says all a
        list of values would, and duplicates from overlapping paths cannot mislead.
        """
        found = self.location.values(statement)
        if self.selector is None:
            return {_json_key(value) for value in found}, False
        matchable: set[Hashable] = set()
        unmatchable = False
        for value in found:
            selected = self.selector.values(value)
            unmatchable = unmatchable or not selected
            matchable.update(_json_key(each) for each in selected)
        return matchable, unmatchable


@dataclass(frozen=True, slots=True)
class StatementTemplate:
    """A Statement Template of a profile, compiled by `templates_from`."""

    id: str
    verb: str | None = None
    object_activity_type: str | None = None
    # (contextActivities list, the activity types all of which must be in it)
    context_activity_types: tuple[tuple[str, frozenset[str]], ...] = ()
    attachment_usage_types: frozenset[str] = frozenset()
    # The templates a referenced statement should match: never checked (module docstring).
    object_statement_ref_templates: tuple[str, ...] = ()
    context_statement_ref_templates: tuple[str, ...] = ()
    rules: tuple[TemplateRule, ...] = ()

    def matches(self, statement: Mapping[str, Any]) -> bool:
        """Whether `statement` has this template's Determining Properties and follows it.

        Never raises for any parsed JSON: a statement of the wrong shape just does not
        match. The cheap Determining Properties are checked first, so a statement for
        another template costs a few lookups and no JSONPath.
        """
        if not isinstance(statement, Mapping):
            return False
        return self._has_determining_properties(statement) and self._is_followed_by(statement)

    def _has_determining_properties(self, statement: Mapping[str, Any]) -> bool:
        if self.verb is not None and _dig(statement, "verb", "id") != self.verb:
            return False
        if (
            self.object_activity_type is not None
            and _dig(statement, "object", "definition", "type") != self.object_activity_type
        ):
            return False
        for kind, wanted in self.context_activity_types:
            if not wanted <= _context_activity_types(statement, kind):
                return False
        return not self.attachment_usage_types or self.attachment_usage_types <= (
            _attachment_usage_types(statement)
        )

    def _is_followed_by(self, statement: Mapping[str, Any]) -> bool:
        if self.object_statement_ref_templates and not _is_statement_ref(statement.get("object")):
            return False
        if self.context_statement_ref_templates and not _is_statement_ref(
            _dig(statement, "context", "statement")
        ):
            return False
        listed = _with_listed_context_activities(statement)
        return all(rule.is_followed_by(listed) for rule in self.rules)


def templates_from(document: Any, template_ids: Sequence[str]) -> tuple[StatementTemplate, ...]:
    """The named templates of a parsed profile document (JSON-LD as JSON), compiled once.

    Only the named templates are compiled (and so checked), in the order named; every
    JSONPath is parsed here so that `matches` never parses. ProfileError for: a document
    that is not a profile (no `templates` list), an id not in it, a rule whose location
    or selector is not valid JSONPath (as the Profiles specification restricts it), a
    presence other than included/excluded/recommended, any/all/none that are not
    non-empty lists, and Determining or StatementRef properties of the wrong type.
    """
    if isinstance(template_ids, str):
        # A str is a Sequence[str]: its letters would each be looked up as a template id.
        raise TypeError("template_ids: a sequence of template ids, not one string")
    by_id = _templates_by_id(document)
    compiled: list[StatementTemplate] = []
    for template_id in template_ids:
        if template_id not in by_id:
            raise ProfileError(
                f"template {template_id}: not in the profile {_profile_name(document)}"
            )
        compiled.append(_compiled_template(template_id, by_id[template_id]))
    return tuple(compiled)


def read_profile(path: Path) -> Any:
    """The profile document at `path` (JSON).

    ProfileError (naming the file) when it cannot be read or parsed.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ProfileError(f"{path}: cannot read the profile: {error.strerror or error}") from error
    try:
        return jsoncodec.loads(raw)
    except jsoncodec.JSONDecodeError as error:
        raise ProfileError(f"{path}: the profile is not JSON: {error}") from error


def _json_key(value: Any) -> Hashable:
    """A hashable key equal for equal JSON values and different for different ones.

    Python's own equality would make `true` equal `1` (bool is an int) and cannot hash
    objects or arrays; a rule's `all: [true]` must not accept a completion of 1.
    """
    if isinstance(value, str):
        return value  # the common case, and no other key is a str
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 and 1.0 are one JSON number, and hash alike
    if value is None:
        return ("null",)
    if isinstance(value, Mapping):
        return ("object", frozenset((name, _json_key(each)) for name, each in value.items()))
    if isinstance(value, list | tuple):
        return ("array", tuple(_json_key(each) for each in value))
    return ("other", repr(value))


# ---- reading a statement -------------------------------------------------------------------


def _dig(value: Any, *names: str) -> Any:
    """value[names[0]][names[1]]...; None where a level is missing or not an object."""
    for name in names:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _as_list(value: Any) -> list[Any]:
    """A contextActivities entry as a list (a lone object, 0.95 style, as a list of one)."""
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, Mapping) else []


def _context_activity_types(statement: Mapping[str, Any], kind: str) -> set[Any]:
    activities = _as_list(_dig(statement, "context", "contextActivities", kind))
    return {_dig(activity, "definition", "type") for activity in activities}


def _attachment_usage_types(statement: Mapping[str, Any]) -> set[Any]:
    attachments = statement.get("attachments")
    if not isinstance(attachments, list):
        return set()
    return {_dig(attachment, "usageType") for attachment in attachments}


def _is_statement_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("objectType") == "StatementRef"


def _with_listed_context_activities(statement: Mapping[str, Any]) -> Mapping[str, Any]:
    """`statement` with lone contextActivities objects as lists of one (a SubStatement's too).

    Copies only the levels on the way to a changed list, and nothing when no list needs
    changing (the usual case), so the statement the caller holds is never modified.
    """
    listed = _listed_context_activities(statement)
    inner = listed.get("object")
    if isinstance(inner, Mapping) and inner.get("objectType") == "SubStatement":
        listed_inner = _listed_context_activities(inner)
        if listed_inner is not inner:
            listed = {**listed, "object": listed_inner}
    return listed


def _listed_context_activities(level: Mapping[str, Any]) -> Mapping[str, Any]:
    context = level.get("context")
    activities = context.get("contextActivities") if isinstance(context, Mapping) else None
    if (
        not isinstance(context, Mapping)
        or not isinstance(activities, Mapping)
        or not any(isinstance(each, Mapping) for each in activities.values())
    ):
        return level
    as_lists = {
        kind: [each] if isinstance(each, Mapping) else each for kind, each in activities.items()
    }
    return {**level, "context": {**context, "contextActivities": as_lists}}


# ---- compiling a profile -------------------------------------------------------------------


def _profile_name(document: Mapping[str, Any]) -> str:
    name = document.get("id")
    return name if isinstance(name, str) else "(no id)"


def _templates_by_id(document: Any) -> dict[str, Mapping[str, Any]]:
    templates = document.get("templates") if isinstance(document, Mapping) else None
    if not isinstance(templates, list):
        raise ProfileError("not an xAPI Profile: it has no `templates` list")
    by_id: dict[str, Mapping[str, Any]] = {}
    for index, template in enumerate(templates):
        template_id = _dig(template, "id")
        if not isinstance(template_id, str) or not template_id:
            raise ProfileError(f"templates[{index}]: a Statement Template without an `id`")
        if template_id in by_id:
            raise ProfileError(f"template {template_id}: the profile has it twice")
        by_id[template_id] = template
    return by_id


def _compiled_template(template_id: str, template: Mapping[str, Any]) -> StatementTemplate:
    where = f"template {template_id}"
    if "objectActivityType" in template and "objectStatementRefTemplate" in template:
        raise ProfileError(
            f"{where}: objectActivityType and objectStatementRefTemplate exclude each other"
        )
    rules = template.get("rules", [])
    if not isinstance(rules, list):
        raise ProfileError(f"{where}: rules: a list of Statement Template Rules")
    return StatementTemplate(
        id=template_id,
        verb=_optional_iri(where, template, "verb"),
        object_activity_type=_optional_iri(where, template, "objectActivityType"),
        context_activity_types=tuple(
            (kind, frozenset(_iris(where, template, name)))
            for name, kind in CONTEXT_ACTIVITY_TYPE_PROPERTIES
            if name in template
        ),
        attachment_usage_types=frozenset(_iris(where, template, "attachmentUsageType")),
        object_statement_ref_templates=_iris(where, template, "objectStatementRefTemplate"),
        context_statement_ref_templates=_iris(where, template, "contextStatementRefTemplate"),
        rules=tuple(_compiled_rule(f"{where}: rules[{i}]", rule) for i, rule in enumerate(rules)),
    )


def _optional_iri(where: str, template: Mapping[str, Any], name: str) -> str | None:
    value = template.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ProfileError(f"{where}: {name}: an IRI string, not {value!r}")
    return value


def _iris(where: str, template: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """An optional array of IRIs; () when absent. Empty arrays are refused, as the spec says."""
    if name not in template:
        return ()
    values = template[name]
    if not isinstance(values, list) or not values:
        raise ProfileError(f"{where}: {name}: a non-empty list of IRIs, not {values!r}")
    if not all(isinstance(value, str) and value for value in values):
        raise ProfileError(f"{where}: {name}: every member an IRI string, not {values!r}")
    return tuple(values)


def _compiled_rule(where: str, rule: Any) -> TemplateRule:
    if not isinstance(rule, Mapping):
        raise ProfileError(f"{where}: a Statement Template Rule object, not {rule!r}")
    if not any(name in rule for name in ("presence", "any", "all", "none")):
        raise ProfileError(f"{where}: a rule needs presence, any, all or none")
    if "location" not in rule:
        raise ProfileError(f"{where}: a rule needs a location")
    presence = rule.get("presence")
    if presence is not None and presence not in PRESENCES:
        raise ProfileError(f"{where}.presence: included, excluded or recommended, not {presence!r}")
    selector = rule.get("selector")
    return TemplateRule(
        location=_compiled_query(f"{where}.location", rule["location"]),
        selector=None if selector is None else _compiled_query(f"{where}.selector", selector),
        presence=presence,
        any_of=_value_set(f"{where}.any", rule.get("any")),
        all_of=_value_set(f"{where}.all", rule.get("all")),
        none_of=_value_set(f"{where}.none", rule.get("none")),
    )


def _value_set(where: str, values: Any) -> frozenset[Hashable] | None:
    if values is None:
        return None
    if not isinstance(values, list) or not values:
        raise ProfileError(f"{where}: a non-empty list of values, not {values!r}")
    return frozenset(_json_key(value) for value in values)


def _compiled_query(where: str, source: Any) -> _Query:
    if not isinstance(source, str) or not source.strip():
        raise ProfileError(f"{where}: a JSONPath string, not {source!r}")
    expressions: list[JSONPath] = []
    for alternative in _alternatives(where, source):
        try:
            expression = parse_jsonpath(alternative)
        except JSONPathError as error:
            raise ProfileError(f"{where}: {source!r} is not valid JSONPath: {error}") from error
        unsupported = _unsupported_part(expression)
        if unsupported is not None:
            raise ProfileError(
                f"{where}: {source!r} is not valid JSONPath for xAPI Profiles: {unsupported}"
            )
        expressions.append(expression)
    return _Query(source, tuple(expressions))


def _alternatives(where: str, source: str) -> list[str]:
    """The expressions a Profiles JSONPath joins with `|` (a `|` inside quotes is a name's).

    jsonpath-ng is left to read everything else: this only finds the unquoted pipes.
    """
    pieces: list[str] = []
    start, quote, escaped = 0, "", False
    for at, char in enumerate(source):
        if escaped:
            escaped = False
        elif quote:
            escaped = char == "\\"
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "&":
            # jsonpath-ng would read it as its (deprecated) intersection, which JSONPath lacks
            raise ProfileError(f"{where}: {source!r} is not valid JSONPath: `&` outside quotes")
        elif char == "|":
            pieces.append(source[start:at])
            start = at + 1
    pieces.append(source[start:])
    if any(not piece.strip() for piece in pieces):
        raise ProfileError(f"{where}: {source!r} is not valid JSONPath: an empty `|` alternative")
    return [piece.strip() for piece in pieces]


def _unsupported_part(expression: JSONPath) -> str | None:
    """The first part of a parsed expression outside the Profiles' JSONPath, or None."""
    for node in _nodes(expression):
        if isinstance(node, Index) and any(index < 0 for index in node.indices):
            return f"negative index {node}"
        if not isinstance(node, _PATH_PARTS):
            return f"{type(node).__name__.lower()} `{node}`"
    return None


def _nodes(expression: JSONPath) -> Iterator[JSONPath]:
    yield expression
    if isinstance(expression, _PATH_JOINS):
        yield from _nodes(expression.left)
        yield from _nodes(expression.right)
