"""Configuration loading: YAML, environment overrides, errors naming key and file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import load_config, resolve_config_path
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
    config = load_config(write(tmp_path, "server:\n  port: 9000\n"), {
        "LRS_GATEWAY__SERVER__PORT": "9100",
        "LRS_GATEWAY__STORAGE__BASIC_USERNAME": "gw",
        "LRS_GATEWAY__STORAGE__BASIC_PASSWORD": "12345",
        "LRS_GATEWAY__AUTH__BASIC__CACHE_TTL": "60",
        "LRS_GATEWAY__XAPI__VERSIONS": "[1.0.3]",
        "LRS_GATEWAY__SERVER__PUBLIC_URL": "null",
        "UNRELATED": "x",
    })
    assert config.server.port == 9100
    assert config.storage.basic_password == Secret("12345")
    assert config.auth.basic.cache_ttl == 60.0
    assert config.xapi.versions == ("1.0.3",)
    assert config.server.public_url is None


def test_cors_is_off_by_default_and_set_from_yaml_or_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), {})
    assert not config.server.cors.enabled
    assert "Authorization" in config.server.cors.allow_headers
    config = load_config(write(tmp_path, "server:\n  cors:\n    allow_origins: "
                                         "[https://lms.example.org]\n    max_age: 60\n"), {})
    assert config.server.cors.enabled
    assert config.server.cors.allow_origins == ("https://lms.example.org",)
    assert config.server.cors.max_age == 60
    config = load_config(write(tmp_path, "server:\n  cors: null\n"), {
        "LRS_GATEWAY__SERVER__CORS__ALLOW_ORIGINS": "['*']",
        "LRS_GATEWAY__SERVER__CORS__EXPOSE_HEADERS": "[ETag]"})
    assert config.server.cors.allow_origins == ("*",)
    assert config.server.cors.expose_headers == ("ETag",)


def test_secrets_are_masked_in_reprs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "storage:\n  basic_username: gw\n"
                                         "  basic_password: hunter2-secret\n"), {})
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
        ("auth:\n  backends: [oidc]\n  oidc:\n    issuer: https://idp\n"
         "    algorithms: [HS256, none]\n", {}, "HS256, none never verify"),
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
        ("", {"LRS_GATEWAY_XAPI_FORWARDINGS": '[{"name": "t1", "url": "http://x/"}]'},
         "environment LRS_GATEWAY_XAPI_FORWARDINGS: forwardings[0] (t1): max_retries: missing"),
        ("", {"LRS_GATEWAY__SERVER__PORTT": "1"}, "environment LRS_GATEWAY__SERVER__PORTT"),
        ("", {"LRS_GATEWAY__SERVER__PORT": "x"}, "environment LRS_GATEWAY__SERVER__PORT: "
                                                 "expected an integer"),
        ("", {"LRS_GATEWAY__BASE_DIR": "/"}, "LRS_GATEWAY__BASE_DIR: unknown setting"),
        ("storage:\n  basic_username: gw\n", {}, "basic_username and basic_password"),
        ("", {"LRS_GATEWAY_XAPI_FORWARDINGS": json.dumps([{
            "name": "t1", "url": "http://x/", "is_active": True, "max_retries": 1, "timeout": 1,
            "basic_username": None, "basic_password": None,
            "headers": {"X-Api-Key": "k\r\nHost: evil"}}])},
         "forwardings[0] (t1): headers: 'X-Api-Key' is not a header that can be set here"),
        ("xapi:\n  signed_statements: sometimes\n", {}, "xapi.signed_statements: one of"),
        ("server:\n  workers: 0\n", {}, "server.workers: must be greater than 0"),
        ("server:\n  cors:\n    allow_origins: https://lms.example.org\n", {},
         "config.yaml: server.cors.allow_origins: expected a list"),
        ("server:\n  cors:\n    allow_origins: [1]\n", {},
         "server.cors.allow_origins: expected a string"),
        ("server:\n  cors:\n    max_age: soon\n", {}, "server.cors.max_age: expected an integer"),
        ("server:\n  cors:\n    max_age: -1\n", {}, "server.cors.max_age: between 0 and 86400"),
        ("server:\n  cors:\n    max_age: 86401\n", {}, "server.cors.max_age: between 0 and"),
        ("server:\n  cors:\n    allow_credentials: sometimes\n", {},
         "server.cors.allow_credentials: expected true or false"),
        ("server:\n  cors:\n    allow_origin: ['*']\n", {},
         "server.cors.allow_origin: unknown key"),
        ("server:\n  cors: [a]\n", {}, "server.cors: expected a mapping"),
        ("server:\n  cors:\n    allow_origins: ['*']\n    allow_credentials: true\n", {},
         'server.cors.allow_credentials: cannot be true with allow_origins "*"'),
        ("server:\n  cors:\n    allow_origins: ['https://lms.example.org/']\n", {},
         "server.cors.allow_origins: 'https://lms.example.org/' is not an origin"),
        ("server:\n  cors:\n    allow_origins: [lms.example.org]\n", {},
         "server.cors.allow_origins: 'lms.example.org' is not an origin"),
        ("server:\n  cors:\n    allow_origins: ['null']\n", {},
         "server.cors.allow_origins: 'null' cannot be allowed"),
        ("server:\n  cors:\n    allow_headers: ['X-Bad Header']\n", {},
         "server.cors.allow_headers: 'X-Bad Header' is not a header name"),
        ("", {"LRS_GATEWAY__SERVER__CORS__ALLOW_ORIGINS": "['*']",
              "LRS_GATEWAY__SERVER__CORS__ALLOW_CREDENTIALS": "true"},
         "server.cors.allow_credentials: cannot be true"),
        ("", {"LRS_GATEWAY__SERVER__CORS__MAX_AGE": "x"},
         "environment LRS_GATEWAY__SERVER__CORS__MAX_AGE: expected an integer"),
    ],
)
def test_errors_name_the_key_and_the_source(tmp_path: Path, text: str,
                                            environ: dict[str, str], expected: str) -> None:
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
        caught.value)
