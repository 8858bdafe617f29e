"""deploy/: every file parses, the pieces agree with each other and with the gateway.

The alert rules are checked and unit-tested with the real `promtool` (Debian package
`prometheus`, installed by deploy/bootstrap.sh); without it these tests skip, or fail under
CI=true. Images are not pulled or built here (no Docker engine in CI): what is checked is what
can be read from the files.
"""

from __future__ import annotations

import configparser
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast
from urllib.parse import urlsplit

import bcrypt
import pytest
import yaml
from support import free_port

from gateway.auth.credentials import parse_credentials
from gateway.config.settings import Config, ServerConfig, load_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD_UNIT = DEPLOY / "systemd" / "lrs-gateway.service"
LIVENESS, READINESS = "/__lbheartbeat__", "/__heartbeat__"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104  (what a container must listen on)
PROMTOOL_TIMEOUT = 60

# ---------------------------------------------------------------------------------------
# The metrics the gateway exports: family name -> kind and labels (with their fixed values).

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
ROUTES = frozenset(
    {
        "xapi.statements",
        "xapi.state",
        "xapi.activity_profile",
        "xapi.agent_profile",
        "xapi.activities",
        "xapi.agents",
        "xapi.about",
        "xapi.other",
        "whoami",
        "token",
        "admin.forwarding",
        "heartbeat",
        "lbheartbeat",
        "metrics",
        "unmatched",
    }
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "OTHER"})
STATUS_CLASSES = frozenset({"1xx", "2xx", "3xx", "4xx", "5xx"})
SCHEMES = frozenset({"basic", "oidc", "callback", "token", "bearer", "none", "other"})
AUTH_RESULTS = frozenset({"ok", "bad_credentials", "forbidden", "error"})
CACHE_RESULTS = frozenset({"hit", "miss"})
OUTCOMES = frozenset({"2xx", "3xx", "4xx", "5xx", "timeout", "error"})
FREE: frozenset[str] = frozenset()  # a label whose values are not a fixed set


@dataclass(frozen=True)
class Family:
    kind: str
    labels: Mapping[str, frozenset[str]]


def _forwarding(kind: str) -> Family:
    return Family(kind, {"target": FREE})


METRICS: dict[str, Family] = {
    "lrs_gateway_requests": Family(
        COUNTER, {"route": ROUTES, "method": METHODS, "status_class": STATUS_CLASSES}
    ),
    "lrs_gateway_request_duration_seconds": Family(HISTOGRAM, {"route": ROUTES, "method": METHODS}),
    "lrs_gateway_requests_in_flight": Family(GAUGE, {}),
    "lrs_gateway_auth_attempts": Family(COUNTER, {"scheme": SCHEMES, "result": AUTH_RESULTS}),
    "lrs_gateway_auth_cache_lookups": Family(COUNTER, {"scheme": SCHEMES, "result": CACHE_RESULTS}),
    "lrs_gateway_bcrypt_duration_seconds": Family(HISTOGRAM, {}),
    "lrs_gateway_upstream_requests": Family(COUNTER, {"target": FREE, "outcome": OUTCOMES}),
    "lrs_gateway_upstream_duration_seconds": Family(HISTOGRAM, {"target": FREE}),
    "lrs_gateway_statements_accepted": Family(COUNTER, {}),
    "lrs_gateway_forwarding_target_up": _forwarding(GAUGE),
    "lrs_gateway_forwarding_backlog": _forwarding(GAUGE),
    "lrs_gateway_forwarding_lag_seconds": _forwarding(GAUGE),
    "lrs_gateway_forwarding_dead_letters": _forwarding(GAUGE),
    "lrs_gateway_forwarding_delivered": _forwarding(COUNTER),
    "lrs_gateway_forwarding_retried": _forwarding(COUNTER),
    "lrs_gateway_forwarding_dead_lettered": _forwarding(COUNTER),
    "lrs_gateway_forwarding_failed": _forwarding(COUNTER),
    "lrs_gateway_jwks_refreshes": Family(COUNTER, {}),
    "lrs_gateway_shared_limits_up": Family(GAUGE, {}),
    "lrs_gateway_shared_limits_fallbacks": Family(COUNTER, {}),
    "lrs_gateway_ready": Family(GAUGE, {}),
    "lrs_gateway_build_info": Family(GAUGE, {"version": FREE}),
}
# Labels Prometheus adds at scrape time (static configs, Kubernetes service discovery).
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
)
# The series a family of each kind exposes, as suffixes (prometheus_client adds _created).
SUFFIXES: tuple[tuple[str, frozenset[str]], ...] = (
    ("_total", frozenset({COUNTER})),
    ("_created", frozenset({COUNTER, HISTOGRAM})),
    ("_bucket", frozenset({HISTOGRAM})),
    ("_sum", frozenset({HISTOGRAM})),
    ("_count", frozenset({HISTOGRAM})),
    ("", frozenset({GAUGE})),
)


