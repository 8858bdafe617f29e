"""deploy/: every file parses, the pieces agree with each other and with the gateway.

The alert rules are checked and unit-tested with the real `promtool` (Debian package
`prometheus`, installed by deploy/bootstrap.sh); without it these tests skip, or fail under
CI=true. Images are not pulled or built here (no Docker engine in CI): what is checked is what
can be read from the files. Both kustomizations are also built with kubectl's kustomize when it
is installed, and compared with what these tests read.
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
COMPOSE_POSTGRES_FILE = DEPLOY / "docker-compose.postgres.yml"  # replicas on PostgreSQL + Redis
COMPOSE_FILES = (COMPOSE_FILE, COMPOSE_POSTGRES_FILE)
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_POSTGRES_CONFIG = DEPLOY / "prometheus" / "prometheus-postgres.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_POSTGRESQL = DEPLOY / "kubernetes-postgresql"  # a Deployment, on top of KUBERNETES
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
SCHEMES = frozenset({"basic", "oidc", "callback", "token", "bearer", "oauth", "none", "other"})
AUTH_RESULTS = frozenset({"ok", "bad_credentials", "forbidden", "error"})
CACHE_RESULTS = frozenset({"hit", "miss"})
OUTCOMES = frozenset({"2xx", "3xx", "4xx", "5xx", "timeout", "error"})
FREE: frozenset[str] = frozenset()  # a label whose values are not a fixed set


@dataclass(frozen=True)
class Family:
    kind: str
    labels: Mapping[str, frozenset[str]]


def _forwarding(kind: str) -> Family:
    """Per process: what this replica's forwarding workers see."""
    return Family(kind, {"target": FREE})


def _outbox(kind: str) -> Family:
    """Read from an outbox, labelled with its id: one per replica with SQLite, while with
    PostgreSQL every replica reports the one shared outbox's figures under the same id."""
    return Family(kind, {"target": FREE, "outbox": FREE})


METRICS: dict[str, Family] = {
    "lrs_gateway_requests": Family(
        COUNTER,
        {"route": ROUTES, "method": METHODS, "status_class": STATUS_CLASSES, "tenant": FREE},
    ),
    "lrs_gateway_request_duration_seconds": Family(HISTOGRAM, {"route": ROUTES, "method": METHODS}),
    "lrs_gateway_requests_in_flight": Family(GAUGE, {}),
    "lrs_gateway_auth_attempts": Family(COUNTER, {"scheme": SCHEMES, "result": AUTH_RESULTS}),
    "lrs_gateway_auth_cache_lookups": Family(COUNTER, {"scheme": SCHEMES, "result": CACHE_RESULTS}),
    "lrs_gateway_bcrypt_duration_seconds": Family(HISTOGRAM, {}),
    "lrs_gateway_upstream_requests": Family(COUNTER, {"target": FREE, "outcome": OUTCOMES}),
    "lrs_gateway_upstream_duration_seconds": Family(HISTOGRAM, {"target": FREE}),
    "lrs_gateway_statements_accepted": Family(COUNTER, {"tenant": FREE}),
    "lrs_gateway_forwarding_target_up": _forwarding(GAUGE),
    "lrs_gateway_forwarding_backlog": _outbox(GAUGE),
    "lrs_gateway_forwarding_lag_seconds": _outbox(GAUGE),
    "lrs_gateway_forwarding_dead_letters": _outbox(GAUGE),
    "lrs_gateway_forwarding_delivered": _outbox(COUNTER),
    "lrs_gateway_forwarding_retried": _outbox(COUNTER),
    "lrs_gateway_forwarding_dead_lettered": _outbox(COUNTER),
    "lrs_gateway_forwarding_filtered": _outbox(COUNTER),
    "lrs_gateway_forwarding_signed_skipped": _outbox(COUNTER),
    "lrs_gateway_forwarding_signature_stripped": _outbox(COUNTER),
    "lrs_gateway_forwarding_backfilled": _outbox(COUNTER),
    "lrs_gateway_forwarding_backfill_progress": _outbox(GAUGE),
    "lrs_gateway_forwarding_backfill_running": _outbox(GAUGE),
    "lrs_gateway_forwarding_failed": _forwarding(COUNTER),
    "lrs_gateway_jwks_refreshes": Family(COUNTER, {}),
    "lrs_gateway_shared_limits_up": Family(GAUGE, {}),
    "lrs_gateway_shared_limits_fallbacks": Family(COUNTER, {}),
    "lrs_gateway_ready": Family(GAUGE, {}),
    "lrs_gateway_build_info": Family(GAUGE, {"version": FREE}),
}
OUTBOX_FAMILIES = frozenset(name for name, f in METRICS.items() if "outbox" in f.labels)
# Outbox gauges shown per target as the largest over outboxes, not the sum: the lag (the
# oldest statement), and a backfill's progress and running (a backfill lives in one outbox).
MAXIMA = frozenset(
    {
        "lrs_gateway_forwarding_lag_seconds",
        "lrs_gateway_forwarding_backfill_progress",
        "lrs_gateway_forwarding_backfill_running",
    }
)
OUTBOX_ID = re.compile(r"[0-9a-f]{12}")  # random at the outbox's creation, stored in it
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


