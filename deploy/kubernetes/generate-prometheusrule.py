"""Write deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/rules.yml.

    python deploy/kubernetes/generate-prometheusrule.py           # rewrite the file
    python deploy/kubernetes/generate-prometheusrule.py --check   # exit 1 if it is stale

Needs PyYAML (the gateway's venv has it). tests/test_deploy.py runs the --check.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus" / "rules.yml"
OUTPUT = HERE / "prometheusrule.yaml"
HEADER = """\
# The alerts of deploy/prometheus/rules.yml as a PrometheusRule (Prometheus Operator).
# Generated from that file, which is the one to edit, by generate-prometheusrule.py (next to
# this file); tests/test_deploy.py fails when it is stale. Your Prometheus may select rules
# by a label: add it to the generator.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    """The PrometheusRule manifest for the current rules.yml."""
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "lrs-gateway", "labels": {"app.kubernetes.io/name": "lrs-gateway"}},
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100,
                              allow_unicode=True)


def main(argv: list[str]) -> int:
    """Rewrite the manifest, or with --check say whether it is current."""
    text = render()
    if argv[1:] == ["--check"]:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__)}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