def family_of(series: str) -> str | None:
    """The family a series name belongs to, stripping only the suffixes its kind has."""
    for suffix, kinds in SUFFIXES:
        if suffix and not series.endswith(suffix):
            continue
        base = series[: len(series) - len(suffix)] if suffix else series
        family = METRICS.get(base)
        if family is not None and family.kind in kinds:
            return base
    return None


_NAME = re.compile(r"(?<![\w:])lrs_gateway_[A-Za-z0-9_:]+")
_SELECTOR = re.compile(r"(?<![\w:])(lrs_gateway_\w+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_ALL_LABELS = frozenset().union(*(f.labels for f in METRICS.values())) | TARGET_LABELS | {"le"}


def metric_names(text: str) -> set[str]:
    return set(_NAME.findall(text))


def selector_problems(expr: str) -> list[str]:
    """Label names and fixed label values in `metric{...}` selectors and by()/without()."""
    problems = []
    for name, body in _SELECTOR.findall(expr):
        base = family_of(name)
        if base is None:
            continue  # reported by the metric-name test
        family = METRICS[base]
        allowed = set(family.labels) | TARGET_LABELS
        if name.endswith("_bucket"):
            allowed.add("le")
        for label, op, value in _MATCHER.findall(body):
            if label not in allowed:
                problems.append(f"{name}: no label {label!r}")
                continue
            values = family.labels.get(label, FREE)
            if not values or "$" in value:
                continue
            alternatives = value.split("|") if op in ("=~", "!~") else [value]
            for alternative in alternatives:
                if not any(re.fullmatch(alternative, v) for v in values):
                    problems.append(
                        f"{name}: {label} {op} {value!r}: {alternative!r} matches "
                        f"none of {sorted(values)}"
                    )
    for group in _GROUPING.findall(expr):
        for label in (part.strip() for part in group.split(",")):
            if label and label not in _ALL_LABELS:
                problems.append(f"by/without ({group}): no metric has the label {label!r}")
    return problems


def test_family_of_strips_suffixes_as_prometheus_names_series() -> None:
    assert family_of("lrs_gateway_requests_total") == "lrs_gateway_requests"
    assert family_of("lrs_gateway_requests_created") == "lrs_gateway_requests"
    assert family_of("lrs_gateway_request_duration_seconds_bucket") == (
        "lrs_gateway_request_duration_seconds"
    )
    assert family_of("lrs_gateway_request_duration_seconds_count") == (
        "lrs_gateway_request_duration_seconds"
    )
    assert family_of("lrs_gateway_forwarding_lag_seconds") == "lrs_gateway_forwarding_lag_seconds"
    assert family_of("lrs_gateway_build_info") == "lrs_gateway_build_info"
    for wrong in (
        "lrs_gateway_requests",  # a counter has no bare series
        "lrs_gateway_request_duration_seconds",  # nor has a histogram
        "lrs_gateway_forwarding_backlog_total",  # a gauge has no _total
        "lrs_gateway_requests_total_count",
        "lrs_gateway_request_total",
    ):
        assert family_of(wrong) is None, wrong
    assert selector_problems('rate(lrs_gateway_auth_attempts_total{result="bad_credential"}[5m])')
    assert selector_problems('lrs_gateway_upstream_requests_total{status_class="5xx"}')
    assert selector_problems("sum by (tagret) (lrs_gateway_forwarding_backlog)")
    assert not selector_problems(
        'sum by (le) (rate(lrs_gateway_request_duration_seconds_bucket{route!~"heartbeat|metrics",'
        ' job=~"$job"}[5m]))'
    )


# ---------------------------------------------------------------------------------------
# Helpers: YAML, promtool, Dockerfiles, dockerignore.


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a mapping"
    return cast(dict[str, Any], data)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"
    return cast(list[dict[str, Any]], docs)


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name.endswith(suffixes))


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None and Path("/usr/bin/promtool").is_file():
        found = "/usr/bin/promtool"
    if found is None:
        message = (
            "promtool not found: install Debian's `prometheus` package "
            "(bash deploy/bootstrap.sh does, as root)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(promtool: str, *args: str) -> str:
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{output}"
    return output


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def words(self) -> list[str]:
        """Exec form (JSON) or shell-ish words, without the --flags before them."""
        text = self.args.strip()
        if text.startswith("["):
            return cast(list[str], json.loads(text))
        words = shlex.split(text)
        while words and words[0].startswith("--"):
            words.pop(0)
        return words


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and ARG defaults substituted in FROM."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, f"{path}: ends in a continuation line"
    instructions = []
    args: dict[str, str] = {}
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.strip().partition("=")
            args[name] = default.strip('"')
        if keyword == "FROM":
            rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), rest)
        instructions.append(Instruction(keyword, rest.strip()))
    return instructions


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(ignore_file: Path, path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out, per the ignore file."""
    excluded = False
    parts = path.strip("/").split("/")
    for line in ignore_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _glob_regex(line.lstrip("!").strip("/"))
        # A pattern that matches a directory matches everything under it.
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_matching_works_like_docker(tmp_path: Path) -> None:
    ignore = tmp_path / "x.dockerignore"
    ignore.write_text("*\n!gateway/\n!deploy/docker/config.yaml\n**/__pycache__\n")
    assert not dockerignored(ignore, "gateway/http/app.py")
    assert dockerignored(ignore, "gateway/__pycache__/app.cpython-311.pyc")
    assert dockerignored(ignore, ".venv/bin/python")
    assert dockerignored(ignore, "deploy/docker/other.yaml")
    assert not dockerignored(ignore, "deploy/docker/config.yaml")


# ---------------------------------------------------------------------------------------
# Everything parses.


def test_every_yaml_and_json_file_in_deploy_parses() -> None:
    yamls = deploy_files(".yml", ".yaml")
    jsons = deploy_files(".json")
    assert len(yamls) >= 15
    assert DASHBOARD in jsons
    for path in yamls:
        assert load_yaml_docs(path), f"{path}: empty"
    for path in jsons:
        json.loads(path.read_text(encoding="utf-8"))


def test_deploy_readme_mentions_every_file() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    missing = [
        str(p.relative_to(DEPLOY))
        for p in sorted(DEPLOY.rglob("*"))
        if p.is_file() and p.name != "README.md" and p.name not in readme
    ]
    assert not missing, f"deploy/README.md does not mention {missing}"


# ---------------------------------------------------------------------------------------
# Prometheus: rules, their unit tests, the scrape config.


def test_promtool_check_rules(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in output


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    output = run_promtool(promtool, "test", "rules", str(RULES_TEST))
    assert "SUCCESS" in output


def test_promtool_check_prometheus_config(promtool: str) -> None:
    run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))


def test_rule_unit_tests_prove_the_lag_alert_fires_and_stays_quiet() -> None:
    tests = load_yaml(RULES_TEST)["tests"]
    cases = [
        (case["alertname"], bool(case.get("exp_alerts")))
        for test in tests
        for case in test.get("alert_rule_test", [])
    ]
    for alert in (
        "LrsGatewayForwardingLag",
        "LrsGatewayForwardingDeadLetters",
        "LrsGatewayForwardingTargetDown",
    ):
        assert (alert, True) in cases, f"no unit test shows {alert} firing"
        assert (alert, False) in cases, f"no unit test shows {alert} quiet"
    tested = {name for name, _ in cases}
    defined = {rule["alert"] for group in load_yaml(RULES)["groups"] for rule in group["rules"]}
    assert defined <= tested, f"alerts without a unit test: {sorted(defined - tested)}"


def test_a_rule_unit_test_shows_the_lag_alert_firing_while_a_target_is_down() -> None:
    """A down target keeps its statements in its backlog: the lag alert must fire then."""
    for test in load_yaml(RULES_TEST)["tests"]:
        series = {
            s["series"].split("{")[0]: s["values"]
            for s in test["input_series"]
            if 'target="analytics"' in s["series"]
        }
        fired = {
            case["alertname"] for case in test.get("alert_rule_test", []) if case.get("exp_alerts")
        }
        if (
            "0x" in series.get("lrs_gateway_forwarding_target_up", "")
            and {"LrsGatewayForwardingLag", "LrsGatewayForwardingTargetDown"} <= fired
        ):
            return
    raise AssertionError("no rule unit test has LrsGatewayForwardingLag fire during an outage")


def test_rules_cover_what_operators_alert_on() -> None:
    exprs = " ".join(
        rule["expr"] for group in load_yaml(RULES)["groups"] for rule in group["rules"]
    )
    for needed in (
        "lrs_gateway_forwarding_lag_seconds",
        "lrs_gateway_forwarding_dead_letters",
        "lrs_gateway_forwarding_target_up == 0",
        "lrs_gateway_upstream_requests_total",
        'status_class="5xx"',
        'result="bad_credentials"',
        "lrs_gateway_ready == 0",
        "up{",
    ):
        assert needed in exprs, needed
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    return exprs


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    sources = {
        RULES: RULES.read_text(encoding="utf-8"),
        RULES_TEST: RULES_TEST.read_text(encoding="utf-8"),
        DASHBOARD: DASHBOARD.read_text(encoding="utf-8"),
        KUBERNETES / "prometheusrule.yaml": (KUBERNETES / "prometheusrule.yaml").read_text(
            encoding="utf-8"
        ),
    }
    for path, text in sources.items():
        names = metric_names(text)
        assert names, f"{path}: no lrs_gateway_ metric at all"
        unknown = sorted(name for name in names if family_of(name) is None)
        assert not unknown, f"{path}: not exported by the gateway: {unknown}"
    used = {family_of(name) for name in metric_names(sources[DASHBOARD])}
    for needed in (
        "lrs_gateway_requests",
        "lrs_gateway_request_duration_seconds",
        "lrs_gateway_auth_attempts",
        "lrs_gateway_upstream_requests",
        "lrs_gateway_forwarding_backlog",
        "lrs_gateway_forwarding_lag_seconds",
    ):
        assert needed in used, f"the dashboard does not show {needed}"


def test_label_names_and_values_are_the_exported_ones() -> None:
    problems = [
        f"{problem}  in  {expr.strip()[:80]}"
        for expr in rule_exprs() + dashboard_exprs()
        for problem in selector_problems(expr)
    ]
    assert not problems, "\n".join(problems)


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Grafana variables replaced, each panel query is checked as a recording rule."""
    rules = []
    for index, expr in enumerate(dashboard_exprs()):
        expr = re.sub(r"\$__(?:rate_interval|interval|range)\b", "5m", expr)
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    assert len(rules) >= 20
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", str(path))


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            for variable in re.findall(r"\$(\w+)", target["expr"]):
                assert variable.startswith("__") or variable in variables, variable
    quantiles = " ".join(dashboard_exprs())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(lrs_gateway_request_duration" in (
            quantiles
        )


def test_prometheus_rule_for_the_operator_holds_the_same_groups() -> None:
    (rule,) = load_yaml_docs(KUBERNETES / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"]
    generator = KUBERNETES / "generate-prometheusrule.py"
    done = subprocess.run(
        [sys.executable, str(generator), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------
# The image.

DOCKERFILE = DEPLOY / "Dockerfile"
IMAGE_CONFIG = DEPLOY / "docker" / "config.yaml"
IMAGE_ENV = {  # what the Dockerfile's header tells users to set
    "LRS_GATEWAY__STORAGE__URL": "https://lrs.internal/xAPI/",
    "LRS_GATEWAY__STORAGE__BASIC_USERNAME": "gateway",
    "LRS_GATEWAY__STORAGE__BASIC_PASSWORD": "secret",
}


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from=stage)."""
    out = []
    for instruction in instructions:
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            *sources, destination = instruction.words()
            out.append((sources, destination))
    return out


def check_context_copies(dockerfile_path: Path, context: Path) -> None:
    ignore = dockerfile_path.with_name(dockerfile_path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore} missing (BuildKit reads it for {dockerfile_path.name})"
    for sources, _ in copies(dockerfile(dockerfile_path)):
        for source in sources:
            path = context / source
            assert path.exists(), f"{dockerfile_path.name}: COPY {source}: not in the context"
            files = (
                [path]
                if path.is_file()
                else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
            )
            assert files, source
            for file in files:
                relative = file.relative_to(context).as_posix()
                assert not dockerignored(ignore, relative), (
                    f"{ignore.name} leaves out {relative}, which {dockerfile_path.name} copies"
                )


def test_dockerfile() -> None:
    instructions = dockerfile(DOCKERFILE)
    froms = [i.words()[0] for i in instructions if i.keyword == "FROM"]
    assert froms
    assert all(image == "python:3.11-slim" for image in froms), froms
    config = load_config(IMAGE_CONFIG, IMAGE_ENV)
    assert config.server.host == ALL_INTERFACES
    (expose,) = [i for i in instructions if i.keyword == "EXPOSE"]
    assert expose.words() == [str(config.server.port)]
    # Numeric and not root: Kubernetes can only verify runAsNonRoot for a numeric user.
    assert image_user() != (0, 0)
    (volume,) = [i for i in instructions if i.keyword == "VOLUME"]
    assert volume.words() == [config.data_dir]
    env = env_of(instructions)
    health_url = urlsplit(env["HEALTHCHECK_URL"])
    assert (health_url.path, health_url.port) == (LIVENESS, config.server.port)
    (healthcheck,) = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert "HEALTHCHECK_URL" in healthcheck.args
    assert ("deploy/docker/config.yaml", "/etc/lrs-gateway/config.yaml") in [
        (sources[0], dest) for sources, dest in copies(instructions)
    ]
    entrypoint = [i for i in instructions if i.keyword == "ENTRYPOINT"][-1].words()
    command = [i for i in instructions if i.keyword == "CMD"][-1].words()
    assert entrypoint + command == [
        "lrs-gateway",
        "serve",
        "--config",
        "/etc/lrs-gateway/config.yaml",
    ]
    check_context_copies(DOCKERFILE, REPO)


def image_user() -> tuple[int, int]:
    """The numeric uid:gid the Dockerfile's last USER names (ARG defaults substituted)."""
    args: dict[str, str] = {}
    user = ""
    for instruction in dockerfile(DOCKERFILE):
        if instruction.keyword == "ARG" and "=" in instruction.args:
            name, _, default = instruction.args.partition("=")
            args[name] = default
        if instruction.keyword == "USER":
            user = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], instruction.args)
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: not numeric"
    assert gid.isdigit(), f"USER {user}: not numeric"
    return int(uid), int(gid)


def healthcheck_python(args: list[str]) -> str:
    """The `python -c` program of a healthcheck (Dockerfile or compose)."""
    assert args[:2] == ["python", "-c"], args
    return args[2]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(program: str, url: str) -> int:
    env = {**os.environ, "HEALTHCHECK_URL": url}
    return subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, timeout=30, check=False
    ).returncode