@pytest.mark.parametrize(
    "config", [PROMETHEUS_CONFIG, PROMETHEUS_POSTGRES_CONFIG], ids=lambda path: path.name
)
def test_promtool_check_prometheus_config(promtool: str, config: Path) -> None:
    run_promtool(promtool, "check", "config", str(config))


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
        "LrsGatewayForwardingBackfillInterrupted",
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
        "lrs_gateway_forwarding_backfill_progress) < 1",
        "lrs_gateway_forwarding_backfill_running) == 0",
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
# Outbox figures: counted once per outbox, whichever the number of replicas reporting it.
#
# Families read from an outbox carry its id (label `outbox`). With SQLite every replica has
# an outbox of its own; with PostgreSQL every replica reports the one shared outbox's
# figures under the same id. Summing over replicas would count a shared outbox N times, and
# an alert per replica would fire N times: rules and panels take the max per outbox first.

_AGGREGATED = re.compile(r"(\w+)\s+by\s*\(([^)]*)\)\s*\(\s*(?:(?:rate|irate|increase)\s*\(\s*)?$")


def outbox_aggregation_problems(expr: str) -> list[str]:
    """Uses of an outbox family that are not reduced to one series per outbox first."""
    problems = []
    for match in _NAME.finditer(expr):
        family = family_of(match[0])
        if family not in OUTBOX_FAMILIES:
            continue
        around = _AGGREGATED.search(expr[: match.start()])
        if around is None:
            problems.append(f"{match[0]}: not inside max by (..., outbox) (...)")
            continue
        aggregation = around[1]
        labels = {label.strip() for label in around[2].split(",")}
        if "instance" in labels:
            problems.append(f"{match[0]}: {aggregation} by instance keeps one series per replica")
        elif aggregation in ("max", "min", "count") and "outbox" in labels:
            continue  # one series per outbox
        elif aggregation == "max" and family == "lrs_gateway_forwarding_lag_seconds":
            continue  # the oldest of all outboxes: reading one several times changes nothing
        else:
            problems.append(f"{match[0]}: {aggregation} by ({around[2]}) over replicas")
    return problems


def test_outbox_aggregation_check_finds_double_counting() -> None:
    good = "sum by (target) (max by (target, outbox) (lrs_gateway_forwarding_backlog{{{}}}))"
    assert not outbox_aggregation_problems(good.format('job=~"$job"'))
    assert not outbox_aggregation_problems(
        "sum by (target) (max by (target, outbox) (rate(lrs_gateway_forwarding_retried_total[5m])))"
    )
    assert not outbox_aggregation_problems(
        "max by (job, target, outbox) (lrs_gateway_forwarding_dead_letters) > 0"
    )
    assert not outbox_aggregation_problems("max by (target) (lrs_gateway_forwarding_lag_seconds)")
    for bad in (
        "sum by (target) (lrs_gateway_forwarding_backlog)",
        "lrs_gateway_forwarding_lag_seconds > 300",
        "sum by (target) (rate(lrs_gateway_forwarding_delivered_total[5m]))",
        "max by (target) (lrs_gateway_forwarding_dead_letters)",
        "max by (target, outbox, instance) (lrs_gateway_forwarding_backlog)",
    ):
        assert outbox_aggregation_problems(bad), bad
    # Per-process families are not outbox figures.
    assert not outbox_aggregation_problems(
        "sum by (target) (rate(lrs_gateway_forwarding_failed_total[5m]))"
    )


def test_rules_and_dashboard_count_each_outbox_once() -> None:
    problems = [
        f"{problem}  in  {expr.strip()[:100]}"
        for expr in rule_exprs() + dashboard_exprs()
        for problem in outbox_aggregation_problems(expr)
    ]
    assert not problems, "\n".join(problems)


def test_alert_annotations_name_only_labels_the_alert_keeps() -> None:
    """After `by (...)`, other labels (instance, for the outbox alerts) are gone."""
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            groupings = _GROUPING.findall(rule["expr"])
            if not groupings:
                continue
            kept = set.intersection(
                *({label.strip() for label in g.split(",") if label.strip()} for g in groupings)
            )
            texts = " ".join(rule["annotations"].values())
            used = set(re.findall(r"\$labels\.(\w+)", texts))
            assert used <= kept, f"{rule['alert']}: {sorted(used - kept)} not in by ({kept})"


def outbox_alerts() -> set[str]:
    return {
        rule["alert"]
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
        if {family_of(name) for name in metric_names(rule["expr"])} & OUTBOX_FAMILIES
    }


