#!/usr/bin/env bash
# The lrs-gateway benchmarks (issue 8), in one command, on loopback only, ~4-5 minutes:
#
#   bash bench/run.sh                  # all runs, 10 s each after a 2 s warm-up
#   bash bench/run.sh --duration 5     # shorter runs (any bench/bench.py option passes through)
#   bash bench/run.sh --profile        # then profile the gateway's POST path with py-spy
#   bash bench/run.sh --loadgen asyncio  # force the asyncio load generator instead of wrk
#   bash bench/run.sh --no-flood --no-rss --no-lag   # throughput runs only (~2.5 minutes)
#   bash bench/run.sh --rss-statements 1000000       # the issue's 1M statements (~+3 minutes)
#
# Parts: (a)-(i) throughput (--no-batch, --no-token, --no-workers, --no-redis,
# --no-forwarding, --no-postgres skip some; (h)/(i): the outbox in a PostgreSQL of its own,
# 1 and 3 `serve` processes), the
# forwarding lag at sustained load (--no-lag, --lag-duration, --lag-fraction), the bcrypt
# flood (--no-flood, --flood-variants, --flood-connections), memory (--no-rss,
# --rss-statements, --rss-sample-every, --rss-store sqlite|postgresql|both). `.venv/bin/python bench/bench.py --help` lists all.
#
# It makes sure the venv is there (deploy/bootstrap.sh), installs wrk from Debian when it is
# missing and we may (root, apt-get), else falls back to bench/loadgen.py (and says so), then
# runs bench/bench.py: a table on stdout, JSON in bench/results/<commit>-<UTC time>.json.
# With --profile, py-spy is installed with pip into its own venv under ${TMPDIR:-/tmp}
# (never into the project's venv) and its raw stacks are written beside the JSON.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'bench: %s\n' "$*"; }

bash deploy/bootstrap.sh

if ! command -v wrk >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing wrk from Debian"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } \
            >/dev/null 2>&1; then
            say "could not install wrk"
        fi
    fi
fi
if ! command -v wrk >/dev/null 2>&1; then
    say "wrk is not available: falling back to the asyncio load generator (bench/loadgen.py);"
    say "its own ceiling is the direct-to-stub figure (a): read the others against it"
fi

args=("$@")
for arg in "$@"; do
    if [[ "$arg" == "--profile" ]]; then
        spy_venv="${TMPDIR:-/tmp}/lrs-gateway-bench-py-spy"
        if [[ ! -x "$spy_venv/bin/py-spy" ]]; then
            say "installing py-spy into $spy_venv"
            python3 -m venv "$spy_venv"
            "$spy_venv/bin/pip" install --disable-pip-version-check -q py-spy
        fi
        args+=(--py-spy "$spy_venv/bin/py-spy")
    fi
done

exec .venv/bin/python bench/bench.py "${args[@]}"
