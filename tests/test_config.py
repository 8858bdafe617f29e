"""Configuration loading: YAML, environment overrides, errors naming key and file."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.constraints import CONSTRAINT, Constraint, Positive
from gateway.config.settings import (
    Config,
    ForwardingTarget,
    inspect_config,
    load_config,
    resolve_config_path,
)
from gateway.errors import ConfigError
from gateway.secret import Secret

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_repo_example_config_loads() -> None:
    config = load_config(REPO / "config.yaml", {})
    assert config.server.port == 8080
    assert config.auth.backends == ("basic",)
    assert config.resolve_path(config.auth.basic.credentials_file) == REPO / "auth.json"


def test_defaults_from_an_empty_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), {})
    assert config.auth.basic.cache_max_size == 100
    assert config.auth.basic.cache_ttl == 3600
    assert config.xapi.versions == ("1.0.3", "2.0.0")


def test_environment_overrides_are_typed(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "server:\n  port: 9000\n"),
        {
            "LRS_GATEWAY__SERVER__PORT": "9100",
            "LRS_GATEWAY__STORAGE__BASIC_USERNAME": "gw",
            "LRS_GATEWAY__STORAGE__BASIC_PASSWORD": "12345",
            "LRS_GATEWAY__AUTH__BASIC__CACHE_TTL": "60",
            "LRS_GATEWAY__XAPI__VERSIONS": "[1.0.3]",
            "LRS_GATEWAY__SERVER__PUBLIC_URL": "null",
            "UNRELATED": "x",
        },
    )
    assert config.server.port == 9100
    assert config.storage.basic_password == Secret("12345")
    assert config.auth.basic.cache_ttl == 60.0
    assert config.xapi.versions == ("1.0.3",)
    assert config.server.public_url is None


def test_cors_is_off_by_default_and_set_from_yaml_or_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), {})
    assert not config.server.cors.enabled
    assert "Authorization" in config.server.cors.allow_headers
    config = load_config(
        write(
            tmp_path,
            "server:\n  cors:\n    allow_origins: [https://lms.example.org]\n    max_age: 60\n",
        ),
        {},
    )
    assert config.server.cors.enabled
    assert config.server.cors.allow_origins == ("https://lms.example.org",)
    assert config.server.cors.max_age == 60
    config = load_config(
        write(tmp_path, "server:\n  cors: null\n"),
        {
            "LRS_GATEWAY__SERVER__CORS__ALLOW_ORIGINS": "['*']",
            "LRS_GATEWAY__SERVER__CORS__EXPOSE_HEADERS": "[ETag]",
        },
    )
    assert config.server.cors.allow_origins == ("*",)
    assert config.server.cors.expose_headers == ("ETag",)


def test_secrets_are_masked_in_reprs(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "storage:\n  basic_username: gw\n  basic_password: hunter2-secret\n"), {}
    )
    assert "hunter2-secret" not in repr(config)
    assert config.storage.basic_password is not None
    assert config.storage.basic_password.reveal() == "hunter2-secret"


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("storage:\n  timeout: soon\n", {}, "config.yaml: storage.timeout: expected a number"),
        ("storage:\n  bogus: 1\n", {}, "config.yaml: storage.bogus: unknown key"),
        ("nonsense: 1\n", {}, "config.yaml: nonsense: unknown key"),
        ("server:\n  port: true\n", {}, "server.port: expected an integer"),
        ("auth:\n  backends: basic\n", {}, "auth.backends: expected a list"),
        ("auth:\n  backends: [kerberos]\n", {}, "unknown backend 'kerberos'"),
        ("auth:\n  backends: [oidc]\n", {}, "auth.oidc.issuer: needed"),
        (
            "auth:\n  backends: [oidc]\n  oidc:\n    issuer: https://idp\n"
            "    algorithms: [HS256, none]\n",
            {},
            "HS256, none never verify",
        ),
        ("auth:\n  backends: [callback]\n", {}, "auth.callback.url: needed"),
        ("auth:\n  backends: [token]\n", {}, "set exactly one of secret"),
        ("auth:\n  backends: [token]\n  tokens:\n    secret: short\n", {}, "at least 32 bytes"),
        ("auth:\n  oidc:\n    agent: weird\n", {}, "auth.oidc.agent"),
        ("auth:\n  backends: [basic, basic]\n", {}, "listed twice"),
        ("storage:\n  url: ftp://x/\n", {}, "storage.url: must be an http"),
        ("xapi:\n  versions: [one]\n", {}, "xapi.versions"),
        ("server: [1, 2]\n", {}, "server: expected a mapping"),
        ("- a\n", {}, "the top level must be a mapping"),
        ("a: [\n", {}, "not valid YAML"),
        ("forwardings:\n  - url: http://x/\n", {}, "forwardings[0]: is_active: missing"),
        ("forwardings:\n  - 3\n", {}, "forwardings[0]: expected a mapping"),
        ("", {"RALPH_XAPI_FORWARDINGS": "[{"}, "environment RALPH_XAPI_FORWARDINGS: not valid"),
        (
            "",
            {"LRS_GATEWAY_XAPI_FORWARDINGS": '[{"name": "t1", "url": "http://x/"}]'},
            "environment LRS_GATEWAY_XAPI_FORWARDINGS: forwardings[0] (t1): max_retries: missing",
        ),
        ("", {"LRS_GATEWAY__SERVER__PORTT": "1"}, "environment LRS_GATEWAY__SERVER__PORTT"),
        (
            "",
            {"LRS_GATEWAY__SERVER__PORT": "x"},
            "environment LRS_GATEWAY__SERVER__PORT: expected an integer",
        ),
        ("", {"LRS_GATEWAY__BASE_DIR": "/"}, "LRS_GATEWAY__BASE_DIR: unknown setting"),
        ("storage:\n  basic_username: gw\n", {}, "basic_username and basic_password"),
        (
            "",
            {
                "LRS_GATEWAY_XAPI_FORWARDINGS": json.dumps(
                    [
                        {
                            "name": "t1",
                            "url": "http://x/",
                            "is_active": True,
                            "max_retries": 1,
                            "timeout": 1,
                            "basic_username": None,
                            "basic_password": None,
                            "headers": {"X-Api-Key": "k\r\nHost: evil"},
                        }
                    ]
                )
            },
            "forwardings[0] (t1): headers: 'X-Api-Key' is not a header that can be set here",
        ),
        ("xapi:\n  signed_statements: sometimes\n", {}, "xapi.signed_statements: one of"),
        ("server:\n  workers: 0\n", {}, "server.workers: must be greater than 0"),
        (
            "server:\n  cors:\n    allow_origins: https://lms.example.org\n",
            {},
            "config.yaml: server.cors.allow_origins: expected a list",
        ),
        (
            "server:\n  cors:\n    allow_origins: [1]\n",
            {},
            "server.cors.allow_origins: expected a string",
        ),
        ("server:\n  cors:\n    max_age: soon\n", {}, "server.cors.max_age: expected an integer"),
        ("server:\n  cors:\n    max_age: -1\n", {}, "server.cors.max_age: between 0 and 86400"),
        ("server:\n  cors:\n    max_age: 86401\n", {}, "server.cors.max_age: between 0 and"),
        (
            "server:\n  cors:\n    allow_credentials: sometimes\n",
            {},
            "server.cors.allow_credentials: expected true or false",
        ),
        (
            "server:\n  cors:\n    allow_origin: ['*']\n",
            {},
            "server.cors.allow_origin: unknown key",
        ),
        ("server:\n  cors: [a]\n", {}, "server.cors: expected a mapping"),
        (
            "server:\n  cors:\n    allow_origins: ['*']\n    allow_credentials: true\n",
            {},
            'server.cors.allow_credentials: cannot be true with allow_origins "*"',
        ),
        (
            "server:\n  cors:\n    allow_origins: ['https://lms.example.org/']\n",
            {},
            "server.cors.allow_origins: 'https://lms.example.org/' is not an origin",
        ),
        (
            "server:\n  cors:\n    allow_origins: [lms.example.org]\n",
            {},
            "server.cors.allow_origins: 'lms.example.org' is not an origin",
        ),
        (
            "server:\n  cors:\n    allow_origins: ['null']\n",
            {},
            "server.cors.allow_origins: 'null' cannot be allowed",
        ),
        (
            "server:\n  cors:\n    allow_headers: ['X-Bad Header']\n",
            {},
            "server.cors.allow_headers: 'X-Bad Header' is not a header name",
        ),
        (
            "",
            {
                "LRS_GATEWAY__SERVER__CORS__ALLOW_ORIGINS": "['*']",
                "LRS_GATEWAY__SERVER__CORS__ALLOW_CREDENTIALS": "true",
            },
            "server.cors.allow_credentials: cannot be true",
        ),
        (
            "",
            {"LRS_GATEWAY__SERVER__CORS__MAX_AGE": "x"},
            "environment LRS_GATEWAY__SERVER__CORS__MAX_AGE: expected an integer",
        ),
    ],
)
def test_errors_name_the_key_and_the_source(
    tmp_path: Path, text: str, environ: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ)
    assert expected in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "server:\n  port: x\n  host: 1\n"), {})
    assert "server.port" in str(caught.value)
    assert "server.host" in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml", {})


def test_config_path_resolution() -> None:
    assert resolve_config_path("a.yaml", {"LRS_GATEWAY_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert resolve_config_path(None, {"LRS_GATEWAY_CONFIG": "b.yaml"}) == Path("b.yaml")
    assert resolve_config_path(None, {}) == Path("config.yaml")


def test_password_parse_failure_does_not_echo_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "storage:\n  basic_password: [not-a-string-secret]\n"), {})
    assert "not-a-string-secret" not in str(caught.value) or "expected a string" in str(
        caught.value
    )


# -- the real culprit: environment variables named, every problem at once (issue 15, §3) ----

TARGET = (
    "forwardings:\n  - name: analytics\n    is_active: true\n"
    "    url: https://lrs2.example.org/xAPI/statements\n    max_retries: 3\n"
    "    timeout: 5\n"
)


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        (
            "",
            {"LRS_GATEWAY__STORAGE__URL": "ftp://x/xAPI/"},
            "environment LRS_GATEWAY__STORAGE__URL: storage.url: must be an http",
        ),
        (
            "",
            {"LRS_GATEWAY__AUTH__BASIC__CACHE_TTL": "-1"},
            "environment LRS_GATEWAY__AUTH__BASIC__CACHE_TTL: auth.basic.cache_ttl: must be "
            "greater than 0",
        ),
        (
            "auth:\n  backends: [basic, token]\n",
            {"LRS_GATEWAY__AUTH__TOKENS__SECRET": "short"},
            "environment LRS_GATEWAY__AUTH__TOKENS__SECRET: auth.tokens.secret: must be at least",
        ),
        (
            "auth:\n  backends: [basic, oauth]\n",
            {"LRS_GATEWAY__AUTH__OAUTH__ENCRYPTION_KEY": "short"},
            "auth.oauth.encryption_key: needed when the oauth backend is on, 32 bytes",
        ),
        (
            "auth:\n  backends: [oauth]\n  oauth:\n    encryption_key: " + "k" * 40 + "\n",
            {},
            "auth.backends: oauth needs basic too",
        ),
        (
            "",
            {
                "LRS_GATEWAY_XAPI_FORWARDINGS": json.dumps(
                    [
                        {
                            "name": "t",
                            "is_active": True,
                            "url": "http://x/xAPI/statements",
                            "max_retries": 1,
                            "timeout": 1,
                        }
                    ]
                    * 2
                )
            },
            "environment LRS_GATEWAY_XAPI_FORWARDINGS: forwardings[1] (t): name: two targets "
            "share it",
        ),
        (
            TARGET + "  - name: other\n    is_active: true\n    url: http://x/xAPI/statements\n"
            "    max_retries: 3\n    timeout: 5\n",
            {"LRS_GATEWAY__FORWARDINGS__OTHER__NAME": "analytics"},
            "environment LRS_GATEWAY__FORWARDINGS__OTHER__NAME: forwardings[1] (analytics): "
            "name: two targets share it",
        ),
        (
            TARGET,
            {"LRS_GATEWAY__FORWARDINGS__NOPE__BASIC_PASSWORD": "pw"},
            "environment LRS_GATEWAY__FORWARDINGS__NOPE__BASIC_PASSWORD: no forwarding target "
            "named or numbered 'NOPE' (targets: ANALYTICS; or 0 to 0)",
        ),
        (
            TARGET,
            {"LRS_GATEWAY__FORWARDINGS__0__BASIC_PASSWORD": "pw"},
            "environment LRS_GATEWAY__FORWARDINGS__0__BASIC_PASSWORD: forwardings[0] "
            "(analytics): basic_username and basic_password go together",
        ),
        (
            TARGET,
            {"LRS_GATEWAY__FORWARDINGS__ANALYTICS__TIMEOUT": "soon"},
            "environment LRS_GATEWAY__FORWARDINGS__ANALYTICS__TIMEOUT: expected a number",
        ),
        (
            "",
            {"LRS_GATEWAY__STORAGE_URL": "http://x/xAPI/"},
            "environment LRS_GATEWAY__STORAGE_URL: unknown setting (did you mean "
            "LRS_GATEWAY__STORAGE__URL?)",
        ),
        (
            "xapi:\n  versions: ['1.0.3', '1.1.0']\n",
            {},
            "config.yaml: xapi.versions: '1.1.0' is not an xAPI version",
        ),
        (
            "",
            {"LRS_GATEWAY__XAPI__VERSIONS": "['3.0.0']"},
            "environment LRS_GATEWAY__XAPI__VERSIONS: xapi.versions: '3.0.0' is not an xAPI",
        ),
        (
            TARGET.replace("timeout: 5", "timeout: 5\n    xapi_version: 1.7.0"),
            {},
            "forwardings[0] (analytics): xapi_version: '1.7.0' is not an xAPI version",
        ),
        ("xapi:\n  validation: lenient\n", {}, "xapi.validation: one of strict, basic"),
        (
            "storage:\n  url: http://x/xAPI/\n   timeout: 3\n",
            {},
            "not valid YAML at line 3, column 11: mapping values are not allowed here",
        ),
    ],
)
def test_errors_name_the_variable_they_came_from(
    tmp_path: Path, text: str, environ: dict[str, str], expected: str
) -> None:
    report = inspect_config(write(tmp_path, text), environ)
    assert any(expected in error for error in report.errors), report.errors
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path, text), environ)


def test_every_problem_of_every_kind_is_reported_at_once(tmp_path: Path) -> None:
    report = inspect_config(
        write(
            tmp_path,
            "server:\n  port: x\nstorage:\n  bogus: 1\nxapi:\n  versions: ['9.9']\n" + TARGET,
        ),
        {
            "LRS_GATEWAY__AUTH__BASIC__CACHE_TTL": "-5",
            "LRS_GATEWAY_XAPI_FORWARDINGS": "[{",
        },
    )
    assert sorted(e.split(": ")[1] for e in report.errors) == [
        "auth.basic.cache_ttl",
        "not valid JSON (Expecting property name enclosed in double quotes)",
        "server.port",
        "storage.bogus",
        "xapi.versions",
    ], report.errors


def test_per_target_secrets_from_the_environment(tmp_path: Path) -> None:
    bearer_only = TARGET + (
        "  - name: lrs-3\n    is_active: true\n"
        "    url: https://lrs3.example.org/xAPI/statements\n"
        "    max_retries: 3\n    timeout: 5\n"
    )
    config = load_config(
        write(
            tmp_path, bearer_only.replace("timeout: 5\n", "timeout: 5\n    basic_username: gw\n", 1)
        ),
        {
            "LRS_GATEWAY__FORWARDINGS__ANALYTICS__BASIC_PASSWORD": "target-pw",
            "LRS_GATEWAY__FORWARDINGS__1__BEARER_TOKEN": "t0ken",  # by index
        },
    )
    analytics, third = config.forwardings
    assert analytics.basic_username == "gw"
    assert analytics.basic_password == Secret("target-pw")
    # Only a bearer token: no basic_* keys at all.
    assert (third.basic_username, third.basic_password) == (None, None)
    assert third.bearer_token == Secret("t0ken")
    # A name is matched as a variable can spell it: upper case, `_` for `-`.
    config = load_config(
        write(tmp_path, bearer_only), {"LRS_GATEWAY__FORWARDINGS__LRS_3__BEARER_TOKEN": "t0ken"}
    )
    assert config.forwardings[1].bearer_token == Secret("t0ken")
    # From a JSON list of targets too.
    config = load_config(
        write(tmp_path, ""),
        {
            "LRS_GATEWAY_XAPI_FORWARDINGS": json.dumps(
                [
                    {
                        "name": "t",
                        "is_active": True,
                        "url": "http://x/xAPI/statements",
                        "max_retries": 1,
                        "timeout": 1,
                        "basic_username": "gw",
                    }
                ]
            ),
            "LRS_GATEWAY__FORWARDINGS__T__BASIC_PASSWORD": "pw",
        },
    )
    assert config.forwardings[0].basic_password == Secret("pw")


def test_warnings_and_notes_say_how_to_fix(tmp_path: Path) -> None:
    text = (
        "storage:\n  url: http://gw:secret@ralph:8100/\n"
        + TARGET.replace("/xAPI/statements", "/xAPI/")
        + "  - name: b\n    is_active: true\n    url: http://lrs3/data/\n"
        "    max_retries: 3\n    timeout: 5\n"
    )
    report = inspect_config(
        write(tmp_path, text),
        {
            "LRS_GATEWAY_STORAGE_URL": "http://x/xAPI/",
            "LRS_GATEWAY_CONFIG": "x.yaml",
            "LRS_GATEWAY_DEMO_PORT": "8080",
        },
    )
    assert report.errors == ()
    assert report.config is not None
    assert report.config.forwardings[0].url == "https://lrs2.example.org/xAPI/statements"
    assert report.notes == (
        "forwardings[0] (analytics): url is an xAPI base; statements go to /xAPI/statements",
    )
    path = tmp_path / "config.yaml"
    assert report.warnings == (
        "environment LRS_GATEWAY_STORAGE_URL: not a setting (ignored); did you mean "
        "LRS_GATEWAY__STORAGE__URL?",
        f"{path}: storage.url: its path has no /xAPI/; it must be the storage LRS's xAPI "
        "base, e.g. http://ralph:8100/xAPI/",
        f"{path}: forwardings[1] (b): url: /data/ is not a statements endpoint; it must be "
        "the target's statements URL, e.g. https://lrs2.example.org/xAPI/statements",
    )
    assert "secret" not in " ".join(report.warnings)


def test_origins_say_where_each_value_came_from(tmp_path: Path) -> None:
    report = inspect_config(
        write(tmp_path, "server:\n  port: 9000\n" + TARGET),
        {"LRS_GATEWAY__STORAGE__BASIC_USERNAME": "gw"},
    )
    path = tmp_path / "config.yaml"
    assert report.origins["server.port"] == f"{path}:2"
    assert report.origins["forwardings[0].url"] == f"{path}:6"
    assert report.origins["storage.basic_username"] == (
        "environment LRS_GATEWAY__STORAGE__BASIC_USERNAME"
    )
    assert "server.host" not in report.origins  # a default


def test_validation_setting_defaults_to_strict(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), {}).xapi.validation == "strict"
    config = load_config(write(tmp_path, ""), {"LRS_GATEWAY__XAPI__VALIDATION": "basic"})
    assert config.xapi.validation == "basic"


# -- constraints declared on the fields (gateway.config.constraints) ----------------------


def declared(cls: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, Constraint]]:
    """Every constraint declared on `cls`'s settings, sections walked into, by dotted key."""
    found: list[tuple[str, Constraint]] = []
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        path = (*prefix, fld.name)
        if dataclasses.is_dataclass(hints[fld.name]):
            found += declared(hints[fld.name], path)
        elif CONSTRAINT in fld.metadata:
            found.append((".".join(path), fld.metadata[CONSTRAINT]))
    return found