def series_labels(series: str) -> tuple[str, dict[str, str]]:
    """A promtool input series: its name and labels."""
    name, _, rest = series.partition("{")
    return name.strip(), {label: value for label, _, value in _MATCHER.findall(rest)}


def test_rule_unit_tests_show_one_alert_per_outbox_not_per_replica() -> None:
    """Replicas sharing an outbox raise one alert; replicas with their own, one each."""
    assert {"LrsGatewayForwardingLag", "LrsGatewayForwardingDeadLetters"} <= outbox_alerts()
    shared: set[str] = set()  # alerts a unit test shows once for an outbox several replicas report
    separate: set[str] = set()  # alerts a unit test shows for two outboxes of one target at once
    for test in load_yaml(RULES_TEST)["tests"]:
        reporters: dict[str, set[str]] = {}  # outbox -> instances reporting it
        for item in test["input_series"]:
            name, labels = series_labels(item["series"])
            if family_of(name) in OUTBOX_FAMILIES:
                outbox = labels.get("outbox", "")
                assert OUTBOX_ID.fullmatch(outbox), f"{test['name']}: {item['series']}"
                reporters.setdefault(outbox, set()).add(labels["instance"])
            elif family_of(name) is not None:
                assert "outbox" not in labels, f"{test['name']}: {item['series']}"
        for case in test.get("alert_rule_test", []):
            if case["alertname"] not in outbox_alerts():
                continue
            alerts = [alert["exp_labels"] for alert in case.get("exp_alerts") or []]
            for labels in alerts:
                assert "instance" not in labels, f"{test['name']}: {case['alertname']}"
                assert OUTBOX_ID.fullmatch(str(labels["outbox"])), labels
            keys = [(labels["target"], str(labels["outbox"])) for labels in alerts]
            assert len(keys) == len(set(keys)), f"{test['name']}: an outbox alerts twice"
            if any(len(reporters.get(outbox, set())) > 1 for _, outbox in keys):
                shared.add(case["alertname"])
            targets = [target for target, _ in keys]
            if len(targets) > len(set(targets)):
                separate.add(case["alertname"])
    for alert in ("LrsGatewayForwardingLag", "LrsGatewayForwardingDeadLetters"):
        assert alert in shared, f"no unit test: {alert} once for replicas sharing an outbox"
        assert alert in separate, f"no unit test: {alert} per outbox for separate outboxes"
    # A backfill lives in one outbox: what matters is that replicas sharing it alert once.
    assert "LrsGatewayForwardingBackfillInterrupted" in outbox_alerts()
    assert "LrsGatewayForwardingBackfillInterrupted" in shared, "no unit test: a shared backfill"


def test_dashboard_counts_each_outbox_once(promtool: str, tmp_path: Path) -> None:
    """The forwarding panels, evaluated by promtool: target analytics has one outbox that
    three replicas report (PostgreSQL), target archive two outboxes of one replica each
    (SQLite)."""
    shared, first, second = "5d2b8e41a0c7", "a1b2c3d4e5f6", "0f1e2d3c4b5a"
    reports = [  # (instance, target, outbox, gauge value, counter increase a minute)
        ("gateway-1:8080", "analytics", shared, 100, 60),
        ("gateway-2:8080", "analytics", shared, 100, 60),
        ("gateway-3:8080", "analytics", shared, 100, 60),
        ("lrs-gateway-0:8080", "archive", first, 10, 60),
        ("lrs-gateway-1:8080", "archive", second, 20, 120),
    ]
    input_series = []
    for family in sorted(OUTBOX_FAMILIES):
        kind = METRICS[family].kind
        series = family + ("_total" if kind == COUNTER else "")
        for instance, target, outbox, value, per_minute in reports:
            labels = (
                f'job="lrs-gateway", instance="{instance}", target="{target}", outbox="{outbox}"'
            )
            values = f"0+{per_minute}x20" if kind == COUNTER else f"{value}x20"
            input_series.append({"series": f"{series}{{{labels}}}", "values": values})
    # Per target: backlog and dead letters add up over outboxes (each once), lag and the
    # backfill's figures are the largest, and the counters' rates add up over outboxes
    # (each once).
    expected = {
        GAUGE: {"analytics": 100.0, "archive": 30.0},
        COUNTER: {"analytics": 1.0, "archive": 3.0},
        "max": {"analytics": 100.0, "archive": 20.0},
    }
    cases = []
    for family in sorted(OUTBOX_FAMILIES):
        panels = [
            expr
            for expr in dashboard_exprs()
            if family in metric_names(expr) or family + "_total" in metric_names(expr)
        ]
        per_target = [expr for expr in panels if re.match(r"\s*\w+ by \(target\)", expr)]
        assert per_target, f"no dashboard panel shows {family} by target"
        kind = "max" if family in MAXIMA else METRICS[family].kind
        for expr in per_target:
            expr = re.sub(r"\$__(?:rate_interval|interval|range)\b", "5m", expr)
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
            samples = [
                {"labels": f'{{target="{target}"}}', "value": value}
                for target, value in expected[kind].items()
            ]
            cases.append({"expr": expr, "eval_time": "10m", "exp_samples": samples})
    outboxes = [e for e in dashboard_exprs() if re.search(r"count by \(outbox\)", e)]
    assert outboxes, "no dashboard panel shows how many outboxes report"
    for expr in outboxes:
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
        cases.append(
            {"expr": expr, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 3}]}
        )
    (tmp_path / "empty.yml").write_text("groups: []\n")
    test_file = tmp_path / "dashboard_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["empty.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {"interval": "1m", "input_series": input_series, "promql_expr_test": cases}
                ],
            }
        )
    )
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(test_file))


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
    programs = [healthcheck_python(json.loads(cmd))]
    for path in COMPOSE_FILES:
        for service in compose_gateways(path).values():
            programs.append(healthcheck_python(service["healthcheck"]["test"][1:]))
    for program in set(programs):
        assert run_healthcheck(program, f"{health_server}/ok") == 0
        assert run_healthcheck(program, f"{health_server}/down") != 0
        closed = f"http://127.0.0.1:{free_port()}/ok"
        assert run_healthcheck(program, closed) != 0


