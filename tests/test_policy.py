"""Pure modules: the scope table, agents, statement preparation, versions, `more` links."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest

from gateway.errors import BadRequest, Forbidden, UnsupportedVersion
from gateway.xapi.agents import AgentError, agent_identity, authority_includes, validate_actor
from gateway.xapi.results import gateway_more, keep_own, upstream_tail_of_more
from gateway.xapi.scopes import Resource, is_allowed, normalize_scopes, statements_read_mode
from gateway.xapi.statements import parse_json_body, prepare_post, prepare_put
from gateway.xapi.versions import VersionPolicy

AUTHORITY = {"mbox": "mailto:caller@example.com"}


def scopes(*names: str) -> frozenset[str]:
    return normalize_scopes(names)[0]


@pytest.mark.parametrize(
    ("granted", "resource", "method", "allowed"),
    [
        (("all",), Resource.STATEMENTS, "POST", True),
        (("all",), Resource.OTHER, "DELETE", True),
        (("all/read",), Resource.STATE, "GET", True),
        (("all/read",), Resource.STATE, "PUT", False),
        (("all/read",), Resource.OTHER, "HEAD", True),
        (("statements/write",), Resource.STATEMENTS, "PUT", True),
        (("statements/write",), Resource.STATEMENTS, "GET", False),
        (("statements/read",), Resource.STATEMENTS, "GET", True),
        (("statements/read",), Resource.STATEMENTS, "POST", False),
        (("statements/read/mine",), Resource.STATEMENTS, "HEAD", True),
        (("statements/read/mine",), Resource.STATE, "GET", False),
        (("state",), Resource.STATE, "DELETE", True),
        (("state/read",), Resource.STATE, "POST", False),
        (("profile",), Resource.AGENT_PROFILE, "PUT", True),
        (("agents_profile",), Resource.ACTIVITY_PROFILE, "GET", True),
        (("profile/read",), Resource.ACTIVITY_PROFILE, "PUT", False),
        (("define",), Resource.ACTIVITIES, "GET", True),
        (("define",), Resource.ACTIVITIES, "POST", False),
        (("statements/read",), Resource.OTHER, "GET", False),
        (("xapi/all",), Resource.STATE, "PUT", True),
        (("xapi/read",), Resource.STATE, "PUT", False),
        (("admin",), Resource.STATEMENTS, "GET", False),
        ((), Resource.STATEMENTS, "GET", False),
    ],
)
def test_scope_table(
    granted: tuple[str, ...], resource: Resource, method: str, allowed: bool
) -> None:
    assert is_allowed(scopes(*granted), resource, method) is allowed


def test_scope_prefix_is_stripped_and_unknown_scopes_ignored() -> None:
    granted, ignored = normalize_scopes(["lrs:all/read", "lrs:nonsense", "other"], "lrs:")
    assert granted == {"all/read"}
    assert ignored == ["lrs:nonsense", "other"]


def test_read_mode() -> None:
    assert statements_read_mode(scopes("all")) == "all"
    assert statements_read_mode(scopes("statements/read", "statements/read/mine")) == "all"
    assert statements_read_mode(scopes("statements/read/mine")) == "mine"
    assert statements_read_mode(scopes("statements/write")) is None


@pytest.mark.parametrize(
    "actor",
    [
        {"mbox": "mailto:a@example.com"},
        {"objectType": "Agent", "account": {"homePage": "https://x.example", "name": "a"}},
        {"mbox_sha1sum": "a" * 40},
        {"openid": "https://openid.example/a"},
        {"objectType": "Group", "member": [{"mbox": "mailto:a@example.com"}]},
        {"objectType": "Group", "mbox": "mailto:team@example.com"},
    ],
)
def test_valid_actors(actor: dict[str, Any]) -> None:
    validate_actor(actor)


@pytest.mark.parametrize(
    ("actor", "message"),
    [
        ({}, "needs exactly one"),
        ({"mbox": "a@example.com"}, "mailto"),
        ({"mbox": "mailto:a@example.com", "openid": "https://x"}, "2 identifiers"),
        ({"account": {"homePage": "https://x"}}, "account.name"),
        ({"mbox_sha1sum": "xyz"}, "40 hexadecimal"),
        ({"objectType": "Group"}, "member list"),
        ({"objectType": "Group", "member": [{"name": "x"}]}, "member[0]"),
        ("someone", "must be an object"),
    ],
)
def test_invalid_actors(actor: Any, message: str) -> None:
    with pytest.raises(AgentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_actor(actor)


def test_authority_matching() -> None:
    key = agent_identity(AUTHORITY)
    assert key is not None
    assert authority_includes({"objectType": "Agent", **AUTHORITY, "name": "x"}, key)
    group = {
        "objectType": "Group",
        "member": [{"account": {"homePage": "h:", "name": "app"}}, AUTHORITY],
    }
    assert authority_includes(group, key)
    assert not authority_includes({"mbox": "mailto:other@example.com"}, key)
    assert not authority_includes(None, key)


def statement(**extra: Any) -> dict[str, Any]:
    return {
        "actor": {"mbox": "mailto:learner@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course"},
        **extra,
    }


def test_post_gives_ids_and_sets_authority_over_a_forged_one() -> None:
    forged = {"mbox": "mailto:ceo@example.com"}
    kept_id = str(uuid.uuid4())
    body, ids = prepare_post([statement(authority=forged), statement(id=kept_id)], AUTHORITY)
    assert [s["authority"] for s in body] == [AUTHORITY, AUTHORITY]
    assert ids[1] == kept_id
    assert uuid.UUID(ids[0])


def test_post_single_statement() -> None:
    body, ids = prepare_post(statement(), AUTHORITY)
    assert body["id"] == ids[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "empty"),
        ("text", "must be a JSON object"),
        ([statement(), 3], r"statements\[1\]"),
        (statement(id="not-a-uuid"), "not a UUID"),
        (statement(actor={"mbox": "nope"}), "mailto"),
        ({"verb": {"id": "http://x"}, "object": {}}, "'actor'"),
        (statement(verb={"display": {}}), "verb"),
        (statement(object="x"), "object"),
        ([statement(id="7e3c2b4e-1d2a-4a5b-9c1d-0e2f3a4b5c6d")] * 2, "more than once"),
    ],
)
def test_post_rejects_bad_shapes(data: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        prepare_post(data, AUTHORITY)


def test_put_checks_statement_id() -> None:
    sid = str(uuid.uuid4())
    assert prepare_put(statement(), sid, AUTHORITY)["id"] == sid
    with pytest.raises(BadRequest, match="statementId"):
        prepare_put(statement(), None, AUTHORITY)
    with pytest.raises(BadRequest, match="differs"):
        prepare_put(statement(id=str(uuid.uuid4())), sid, AUTHORITY)


def jws(alg: str = "RS256") -> bytes:
    """A compact JWS shape with `alg` (the LRS checks the signature; the gateway the form)."""
    header = base64.urlsafe_b64encode(json.dumps({"alg": alg}).encode()).rstrip(b"=")
    return header + b".eyJ4IjoxfQ.c2lnbmF0dXJl"


TOKEN = jws()
TOKEN_SHA2 = hashlib.sha256(TOKEN).hexdigest()
SIGNATURE = {
    "usageType": "http://adlnet.gov/expapi/attachments/signature",
    "display": {"en-US": "signature"},
    "contentType": "application/octet-stream",
    "length": len(TOKEN),
    "sha2": TOKEN_SHA2,
}
PARTS = {TOKEN_SHA2: TOKEN}  # the request's parts, by sha2


def test_signed_statements_are_stamped_by_default() -> None:
    signed = statement(attachments=[SIGNATURE])
    body, ids = prepare_post([signed], AUTHORITY)
    assert body[0]["authority"] == AUTHORITY
    assert body[0]["id"] == ids[0]
    assert "timestamp" in body[0]


def test_verbatim_leaves_signed_statements_as_sent() -> None:
    sid = str(uuid.uuid4())
    signed = statement(id=sid, attachments=[SIGNATURE], authority=AUTHORITY)
    own = statement(
        id=str(uuid.uuid4()),
        attachments=[SIGNATURE],
        authority={"objectType": "Agent", "name": "me", **AUTHORITY},
    )
    unstamped = statement(id=str(uuid.uuid4()), attachments=[SIGNATURE])  # storage stamps
    sent = [dict(signed), dict(own), dict(unstamped), statement()]
    body, ids = prepare_post([dict(x) for x in sent], AUTHORITY, verbatim=PARTS)
    assert body[:3] == sent[:3]  # unchanged, not even a timestamp
    assert body[3]["authority"] == AUTHORITY  # unsigned ones are stamped as ever
    assert ids[:3] == [sid, own["id"], unstamped["id"]]
    assert prepare_put(dict(signed), sid, AUTHORITY, verbatim=PARTS) == signed


@pytest.mark.parametrize(
    "parts",
    [
        {},  # the usageType claims a signature, but the request has no such part
        {TOKEN_SHA2: b"not a jws"},
        {TOKEN_SHA2: jws("HS256")},  # Data 2.6: RS256, RS384 or RS512 only
        {TOKEN_SHA2: jws("none")},
    ],
)
def test_only_a_real_signature_part_makes_a_statement_verbatim(parts: dict[str, bytes]) -> None:
    claimed = statement(
        id=str(uuid.uuid4()),
        attachments=[SIGNATURE],
        authority={
            "objectType": "Group",
            "mbox": AUTHORITY["mbox"],
            "member": [{"mbox": "mailto:lms@example.com"}],
        },
    )
    body, _ = prepare_post([claimed], AUTHORITY, verbatim=parts)
    assert body[0]["authority"] == AUTHORITY  # stamped like any statement


def test_verbatim_signed_statements_need_an_id_and_exactly_the_callers_agent() -> None:
    with pytest.raises(BadRequest, match=r"statements\[1\]: a signed statement needs its own id"):
        prepare_post([statement(), statement(attachments=[SIGNATURE])], AUTHORITY, verbatim=PARTS)
    with pytest.raises(BadRequest, match="needs its own id"):
        prepare_put(
            statement(attachments=[SIGNATURE]), str(uuid.uuid4()), AUTHORITY, verbatim=PARTS
        )
    forged = statement(
        id=str(uuid.uuid4()), attachments=[SIGNATURE], authority={"mbox": "mailto:ceo@example.com"}
    )
    with pytest.raises(Forbidden, match="authority must be the caller's own"):
        prepare_post(forged, AUTHORITY, verbatim=PARTS)
    for authority in (
        {
            "objectType": "Group",
            "mbox": AUTHORITY["mbox"],  # a Group naming someone else
            "member": [{"mbox": "mailto:lms@example.com"}],
        },
        {"objectType": "Group", "member": [AUTHORITY, {"mbox": "mailto:lms@example.com"}]},
        {**AUTHORITY, "account": {"homePage": "https://x.example", "name": "alice"}},
        {**AUTHORITY, "member": [{"mbox": "mailto:lms@example.com"}]},
    ):
        with pytest.raises(BadRequest, match="authority"):
            prepare_post(
                statement(id=str(uuid.uuid4()), attachments=[SIGNATURE], authority=authority),
                AUTHORITY,
                verbatim=PARTS,
            )


@pytest.mark.parametrize(
    "authority",
    [
        {"mbox": "alice@example.com"},  # no mailto:
        {"mbox": "mailto:a@example.com", "openid": "http://a.example.com"},  # two identifiers
        {"objectType": "Agent"},  # none
        {"account": {"homePage": "not an IRL", "name": "x"}},
        "mailto:a@example.com",
    ],
)
def test_an_invalid_authority_is_refused_not_replaced(authority: Any) -> None:
    for strict in (False, True):
        with pytest.raises(BadRequest, match="authority"):
            prepare_post(statement(authority=authority), AUTHORITY, strict=strict)


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b"[" * 100000])
def test_bad_json_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json_body(body)


def test_versions() -> None:
    policy = VersionPolicy(["1.0.3", "2.0.0"])
    assert policy.check("1.0") == "1.0.3"
    assert policy.check("1.0.1") == "1.0.3"
    assert policy.check("2.0.0") == "2.0.0"
    for bad in (None, "", "0.95", "1.1.0", "abc", "1.0.0.0"):
        with pytest.raises(UnsupportedVersion):
            policy.check(bad)
    assert policy.answer_for("0.9") == "1.0.3"


def test_more_links() -> None:
    tail = upstream_tail_of_more("/xAPI/statements?pit_id=a%2Bb&limit=2", "/xAPI/")
    assert tail == "statements?pit_id=a%2Bb&limit=2"
    assert (
        upstream_tail_of_more("http://lrs:8100/xAPI/statements/?x=1", "/xAPI/") == "statements/?x=1"
    )
    assert upstream_tail_of_more("/other/statements", "/xAPI/") is None
    assert gateway_more("statements?x=1", None) == "/xAPI/statements?x=1"
    assert (
        gateway_more("statements?x=1", "https://gw.example/lrs/")
        == "https://gw.example/lrs/xAPI/statements?x=1"
    )


def test_keep_own() -> None:
    key = agent_identity(AUTHORITY)
    mine = statement(authority=AUTHORITY)
    theirs = statement(authority={"mbox": "mailto:x@example.com"})
    assert keep_own([mine, theirs, statement(), "junk"], key) == [mine]
