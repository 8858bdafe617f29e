"""Property tests: any input to a parser is a clean error or a valid result, never a crash."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.base import decode_basic
from gateway.auth.credentials import CredentialsError, parse_credentials
from gateway.config.settings import load_config
from gateway.errors import BadRequest, ConfigError, PayloadTooLarge, Unauthorized
from gateway.xapi.agents import agent_identity
from gateway.xapi.results import gateway_more, upstream_tail_of_more
from gateway.xapi.statements import parse_json_body, prepare_post

AUTHORITY = {"objectType": "Agent", "mbox": "mailto:caller@example.org"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
agents = st.one_of(
    st.builds(
        lambda n: {"mbox": f"mailto:{n}@example.org"}, st.from_regex(r"[a-z]{1,8}", fullmatch=True)
    ),
    st.builds(
        lambda h, n: {"account": {"homePage": f"https://{h}.example", "name": n}},
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.text(min_size=1, max_size=10),
    ),
    json_values,
)
statements = st.fixed_dictionaries(
    {
        "actor": agents,
        "verb": st.one_of(st.just({"id": "http://x.org/v"}), json_values),
        "object": st.one_of(st.just({"id": "http://x.org/o"}), json_values),
    },
    optional={
        "id": st.one_of(st.uuids().map(str), st.text(max_size=40)),
        "authority": json_values,
        "timestamp": st.text(max_size=30),
    },
)


@given(st.one_of(statements, st.lists(statements, max_size=5), json_values))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_statements_are_rejected_cleanly_or_carry_the_callers_authority(data: Any) -> None:
    try:
        body, ids = prepare_post(data, AUTHORITY, max_batch=4)
    except (BadRequest, PayloadTooLarge):
        return
    batch = body if isinstance(body, list) else [body]
    assert len(ids) == len(batch) == len(set(ids))
    for statement in batch:
        assert statement["authority"] is AUTHORITY  # never anyone else's
        uuid.UUID(statement["id"])


@given(st.binary(max_size=300))
def test_any_body_is_json_or_a_bad_request(body: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_json_body(body)


@given(st.text(max_size=200))
def test_basic_credentials_decode_or_401(credentials: str) -> None:
    try:
        username, _ = decode_basic(credentials)
    except Unauthorized:
        return
    assert username
    assert "\0" not in username


@given(
    st.text(min_size=1, max_size=20).filter(lambda u: ":" not in u and "\0" not in u),
    st.text(max_size=20),
)
def test_basic_credentials_round_trip(username: str, password: str) -> None:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    assert decode_basic(token) == (username, password)


@given(st.one_of(st.text(max_size=300), st.builds(json.dumps, json_values)))
@settings(max_examples=300)
def test_credentials_files_parse_or_say_why(text: str) -> None:
    try:
        parsed = parse_credentials(text, account_homepage="https://x.example")
    except CredentialsError as error:
        assert "$2" not in str(error)  # noqa: PT017 (never a hash or a secret in it)
        return
    for credential in parsed.users.values():
        assert agent_identity(credential.agent) is not None


@given(
    st.dictionaries(
        st.sampled_from(
            ["server", "storage", "auth", "xapi", "limits", "nonsense", "forwardings", "metrics"]
        ),
        json_values,
        max_size=4,
    )
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_config_loads_or_names_the_problem(tmp_path: Path, raw: dict[str, Any]) -> None:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    try:
        load_config(path, {})
    except ConfigError as error:
        assert str(error)  # noqa: PT017


@given(st.text(max_size=80), st.sampled_from(["/xAPI/", "/lrs/xAPI/", "/"]))
def test_more_links_map_under_the_gateway_or_not_at_all(more: str, base: str) -> None:
    try:
        tail = upstream_tail_of_more(more, base)
    except ValueError:
        return
    if tail is not None:
        assert gateway_more(tail, None).startswith("/xAPI/")


@pytest.mark.parametrize("text", ["[]", "", "# nothing\n"])
def test_empty_credentials_files(text: str) -> None:
    assert parse_credentials(text, account_homepage="https://x.example").users == {}