# ---------------------------------------------------------------------------------------
# docker-compose.yml, and docker-compose.postgres.yml (three replicas, PostgreSQL, Redis)

COMPOSE_IDS = [path.name for path in COMPOSE_FILES]


def compose_services(path: Path = COMPOSE_FILE) -> dict[str, dict[str, Any]]:
    return cast(dict[str, dict[str, Any]], load_yaml(path)["services"])


def compose_gateways(path: Path = COMPOSE_FILE) -> dict[str, dict[str, Any]]:
    """The services built from deploy/Dockerfile: the gateway replicas."""
    return {
        name: service
        for name, service in compose_services(path).items()
        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
    }


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


def host_port(mapping: str) -> tuple[str, int]:
    """(address, port) a `ports` entry publishes on the host."""
    address, port, _ = str(mapping).rsplit(":", 2)
    return address, int(port)


def compose_gateway_config(path: Path = COMPOSE_FILE, name: str = "gateway") -> Config:
    gateway = compose_services(path)[name]
    source = compose_mounts(gateway)["/etc/lrs-gateway/config.yaml"]
    environ = {key: str(value) for key, value in gateway["environment"].items()}
    return load_config(compose_source(source), environ)


def ralph_port() -> int:
    (cmd,) = [i for i in dockerfile(DEPLOY / "compose" / "ralph.Dockerfile") if i.keyword == "CMD"]
    return int(cmd.words()[-1])


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=COMPOSE_IDS)
def test_compose_builds_mounts_and_images_exist(path: Path) -> None:
    document = load_yaml(path)
    named_volumes = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        build = service.get("build")
        if build is not None:
            context = compose_source(build["context"])
            assert context.is_dir(), f"{name}: build context {context}"
            dockerfile_path = context / build["dockerfile"]
            assert dockerfile_path.is_file(), f"{name}: {dockerfile_path}"
            check_context_copies(dockerfile_path, context)
            instructions = dockerfile(dockerfile_path)
            images = [i.words()[0] for i in instructions if i.keyword == "FROM"]
            declared = {
                i.args.partition("=")[0].strip() for i in instructions if i.keyword == "ARG"
            }
            assert set(build.get("args") or {}) <= declared, f"{name}: build args"
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
        for mapping in service.get("ports", []):
            assert host_port(mapping)[0] == "127.0.0.1", f"{name}: {mapping} (a demo)"


def test_compose_stacks_can_run_side_by_side() -> None:
    """Their own project names (volumes, networks) and host ports."""
    names = [load_yaml(path)["name"] for path in COMPOSE_FILES]
    assert len(names) == len(set(names))
    published = [
        host_port(mapping)[1]
        for path in COMPOSE_FILES
        for service in compose_services(path).values()
        for mapping in service.get("ports", [])
    ]
    assert len(published) == len(set(published)), published


def test_compose_ralph_is_the_version_the_tests_run() -> None:
    (image,) = [
        i.words()[0]
        for i in dockerfile(DEPLOY / "compose" / "ralph.Dockerfile")
        if i.keyword == "FROM"
    ]
    requirements = (REPO / "tests" / "realparts" / "requirements-ralph.txt").read_text()
    (pinned,) = re.findall(r"^ralph-malph\S*==(\S+)", requirements, flags=re.M)
    assert image == f"fundocker/ralph:{pinned}"
    for path in COMPOSE_FILES:
        services = compose_services(path)
        for name in ("ralph-storage", "ralph-analytics"):
            assert services[name]["build"]["dockerfile"] == "deploy/compose/ralph.Dockerfile"