def test_healthcheck_commands_pass_on_200_and_fail_otherwise(health_server: str) -> None:
    (instruction,) = [i for i in dockerfile(DOCKERFILE) if i.keyword == "HEALTHCHECK"]
    cmd = instruction.args.split(" CMD ", 1)[1]
    programs = [
        healthcheck_python(json.loads(cmd)),
        healthcheck_python(compose_services()["gateway"]["healthcheck"]["test"][1:]),
    ]
    for program in programs:
        assert run_healthcheck(program, f"{health_server}/ok") == 0
        assert run_healthcheck(program, f"{health_server}/down") != 0
        closed = f"http://127.0.0.1:{free_port()}/ok"
        assert run_healthcheck(program, closed) != 0


# ---------------------------------------------------------------------------------------
# docker-compose.yml


def compose_services() -> dict[str, dict[str, Any]]:
    return cast(dict[str, dict[str, Any]], load_yaml(COMPOSE_FILE)["services"])


def compose_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> source (a host path relative to deploy/, or a volume name)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def compose_source(source: str) -> Path:
    return (DEPLOY / source).resolve()


def container_port(mapping: str) -> int:
    return int(str(mapping).split(":")[-1].split("/")[0])


def compose_gateway_config() -> Config:
    gateway = compose_services()["gateway"]
    source = compose_mounts(gateway)["/etc/lrs-gateway/config.yaml"]
    environ = {key: str(value) for key, value in gateway["environment"].items()}
    return load_config(compose_source(source), environ)