# Read from the declarations: a setting declared positive tomorrow is tested too.
POSITIVE = [key for key, constraint in declared(Config) if isinstance(constraint, Positive)]
TARGET_POSITIVE = [
    key for key, constraint in declared(ForwardingTarget) if isinstance(constraint, Positive)
]


def nested(key: str, value: Any) -> dict[str, Any]:
    """`{"storage": {"timeout": value}}` for `storage.timeout`."""
    *sections, name = key.split(".")
    raw: dict[str, Any] = {name: value}
    for section in reversed(sections):
        raw = {section: raw}
    return raw


def test_the_declarations_are_found() -> None:
    assert {"storage.timeout", "server.workers", "outbox.resolve_pending_after"} <= set(POSITIVE)
    assert {"timeout", "connect_timeout", "batch_size"} <= set(TARGET_POSITIVE)


@pytest.mark.parametrize("key", POSITIVE)
def test_every_setting_declared_positive_refuses_0(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, yaml.safe_dump(nested(key, 0)))
    report = inspect_config(path, {})
    assert f"{path}: {key}: must be greater than 0" in report.errors, report.errors


@pytest.mark.parametrize("name", TARGET_POSITIVE)
def test_every_target_setting_declared_positive_refuses_0(tmp_path: Path, name: str) -> None:
    target = {
        "name": "analytics",
        "is_active": True,
        "url": "https://lrs2.example.org/xAPI/statements",
        "max_retries": 3,
        "timeout": 5,
        name: 0,
    }
    path = write(tmp_path, yaml.safe_dump({"forwardings": [target]}))
    report = inspect_config(path, {})
    assert report.errors == (
        f"{path}: forwardings[0] (analytics): {name}: must be greater than 0",
    ), report.errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            TARGET.replace("max_retries: 3", "max_retries: -1"),
            "forwardings[0] (analytics): max_retries: must be 0 or more",
        ),
        ("outbox:\n  synchronous: sometimes\n", "outbox.synchronous: full or normal"),
        ("auth:\n  oidc:\n    agent: x\n", "auth.oidc.agent: one of account, openid, group"),
        ("xapi:\n  validation: lax\n", "xapi.validation: one of strict, basic (not 'lax')"),
        ("server:\n  port: 65536\n", "server.port: must be between 0 and 65535"),
        ("metrics:\n  port: 0\n", "metrics.port: must be between 1 and 65535"),
        ("sentry:\n  traces_sample_rate: 2\n", "sentry.traces_sample_rate: between 0 and 1"),
    ],
)
def test_declared_constraints_keep_their_messages(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    report = inspect_config(path, {})
    assert f"{path}: {expected}" in report.errors, report.errors


def test_an_unset_optional_setting_is_not_checked(tmp_path: Path) -> None:
    # connect_timeout and metrics.port are declared, but None means "not set": no problem.
    report = inspect_config(write(tmp_path, TARGET + "metrics:\n  port: null\n"), {})
    assert report.errors == ()
    assert report.config is not None
    assert report.config.forwardings[0].connect_timeout is None


def test_a_resolver_faster_than_storage_and_a_long_connect_timeout_are_warned_about(
    tmp_path: Path,
) -> None:
    target = {
        "name": "lrs2",
        "is_active": True,
        "url": "http://lrs2.example.org/xAPI/statements",
        "max_retries": 1,
        "timeout": 2,
        "connect_timeout": 5,
    }
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {"url": "http://lrs.example.org/xAPI/", "timeout": 10},
                "outbox": {"resolve_pending_after": 10},
                "forwardings": [target],
            }
        )
    )
    warnings = inspect_config(path, {}).warnings
    assert any(
        "outbox.resolve_pending_after: 10 s is not longer than storage.timeout (10 s)" in w
        for w in warnings
    ), warnings
    assert any("connect_timeout: 5 s is longer than timeout (2 s)" in w for w in warnings)
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {"url": "http://lrs.example.org/xAPI/", "timeout": 10},
                "forwardings": [{**target, "connect_timeout": 1}],
            }
        )
    )
    assert inspect_config(path, {}).warnings == ()