COMPOSE_GATEWAYS = [(path, name) for path in COMPOSE_FILES for name in compose_gateways(path)]


@pytest.mark.parametrize(
    ("path", "name"), COMPOSE_GATEWAYS, ids=[f"{p.name}:{n}" for p, n in COMPOSE_GATEWAYS]
)
def test_compose_gateway_config_loads_and_matches_the_stack(path: Path, name: str) -> None:
    services = compose_services(path)
    gateway = services[name]
    config = compose_gateway_config(path, name)
    assert config.server.host == ALL_INTERFACES
    assert [container_port(p) for p in gateway["ports"]] == [config.server.port]
    health = urlsplit(gateway["environment"]["HEALTHCHECK_URL"])
    assert health.port == config.server.port
    assert health.path in (LIVENESS, READINESS)
    grace = gateway["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > config.server.shutdown_timeout
    mounts = compose_mounts(gateway)
    if config.store.url is None:  # SQLite: the outbox on a volume of its own
        assert mounts[config.data_dir] in set(load_yaml(path)["volumes"])
    else:  # PostgreSQL: nothing durable in data_dir
        assert config.data_dir not in mounts
        assert config.data_dir in gateway["tmpfs"]
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
    # Started once what it needs answers: storage, and the store and Redis when it uses them.
    needed = {"ralph-storage"}
    for service_url in (config.store.url, config.limits.shared_url):
        if service_url is not None:
            needed.add(str(urlsplit(service_url).hostname))
    assert set(gateway["depends_on"]) == needed
    if isinstance(gateway["depends_on"], dict):
        for dependency, condition in gateway["depends_on"].items():
            assert condition == {"condition": "service_healthy"}, dependency
            assert services[dependency]["healthcheck"]["test"], dependency
    (target,) = config.forwardings
    assert target.is_active
    url = urlsplit(target.url)
    assert (url.hostname, url.port, url.path) == ("ralph-analytics", ralph, "/xAPI/statements")
    for ralph_name in ("ralph-storage", "ralph-analytics"):
        test = " ".join(services[ralph_name]["healthcheck"]["test"])
        assert f"127.0.0.1:{ralph}/__heartbeat__" in test


def test_compose_postgres_replicas_share_postgresql_and_redis() -> None:
    services = compose_services(COMPOSE_POSTGRES_FILE)
    gateways = compose_gateways(COMPOSE_POSTGRES_FILE)
    assert len(gateways) == 3
    # The same image, config and environment for each; only the published port differs.
    shapes = [{k: v for k, v in s.items() if k != "ports"} for s in gateways.values()]
    assert all(shape == shapes[0] for shape in shapes)
    ports = [host_port(p)[1] for s in gateways.values() for p in s["ports"]]
    assert len(ports) == len(set(ports)) == len(gateways)
    # The image has the drivers.
    extras = next(iter(gateways.values()))["build"]["args"]["EXTRAS"].split(",")
    assert {"postgresql", "redis"} <= set(extras)
    configs = [compose_gateway_config(COMPOSE_POSTGRES_FILE, name) for name in gateways]
    assert all(config == configs[0] for config in configs)
    config = configs[0]
    # PostgreSQL: the URL names the compose service, its user and database; the password
    # from the environment is the one the database was made with.
    assert config.store.url is not None
    assert config.store.url.startswith("postgresql://")
    store = urlsplit(config.store.url)
    assert store.password is None, "the password comes from LRS_GATEWAY__STORE__PASSWORD"
    postgres = services[str(store.hostname)]
    image, _, tag = postgres["image"].partition(":")
    assert image == "postgres"
    assert int(tag.split(".")[0]) >= 15, "the store needs PostgreSQL 15 or later"
    environment = postgres["environment"]
    assert store.port == 5432
    assert store.username == environment["POSTGRES_USER"]
    assert store.path == "/" + environment["POSTGRES_DB"]
    assert config.store.password is not None
    assert config.store.password.reveal() == environment["POSTGRES_PASSWORD"]
    assert (
        compose_mounts(postgres)["/var/lib/postgresql/data"]
        in load_yaml(COMPOSE_POSTGRES_FILE)["volumes"]
    )
    # Redis: the service the URL names, with the password the gateways have.
    assert config.limits.shared_url is not None
    limits = urlsplit(config.limits.shared_url)
    assert limits.scheme == "redis"
    redis = services[str(limits.hostname)]
    assert redis["image"].partition(":")[0] == "redis"
    command = redis["command"]
    password = command[command.index("--requirepass") + 1]
    assert config.limits.shared_password is not None
    assert config.limits.shared_password.reveal() == password
    assert redis["environment"]["REDISCLI_AUTH"] == password  # its healthcheck's
    # Demo passwords, and said so.
    for secret in (password, environment["POSTGRES_PASSWORD"]):
        assert secret.startswith("demo-"), secret
    text = COMPOSE_POSTGRES_FILE.read_text(encoding="utf-8")
    assert "DEMO ONLY: every password here is published" in text
    for line in text.splitlines():
        if environment["POSTGRES_PASSWORD"] in line or password in line:
            assert "DEMO" in line, line
    assert "DEMO ONLY" in (DEPLOY / "compose" / "config-postgres.yaml").read_text()


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=COMPOSE_IDS)
def test_compose_passwords_match_the_ralph_credentials(path: Path) -> None:
    services = compose_services(path)
    config = compose_gateway_config(path, next(iter(compose_gateways(path))))
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
    compose_text = path.read_text(encoding="utf-8")
    assert "user demo, password demo-password" in compose_text
    demo_hash = json.loads(config.resolve_path("auth.json").read_text())[0]["hash"]
    assert bcrypt.checkpw(b"demo-password", demo_hash.encode())