def ralph_port() -> int:
    (cmd,) = [i for i in dockerfile(DEPLOY / "compose" / "ralph.Dockerfile") if i.keyword == "CMD"]
    return int(cmd.words()[-1])


def test_compose_builds_mounts_and_images_exist() -> None:
    document = load_yaml(COMPOSE_FILE)
    named_volumes = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        build = service.get("build")
        if build is not None:
            context = compose_source(build["context"])
            assert context.is_dir(), f"{name}: build context {context}"
            dockerfile_path = context / build["dockerfile"]
            assert dockerfile_path.is_file(), f"{name}: {dockerfile_path}"
            check_context_copies(dockerfile_path, context)
            images = [i.words()[0] for i in dockerfile(dockerfile_path) if i.keyword == "FROM"]
        else:
            images = [service["image"]]
        for image in images:
            tag = image.rpartition(":")[2] if ":" in image else ""
            assert tag not in ("", "latest"), f"{name}: image {image} is not pinned"
        for target, source in compose_mounts(service).items():
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith((".", "/")):
                assert compose_source(source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in named_volumes, f"{name}: volume {source} not declared"


def test_compose_ralph_is_the_version_the_tests_run() -> None:
    (image,) = [
        i.words()[0]
        for i in dockerfile(DEPLOY / "compose" / "ralph.Dockerfile")
        if i.keyword == "FROM"
    ]
    requirements = (REPO / "tests" / "realparts" / "requirements-ralph.txt").read_text()
    (pinned,) = re.findall(r"^ralph-malph\S*==(\S+)", requirements, flags=re.M)
    assert image == f"fundocker/ralph:{pinned}"


def test_compose_gateway_config_loads_and_matches_the_stack() -> None:
    services = compose_services()
    gateway = services["gateway"]
    config = compose_gateway_config()
    assert config.server.host == ALL_INTERFACES
    assert [container_port(p) for p in gateway["ports"]] == [config.server.port]
    health = urlsplit(gateway["environment"]["HEALTHCHECK_URL"])
    assert health.port == config.server.port
    assert health.path in (LIVENESS, READINESS)
    grace = gateway["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > config.server.shutdown_timeout
    mounts = compose_mounts(gateway)
    assert mounts[config.data_dir] in set(load_yaml(COMPOSE_FILE)["volumes"])
    # The credentials file, as the gateway resolves it inside the container, is mounted there
    # from the file the same relative path names next to the config in the repository.
    credentials = config.auth.basic.credentials_file
    in_container = PurePosixPath("/etc/lrs-gateway", credentials)
    assert compose_source(mounts[str(in_container)]) == config.resolve_path(credentials).resolve()
    ralph = ralph_port()
    storage = urlsplit(config.storage.url)
    assert (storage.hostname, storage.port) == ("ralph-storage", ralph)
    assert "ralph-storage" in services
    assert "ralph-analytics" in services
    assert set(gateway["depends_on"]) == {"ralph-storage"}
    (target,) = config.forwardings
    assert target.is_active
    url = urlsplit(target.url)
    assert (url.hostname, url.port, url.path) == ("ralph-analytics", ralph, "/xAPI/statements")
    for name in ("ralph-storage", "ralph-analytics"):
        assert f"127.0.0.1:{ralph}/__heartbeat__" in " ".join(services[name]["healthcheck"]["test"])


def ralph_credentials(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    auth_file = service["environment"]["RALPH_AUTH_FILE"]
    path = compose_source(compose_mounts(service)[auth_file])
    return cast(list[dict[str, Any]], json.loads(path.read_text(encoding="utf-8")))


def test_compose_passwords_match_the_ralph_credentials() -> None:
    services = compose_services()
    config = compose_gateway_config()
    (target,) = config.forwardings
    pairs = [
        ("ralph-storage", config.storage.basic_username, config.storage.basic_password),
        ("ralph-analytics", target.basic_username, target.basic_password),
    ]
    for service, username, password in pairs:
        assert username is not None, service
        assert password is not None, service
        (entry,) = [e for e in ralph_credentials(services[service]) if e["username"] == username]
        assert bcrypt.checkpw(password.reveal().encode(), entry["hash"].encode()), service
        assert "all" in entry["scopes"], f"{service}: Ralph would replace our authority"
    parsed = parse_credentials(
        config.resolve_path(config.auth.basic.credentials_file).read_text(encoding="utf-8"),
        account_homepage=config.auth.basic.account_homepage,
        scope_prefix=config.auth.scope_prefix,
    )
    assert "demo" in parsed.users
    assert not parsed.warnings
    compose_text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "user demo, password demo-password" in compose_text
    demo_hash = json.loads(config.resolve_path("auth.json").read_text())[0]["hash"]
    assert bcrypt.checkpw(b"demo-password", demo_hash.encode())


def test_compose_prometheus_and_grafana_wiring() -> None:
    services = compose_services()
    config = compose_gateway_config()
    prometheus = services["prometheus"]
    prometheus_mounts = compose_mounts(prometheus)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_in_container = PurePosixPath(config_flag.partition("=")[2])
    assert compose_source(prometheus_mounts[str(config_in_container)]) == PROMETHEUS_CONFIG
    scrape = load_yaml(PROMETHEUS_CONFIG)
    for rule_file in scrape["rule_files"]:
        mounted = prometheus_mounts[str(config_in_container.parent / rule_file)]
        assert compose_source(mounted) == PROMETHEUS_CONFIG.parent / rule_file
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "lrs-gateway"]
    assert job["metrics_path"] == config.metrics.path
    (target,) = job["static_configs"][0]["targets"]
    host, _, port = target.partition(":")
    assert host in services
    assert int(port) == config.server.port
    assert 'up{job="lrs-gateway"}' in RULES.read_text(encoding="utf-8")

    grafana = services["grafana"]
    grafana_mounts = compose_mounts(grafana)
    (datasource,) = load_yaml(
        DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    )["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert url.port in [container_port(p) for p in prometheus["ports"]]
    (provider,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "lrs-gateway.yml")[
        "providers"
    ]
    dashboards = [
        target for target, source in grafana_mounts.items() if compose_source(source) == DASHBOARD
    ]
    assert dashboards
    assert PurePosixPath(dashboards[0]).parent == PurePosixPath(provider["options"]["path"])
    for sub in ("datasources", "dashboards"):
        source = grafana_mounts[f"/etc/grafana/provisioning/{sub}"]
        assert compose_source(source) == DEPLOY / "grafana" / "provisioning" / sub


# ---------------------------------------------------------------------------------------
# Kubernetes


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    objects = {}
    for name in kustomization["resources"]:
        for doc in load_yaml_docs(KUBERNETES / name):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} twice"
            objects[key] = doc
    return objects


def gateway_container(statefulset: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return cast(dict[str, Any], container)


def k8s_environ(container: Mapping[str, Any], secret: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment, secretKeyRefs resolved against the Secret's stringData."""
    environ = {}
    for item in container.get("env", []):
        if "value" in item:
            environ[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], item["name"]
        data = secret["stringData"]
        if ref["key"] in data:
            environ[item["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"{item['name']}: key {ref['key']} not in the Secret"
    return environ


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(KUBERNETES / "kustomization.yaml")["resources"])
    present = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    objects = k8s_objects()
    kinds = {kind for kind, _ in objects}
    assert kinds >= {
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
    }


def k8s_config(tmp_path: Path) -> tuple[Config, dict[str, Any]]:
    objects = k8s_objects()
    statefulset = objects[("StatefulSet", "lrs-gateway")]
    container = gateway_container(statefulset)
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    config_arg = container["args"][container["args"].index("--config") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_arg]
    configmap = objects[("ConfigMap", volumes[mount["name"]]["configMap"]["name"])]
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"][mount["subPath"]])
    secret = objects[("Secret", "lrs-gateway")]
    return load_config(path, k8s_environ(container, secret)), statefulset


def test_k8s_configmap_config_loads_with_the_manifests_environment(tmp_path: Path) -> None:
    config, statefulset = k8s_config(tmp_path)
    assert config.server.host == ALL_INTERFACES
    assert config.storage.basic_password is not None  # from the Secret, not the YAML
    (target,) = config.forwardings  # LRS_GATEWAY_XAPI_FORWARDINGS
    assert not target.is_active  # the placeholder stays harmless
    container = gateway_container(statefulset)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    # The credentials file is in the mounted Secret, and parses.
    credentials = PurePosixPath(config.auth.basic.credentials_file)
    secret_mount = mounts[str(credentials.parent)]
    secret_volume = volumes[secret_mount["name"]]["secret"]
    assert credentials.name in [item["path"] for item in secret_volume["items"]]
    secret = k8s_objects()[("Secret", secret_volume["secretName"])]
    (key,) = [i["key"] for i in secret_volume["items"] if i["path"] == credentials.name]
    parse_credentials(
        secret["stringData"][key], account_homepage="https://example.org", scope_prefix=""
    )
    # data_dir is on the per-replica claim.
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts[config.data_dir]["name"] in claims


def test_k8s_probes_and_ports_match_the_gateway(tmp_path: Path) -> None:
    config, statefulset = k8s_config(tmp_path)
    container = gateway_container(statefulset)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [config.server.port]

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert probe("livenessProbe") == (LIVENESS, config.server.port)
    assert probe("readinessProbe") == (READINESS, config.server.port)
    assert probe("startupProbe") == (LIVENESS, config.server.port)
    spec = statefulset["spec"]["template"]["spec"]
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > config.server.shutdown_timeout + int(pause[1])

    objects = k8s_objects()
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = {name: obj for (kind, name), obj in objects.items() if kind == "Service"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    monitor = objects[("ServiceMonitor", "lrs-gateway")]
    selected = [
        name
        for name, service in services.items()
        if monitor["spec"]["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items()
    ]
    assert selected == ["lrs-gateway"], "the ServiceMonitor must select one Service (job label)"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in services["lrs-gateway"]["spec"]["ports"]]
    assert endpoint["path"] == config.metrics.path
    pdb = objects[("PodDisruptionBudget", "lrs-gateway")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_k8s_pods_run_unprivileged_with_resources() -> None:
    statefulset = k8s_objects()[("StatefulSet", "lrs-gateway")]
    spec = statefulset["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    container = gateway_container(statefulset)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # The image's user is the one the pod runs as (files in the image belong to it).
    context = spec["securityContext"]
    assert image_user() == (context["runAsUser"], context["runAsGroup"])
    images = {i["name"] for i in load_yaml(KUBERNETES / "kustomization.yaml")["images"]}
    assert container["image"] in images


def test_k8s_autoscaler_respects_the_per_replica_outbox() -> None:
    objects = k8s_objects()
    statefulset = objects[("StatefulSet", "lrs-gateway")]
    hpa = objects[("HorizontalPodAutoscaler", "lrs-gateway")]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("StatefulSet", statefulset["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Scaling down would strand a replica's undelivered statements on its volume.
    assert hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"] == "Disabled"
    assert "replicas" not in statefulset["spec"], "the autoscaler owns the replica count"
    retention = statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}


# ---------------------------------------------------------------------------------------
# systemd


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read_string(SYSTEMD_UNIT.read_text(encoding="utf-8"))
    service = unit["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert Path(exec_start[0]).name == "lrs-gateway"
    assert exec_start[1] == "serve"
    config_path = exec_start[exec_start.index("--config") + 1]
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    stop = service["TimeoutStopSec"]
    assert stop.endswith("s")
    assert float(stop[:-1]) > ServerConfig().shutdown_timeout
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    # The config the unit's header says to install keeps data_dir in the StateDirectory.
    image_config = load_config(IMAGE_CONFIG, IMAGE_ENV)
    assert image_config.data_dir == f"/var/lib/{service['StateDirectory']}"
    assert f"deploy/docker/config.yaml {config_path}" in SYSTEMD_UNIT.read_text()
    sysusers = (DEPLOY / "systemd" / "lrs-gateway.sysusers").read_text().splitlines()
    (entry,) = [line.split() for line in sysusers if line.startswith("u ")]
    assert entry[1] == service["User"]