@pytest.mark.parametrize(
    "url", ["http://1[27.0.0.1:8100/xAPI/", "http://lrs.example:99999/xAPI/", "http:///xAPI/"]
)
def test_a_url_that_cannot_be_parsed_is_a_problem_not_a_crash(tmp_path: Path, url: str) -> None:
    target = {"name": "t", "is_active": True, "url": url, "max_retries": 1, "timeout": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": {"url": url}, "forwardings": [target]}))
    errors = inspect_config(path, {}).errors
    assert any("storage.url: must be an http:// or https:// URL" in e for e in errors), errors
    assert any("forwardings[0] (t): url: must be an http" in e for e in errors), errors


def test_a_shared_outbox_warns_of_a_short_lease_and_a_resolver_faster_than_a_write(
    tmp_path: Path,
) -> None:
    target = {
        "name": "lrs2",
        "is_active": True,
        "url": "http://lrs2.example.org/xAPI/statements",
        "max_retries": 1,
        "timeout": 20,
    }
    path = tmp_path / "config.yaml"
    shared = {
        "storage": {"url": "http://lrs.example.org/xAPI/", "timeout": 10},
        "outbox": {"resolve_pending_after": 12},
        "store": {"url": "postgresql://gw@db.example.org/gw", "lease": 30},
        "forwardings": [target],
    }
    path.write_text(yaml.safe_dump(shared))
    warnings = inspect_config(path, {}).warnings
    assert any(
        "store.lease: 30 s is less than twice forwardings[0] (lrs2).timeout (20 s)" in w
        for w in warnings
    ), warnings
    assert any(
        "outbox.resolve_pending_after: 12 s is not longer than a write may wait for storage "
        "(10 s storage.timeout + 5 s limits.upstream_queue_timeout)" in w
        for w in warnings
    ), warnings
    # A SQLite outbox is this process's: its own writes in flight are known, leases unused.
    path.write_text(yaml.safe_dump({**shared, "store": {}}))
    assert inspect_config(path, {}).warnings == ()