def ralph_credentials(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    auth_file = service["environment"]["RALPH_AUTH_FILE"]
    path = compose_source(compose_mounts(service)[auth_file])
    return cast(list[dict[str, Any]], json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=COMPOSE_IDS)
def test_compose_prometheus_and_grafana_wiring(path: Path) -> None:
    services = compose_services(path)
    gateways = compose_gateways(path)
    config = compose_gateway_config(path, next(iter(gateways)))
    prometheus = services["prometheus"]
    prometheus_mounts = compose_mounts(prometheus)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_in_container = PurePosixPath(config_flag.partition("=")[2])
    scrape_config = compose_source(prometheus_mounts[str(config_in_container)])
    assert scrape_config.parent == PROMETHEUS_CONFIG.parent
    assert scrape_config in (PROMETHEUS_CONFIG, PROMETHEUS_POSTGRES_CONFIG)
    scrape = load_yaml(scrape_config)
    for rule_file in scrape["rule_files"]:
        mounted = prometheus_mounts[str(config_in_container.parent / rule_file)]
        assert compose_source(mounted) == scrape_config.parent / rule_file
    assert RULES.name in scrape["rule_files"]
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "lrs-gateway"]
    assert job["metrics_path"] == config.metrics.path
    (static,) = job["static_configs"]
    targets = [target.partition(":") for target in static["targets"]]
    assert sorted(host for host, _, _ in targets) == sorted(gateways), "every replica, once"
    assert {int(port) for _, _, port in targets} == {config.server.port}
    assert set(prometheus["depends_on"]) == set(gateways)
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
# Kubernetes: kubernetes/ (SQLite, a StatefulSet) and kubernetes-postgresql/ (a Deployment,
# with kubernetes/ as its base).

Objects = dict[tuple[str, str], dict[str, Any]]
STATEFULSET = ("StatefulSet", "lrs-gateway")
DEPLOYMENT = ("Deployment", "lrs-gateway")
K8S_VARIANTS = {
    "sqlite": (KUBERNETES, STATEFULSET),
    "postgresql": (KUBERNETES_POSTGRESQL, DEPLOYMENT),
}
K8S_IDS = sorted(K8S_VARIANTS)
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod", "Job"})


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A strategic merge patch as these manifests use it: maps merge, the rest replaces."""
    out = dict(target)
    for key, value in patch.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = merge_patch(current, value)
        else:
            out[key] = value
    return out


def kustomize(directory: Path) -> Objects:
    """The objects a kustomization makes, as kustomize would, without its `labels` and
    `images`: resources (files, or directories as bases), then `patches` (a `$patch: delete`
    removes its target)."""
    kustomization = load_yaml(directory / "kustomization.yaml")
    objects: Objects = {}
    for entry in kustomization["resources"]:
        path = directory / entry
        docs = list(kustomize(path).values()) if path.is_dir() else load_yaml_docs(path)
        for doc in docs:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} twice"
            objects[key] = doc
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, patch
        (doc,) = load_yaml_docs(directory / patch["path"])  # kustomize 5.5: one per file
        key = (doc["kind"], doc["metadata"]["name"])
        assert key in objects, f"{patch['path']}: nothing to patch: {key}"
        if doc.get("$patch") == "delete":
            del objects[key]
        else:
            objects[key] = merge_patch(objects[key], doc)
    return objects


def k8s_objects() -> Objects:
    return kustomize(KUBERNETES)


def gateway_container(workload: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
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


def test_k8s_postgresql_kustomization_is_the_base_with_a_deployment() -> None:
    kustomization = load_yaml(KUBERNETES_POSTGRESQL / "kustomization.yaml")
    resources = kustomization["resources"]
    bases = [entry for entry in resources if (KUBERNETES_POSTGRESQL / entry).is_dir()]
    assert [(KUBERNETES_POSTGRESQL / base).resolve() for base in bases] == [KUBERNETES.resolve()]
    # kustomize refuses a base that contains its overlay (a cycle), and files outside the
    # overlay's own directory: a sibling directory, files of its own.
    assert KUBERNETES.resolve() not in KUBERNETES_POSTGRESQL.resolve().parents
    listed = {entry for entry in resources if entry not in bases}
    listed |= {patch["path"] for patch in kustomization["patches"]}
    assert all("/" not in entry for entry in listed), listed
    present = {p.name for p in KUBERNETES_POSTGRESQL.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert kustomization["labels"] == load_yaml(KUBERNETES / "kustomization.yaml")["labels"]
    base, objects = k8s_objects(), kustomize(KUBERNETES_POSTGRESQL)
    assert set(objects) == set(base) - {STATEFULSET, ("Service", "lrs-gateway-headless")} | {
        DEPLOYMENT
    }
    # Stateless replicas, and nothing here runs PostgreSQL or Redis: those are the operator's.
    assert [key for key in objects if key[0] in WORKLOAD_KINDS] == [DEPLOYMENT]
    assert "PersistentVolumeClaim" not in {kind for kind, _ in objects}
    pod = objects[DEPLOYMENT]["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        assert {"configMap", "secret", "emptyDir"} & set(volume), volume["name"]
    assert "volumeClaimTemplates" not in objects[DEPLOYMENT]["spec"]


def workload_config(tmp_path: Path, objects: Objects, workload: Mapping[str, Any]) -> Config:
    """The config the workload's pods load: its ConfigMap, with its environment."""
    container = gateway_container(workload)
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    config_arg = container["args"][container["args"].index("--config") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_arg]
    configmap = objects[("ConfigMap", volumes[mount["name"]]["configMap"]["name"])]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"][mount["subPath"]])
    secret = objects[("Secret", "lrs-gateway")]
    return load_config(path, k8s_environ(container, secret))


