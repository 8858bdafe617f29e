"""The xAPI string formats: IRIs, mailto, UUIDs, timestamps, durations, language tags, ...

Each `is_*` function answers True or False and never raises; the callers name the path.
Section numbers are xAPI 1.0.3 Data (xAPI-Data.md) unless said otherwise.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "is_duration",
    "is_iri",
    "is_language_tag",
    "is_mailto",
    "is_media_type",
    "is_sha1_hex",
    "is_sha2_hex",
    "is_statement_version",
    "is_timestamp",
    "is_uuid",
]

# An absolute IRI (RFC 3987): a scheme, a colon, then something (2.2.s4.b1.b8: "IRL or IRI
# values without a scheme" are refused; a relative reference is no IRI, 2.4.4.1 note).
# Best effort as 2.2.s4.b6 allows: no space or control character, none of the characters
# RFC 3987 leaves out of every IRI, and each "%" starts a percent-encoded octet.
_IRI_CHARS = r"[^\x00-\x20\x7f-\x9f<>\"{}|\\^`%]*"  # written as a loop unrolled: fast
_IRI = re.compile(
    rf"[A-Za-z][A-Za-z0-9+.\-]*:(?=.){_IRI_CHARS}(?:%[0-9A-Fa-f]{{2}}{_IRI_CHARS})*", re.DOTALL
)
# mailto IRI of one address (2.4.2.3): "mailto:" local "@" domain.
_MAILTO = re.compile(r"mailto:[^\x00-\x20\x7f@<>\"\\]+@[^\x00-\x20\x7f@<>\"\\?#/]+")
_SHA1 = re.compile(r"[0-9A-Fa-f]{40}")
# SHA-224, SHA-256, SHA-384, SHA-512 in hex (2.4.11: "The SHA-2 hash of the Attachment data").
_SHA2 = re.compile(r"[0-9A-Fa-f]{56}|[0-9A-Fa-f]{64}|[0-9A-Fa-f]{96}|[0-9A-Fa-f]{128}")
# 4.4: "UUIDs MUST be in the standard string form" (RFC 4122: 8-4-4-4-12 hex digits, any
# case on input). The variant is only recommended, so it is not checked.
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# RFC 2046 type "/" subtype (RFC 7230 tokens), then parameters, left unchecked.
_MIME_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z\-]+"
_MEDIA_TYPE = re.compile(rf"{_MIME_NAME}/{_MIME_NAME}[ \t]*(?:;.*)?", re.DOTALL)

# RFC 5646 section 2.1 ABNF (well-formedness: 2.2.s4.b2 asks for the token lengths).
_ALNUM = "[A-Za-z0-9]"
_LANGTAG = (
    r"(?:[A-Za-z]{2,3}(?:-[A-Za-z]{3}){0,3}|[A-Za-z]{4,8})"  # language [-extlang]
    r"(?:-[A-Za-z]{4})?"  # script
    r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"  # region
    rf"(?:-(?:{_ALNUM}{{5,8}}|[0-9]{_ALNUM}{{3}}))*"  # variants
    rf"(?:-[0-9A-WYZa-wyz](?:-{_ALNUM}{{2,8}})+)*"  # extensions (any singleton but x)
    rf"(?:-[Xx](?:-{_ALNUM}{{1,8}})+)?"  # private use
)
_GRANDFATHERED = (
    "en-GB-oed|i-ami|i-bnn|i-default|i-enochian|i-hak|i-klingon|i-lux|i-mingo|i-navajo|"
    "i-pwn|i-tao|i-tay|i-tsu|sgn-BE-FR|sgn-BE-NL|sgn-CH-DE|art-lojban|cel-gaulish|no-bok|"
    "no-nyn|zh-guoyu|zh-hakka|zh-min|zh-min-nan|zh-xiang"
)
_LANGUAGE_TAG = re.compile(rf"{_LANGTAG}|[Xx](?:-{_ALNUM}{{1,8}})+|{_GRANDFATHERED}", re.IGNORECASE)

# 4.5: ISO 8601 combined date and time, extended or basic format (never mixed), time to
# the hour, minute or second with a decimal fraction on the last one, then an optional
# zone: Z or +hh, +hh:mm (extended) / +hhmm (basic).
_TIMESTAMP_EXTENDED = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2})(?::([0-9]{2})(?::([0-9]{2}))?)?(?:[.,][0-9]+)?"
    r"(Z|[+-]([0-9]{2})(?::([0-9]{2}))?)?"
)
_TIMESTAMP_BASIC = re.compile(
    r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})(?:([0-9]{2})([0-9]{2})?)?(?:[.,][0-9]+)?"
    r"(Z|[+-]([0-9]{2})([0-9]{2})?)?"
)
# The form nearly every client sends (extended, to the second, a valid day of any year,
# zone Z or +hh[:mm] or none): one match, no range checks. What it refuses gets the
# full check below, which accepts all this does.
_TIMESTAMP_COMMON = re.compile(
    r"[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
    r"|(?:0[13578]|1[02])-31)T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
    r"(?:[.,][0-9]+)?(Z|\+(?:[01][0-9]|2[0-3])(?::[0-5][0-9])?)?"
)
_LAST_DAY = dict(
    zip(
        ("01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12"),
        ("31", "29", "31", "30", "31", "30", "31", "31", "30", "31", "30", "31"),
        strict=True,
    )
)

# 4.6: ISO 8601:2004 4.4.3.2 durations, PnYnMnDTnHnMnS or PnW; only the last component
# may carry a decimal fraction. The alternative format (4.4.3.3, P0003-02-01) is refused.
_NUMBER = r"[0-9]+(?:[.,][0-9]+)?"
_DURATION = re.compile(
    rf"P(?:(?:({_NUMBER})Y)?(?:({_NUMBER})M)?(?:({_NUMBER})D)?"
    rf"(?:T(?:({_NUMBER})H)?(?:({_NUMBER})M)?(?:({_NUMBER})S)?)?|({_NUMBER})W)"
)


# Statements repeat the same IRIs (verbs, activity types, extension keys) and language tags
# statement after statement: a bounded memo of the answers halves the validation time
# (bench/validation_bench.py). Only strings up to _MEMO_LENGTH are kept.
_MEMO_SIZE = 4096
_MEMO_LENGTH = 512


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _iri_memo(value: str) -> bool:
    return _IRI.fullmatch(value) is not None


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _language_tag_memo(value: str) -> bool:
    return _LANGUAGE_TAG.fullmatch(value) is not None


def is_iri(value: object) -> bool:
    """True for an absolute IRI (a scheme and something after it); IRLs are checked alike."""
    if type(value) is not str:
        return False
    if len(value) > _MEMO_LENGTH:
        return _IRI.fullmatch(value) is not None
    return _iri_memo(value)


def is_mailto(value: object) -> bool:
    """True for a `mailto:` IRI of one e-mail address (an Agent's mbox)."""
    return isinstance(value, str) and _MAILTO.fullmatch(value) is not None


def is_sha1_hex(value: object) -> bool:
    """True for a hex-encoded SHA-1 (an mbox_sha1sum)."""
    return isinstance(value, str) and _SHA1.fullmatch(value) is not None


def is_sha2_hex(value: object) -> bool:
    """True for a hex-encoded SHA-224, -256, -384 or -512 digest (an attachment's sha2)."""
    return isinstance(value, str) and _SHA2.fullmatch(value) is not None


def is_uuid(value: object) -> bool:
    """True for a UUID in the standard 8-4-4-4-12 string form."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def is_media_type(value: object) -> bool:
    """True for an Internet Media Type, `type/subtype` with optional parameters."""
    return isinstance(value, str) and _MEDIA_TYPE.fullmatch(value) is not None


def is_language_tag(value: object) -> bool:
    """True for a well-formed RFC 5646 language tag."""
    if type(value) is not str:
        return False
    if len(value) > _MEMO_LENGTH:
        return _LANGUAGE_TAG.fullmatch(value) is not None
    return _language_tag_memo(value)


def _in_range(year: str, month: str, day: str, hour: str, minute: str, second: str) -> bool:
    # Two ASCII digits compare as strings as they would as numbers: no int() on the hot path.
    last_day = _LAST_DAY.get(month)
    if last_day is None or not "01" <= day <= last_day:
        return False
    if month == "02" and day == "29":
        number = int(year)
        if not (number % 4 == 0 and (number % 100 != 0 or number % 400 == 0)):
            return False
    # A second of 60 is a leap second (ISO 8601 and RFC 3339 both allow it).
    return hour <= "23" and minute <= "59" and second <= "60"


def is_timestamp(value: object, *, zone_required: bool) -> bool:
    """True for an ISO 8601 combined date and time; `zone_required` for xAPI 2.0.

    xAPI 1.0.3 (Data 4.5) requires ISO 8601 and only recommends a time zone; xAPI 2.0
    (IEEE 9274.1.1, Timestamps) requires one. A negative zero offset (-00, -0000, -00:00)
    is refused: RFC 3339 allows it but ISO 8601 does not (xAPI-Spec issue 1073).
    """
    if not isinstance(value, str):
        return False
    common = _TIMESTAMP_COMMON.fullmatch(value)
    if common is not None and (common.lastindex or not zone_required):
        return True
    match = _TIMESTAMP_EXTENDED.fullmatch(value) or _TIMESTAMP_BASIC.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second, zone, zone_hours, zone_minutes = match.groups()
    if not _in_range(year, month, day, hour, minute or "00", second or "00"):
        return False
    if zone is None:
        return not zone_required
    if zone == "Z":
        return True
    zone_minutes = zone_minutes or "00"
    if zone_hours > "23" or zone_minutes > "59":
        return False
    return not (zone[0] == "-" and zone_hours == "00" and zone_minutes == "00")


def is_duration(value: object) -> bool:
    """True for an ISO 8601 duration in the format of ISO 8601:2004 4.4.3.2."""
    if type(value) is str and len(value) <= _MEMO_LENGTH:
        return _duration_memo(value)
    return isinstance(value, str) and _is_duration(value)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _duration_memo(value: str) -> bool:
    return _is_duration(value)


def _is_duration(value: str) -> bool:
    match = _DURATION.fullmatch(value)
    if match is None:
        return False
    given = [part for part in match.groups() if part is not None]
    if not given or value.endswith("T"):
        return False  # "P" and "PT" name no component; "P1DT" has a T with nothing after
    # Only the lowest-order component given may have a fraction (ISO 8601:2004 4.4.3.2).
    return not any("." in part or "," in part for part in given[:-1])


# Data 2.4.10: "1.0." then a patch number; xAPI 2.0 also takes its own "2.0." statements.
_VERSION_1 = re.compile(r"1\.0\.(?:0|[1-9][0-9]*)")
_VERSION_2 = re.compile(r"[12]\.0\.(?:0|[1-9][0-9]*)")


def is_statement_version(value: object, *, v2: bool) -> bool:
    """True for a statement `version` this xAPI version accepts (1.0.x; 2.0 also 2.0.x)."""
    pattern = _VERSION_2 if v2 else _VERSION_1
    return isinstance(value, str) and pattern.fullmatch(value) is not None