def k8s_config(tmp_path: Path) -> tuple[Config, dict[str, Any]]:
    objects = k8s_objects()
    statefulset = objects[STATEFULSET]
    return workload_config(tmp_path, objects, statefulset), statefulset


def test_k8s_configmap_config_loads_with_the_manifests_environment(tmp_path: Path) -> None:
    config, statefulset = k8s_config(tmp_path)
    assert config.server.host == ALL_INTERFACES
    assert config.storage.basic_password is not None  # from the Secret, not the YAML
    (target,) = config.forwardings  # LRS_GATEWAY_XAPI_FORWARDINGS
    assert not target.is_active  # the placeholder stays harmless
    assert config.store.url is None  # SQLite in data_dir
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


def test_k8s_postgresql_config_loads_with_the_manifests_environment(tmp_path: Path) -> None:
    objects = kustomize(KUBERNETES_POSTGRESQL)
    deployment = objects[DEPLOYMENT]
    config = workload_config(tmp_path / "postgresql", objects, deployment)
    sqlite, _ = k8s_config(tmp_path / "sqlite")
    # The SQLite variant's gateway, with the store in PostgreSQL and the limits in Redis.
    for section in ("server", "xapi", "auth", "storage", "forwardings", "metrics", "data_dir"):
        assert getattr(config, section) == getattr(sqlite, section), section
    assert config.store.url is not None
    assert config.store.url.startswith("postgresql://")
    assert urlsplit(config.store.url).password is None, "the password is in the Secret"
    assert config.store.password is not None  # LRS_GATEWAY__STORE__PASSWORD
    assert config.store.migrate == "auto"
    assert config.limits.shared_url is not None
    assert config.limits.shared_url.startswith(("redis://", "rediss://"))
    assert config.limits.shared_password is not None  # LRS_GATEWAY__LIMITS__SHARED_PASSWORD
    container = gateway_container(deployment)
    secret = objects[("Secret", "lrs-gateway")]
    environ = k8s_environ(container, secret)
    for name in ("LRS_GATEWAY__STORE__PASSWORD", "LRS_GATEWAY__LIMITS__SHARED_PASSWORD"):
        assert environ[name] == "CHANGE-ME", name  # placeholders in secret.yaml
    # The base's Secret keys are all still there.
    assert set(k8s_objects()[("Secret", "lrs-gateway")]["stringData"]) < set(secret["stringData"])
    # data_dir is scratch (an emptyDir): nothing durable lives in the pod.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[config.data_dir]["name"]]


def test_k8s_postgresql_deployment_is_the_statefulset_without_a_volume() -> None:
    """Same pod as the SQLite variant (probes, security, resources, mounts), no claim."""
    statefulset = k8s_objects()[STATEFULSET]
    deployment = kustomize(KUBERNETES_POSTGRESQL)[DEPLOYMENT]
    assert deployment["metadata"]["labels"] == statefulset["metadata"]["labels"]
    assert deployment["spec"]["selector"] == statefulset["spec"]["selector"]
    template, base_template = deployment["spec"]["template"], statefulset["spec"]["template"]
    assert template["metadata"] == base_template["metadata"]
    pod, base_pod = template["spec"], base_template["spec"]
    assert set(pod) == set(base_pod)
    for key in set(pod) - {"containers", "volumes"}:
        assert pod[key] == base_pod[key], key
    container, base_container = gateway_container(deployment), gateway_container(statefulset)
    assert set(container) == set(base_container)
    for key in set(container) - {"env"}:
        assert container[key] == base_container[key], key
    names = [item["name"] for item in container["env"]]
    assert names[: len(base_container["env"])] == [item["name"] for item in base_container["env"]]
    for item in base_container["env"]:
        assert item in container["env"], item["name"]
    assert set(names) - {item["name"] for item in base_container["env"]} == {
        "LRS_GATEWAY__STORE__PASSWORD",
        "LRS_GATEWAY__LIMITS__SHARED_PASSWORD",
    }
    # The StatefulSet's volumes, plus an emptyDir where it had its claim.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in base_pod["volumes"]:
        assert volumes[volume["name"]] == volume
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert set(volumes) - {v["name"] for v in base_pod["volumes"]} == claims
    for claim in claims:
        assert "emptyDir" in volumes[claim]
    # Rolled over without losing capacity; the autoscaler owns the count.
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


@pytest.mark.parametrize("variant", K8S_IDS)
def test_k8s_probes_and_ports_match_the_gateway(tmp_path: Path, variant: str) -> None:
    directory, key = K8S_VARIANTS[variant]
    objects = kustomize(directory)
    workload = objects[key]
    config = workload_config(tmp_path, objects, workload)
    container = gateway_container(workload)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [config.server.port]

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert probe("livenessProbe") == (LIVENESS, config.server.port)
    assert probe("readinessProbe") == (READINESS, config.server.port)
    assert probe("startupProbe") == (LIVENESS, config.server.port)
    spec = workload["spec"]["template"]["spec"]
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > config.server.shutdown_timeout + int(pause[1])

    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = {name: obj for (kind, name), obj in objects.items() if kind == "Service"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    if key[0] == "StatefulSet":
        assert services[workload["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    else:
        assert [s for s in services.values() if s["spec"].get("clusterIP") == "None"] == []
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


@pytest.mark.parametrize("variant", K8S_IDS)
def test_k8s_pods_run_unprivileged_with_resources(variant: str) -> None:
    directory, key = K8S_VARIANTS[variant]
    workload = kustomize(directory)[key]
    spec = workload["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    container = gateway_container(workload)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # The image's user is the one the pod runs as (files in the image belong to it).
    context = spec["securityContext"]
    assert image_user() == (context["runAsUser"], context["runAsGroup"])
    images = {i["name"] for i in load_yaml(directory / "kustomization.yaml")["images"]}
    assert container["image"] in images


def test_k8s_autoscaler_respects_the_per_replica_outbox() -> None:
    objects = k8s_objects()
    statefulset = objects[STATEFULSET]
    hpa = objects[("HorizontalPodAutoscaler", "lrs-gateway")]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("StatefulSet", statefulset["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Scaling down would strand a replica's undelivered statements on its volume.
    assert hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"] == "Disabled"
    assert "replicas" not in statefulset["spec"], "the autoscaler owns the replica count"
    retention = statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_k8s_postgresql_autoscaler_scales_the_deployment_both_ways() -> None:
    """Nothing is stranded when a replica goes: its claims' leases run out."""
    objects = kustomize(KUBERNETES_POSTGRESQL)
    hpa = objects[("HorizontalPodAutoscaler", "lrs-gateway")]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", *DEPLOYMENT)
    scale_down = hpa["spec"]["behavior"]["scaleDown"]
    assert scale_down["selectPolicy"] != "Disabled"
    assert scale_down["policies"]
    # A node drain (the PodDisruptionBudget's one at a time) leaves a replica serving.
    pdb = objects[("PodDisruptionBudget", "lrs-gateway")]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.mark.parametrize("variant", K8S_IDS)
def test_kustomize_builds_what_these_tests_read(variant: str) -> None:
    """The real kustomize (kubectl's) agrees with kustomize() above, labels and images set."""
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize is installed: the structure is checked above")
    directory, _ = K8S_VARIANTS[variant]
    done = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    built = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for doc in yaml.safe_load_all(done.stdout)
        if doc is not None
    }
    kustomization = load_yaml(directory / "kustomization.yaml")
    labels = {k: v for entry in kustomization["labels"] for k, v in entry["pairs"].items()}
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    expected = {}
    for key, doc in kustomize(directory).items():
        doc = merge_patch(doc, {"metadata": {"labels": labels}})
        if key[0] in WORKLOAD_KINDS:
            container = gateway_container(doc)
            image = images[container["image"]]
            doc = merge_patch(
                doc,
                {"spec": {"template": {"spec": {"containers": [{**container, "image": image}]}}}},
            )
        expected[key] = doc
    assert set(built) == set(expected)
    for key, doc in expected.items():
        assert built[key] == doc, key


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
