#!/usr/bin/env bash
# Create (or refresh) the project's virtualenvs; safe to run again and again.
#
#   .venv        the gateway with its dev tools:  pip install -e '.[dev]'
#   .venv-ralph  a real Ralph LRS for tests and the demo: tests/realparts/requirements-ralph.txt
#   tests/oidc/node_modules  a real OpenID provider (npm oidc-provider) for the OIDC tests:
#                npm ci from tests/oidc/package-lock.json (needs Node >= 20 and npm)
#   promtool     Prometheus' rule checker, for tests/test_deploy.py (deploy/prometheus):
#                the Debian package `prometheus` when missing (needs root and apt-get)
#
# A venv is (re)installed only when its inputs changed (pyproject.toml, or the Ralph
# requirements file, or the Python version), as recorded in a stamp file inside it; the
# same for node_modules (the lockfile, or the Node version).
# Environment: PYTHON (default python3, must be >= 3.11).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"
STAMP_NAME=".lrs-gateway-bootstrap.stamp"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3.11+)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.11 is required"
PY_VERSION="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"

# One bootstrap at a time for this checkout (tests/run and demo.sh may race).
if command -v flock >/dev/null 2>&1; then
    lock_id="$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-16)"
    exec 9>"${TMPDIR:-/tmp}/lrs-gateway-bootstrap-${lock_id}.lock"
    flock 9
fi

# ensure_venv DIR STAMP_CONTENT INSTALL_ARGS...
ensure_venv() {
    local dir="$1" wanted="$2"
    shift 2
    local stamp="$dir/$STAMP_NAME" log
    if [[ -x "$dir/bin/python" && -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$wanted" ]] \
        && "$dir/bin/python" -c '' >/dev/null 2>&1; then
        say "$dir is up to date"
        return 0
    fi
    if [[ ! -x "$dir/bin/python" ]] || ! "$dir/bin/python" -c '' >/dev/null 2>&1; then
        say "creating $dir"
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
    fi
    say "installing into $dir: $*"
    rm -f "$stamp"
    log="$(mktemp)"
    if ! "$dir/bin/python" -m pip install --disable-pip-version-check --no-input -q "$@" \
        >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install into $dir failed"
    fi
    rm -f "$log"
    printf '%s\n' "$wanted" >"$stamp"
}

inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

RALPH_REQS="tests/realparts/requirements-ralph.txt"
[[ -f pyproject.toml ]] || die "pyproject.toml missing in $REPO_ROOT"
[[ -f "$RALPH_REQS" ]] || die "$RALPH_REQS missing"

ensure_venv .venv "python=$PY_VERSION inputs=$(inputs_hash pyproject.toml)" -e '.[dev]'
ensure_venv .venv-ralph "python=$PY_VERSION inputs=$(inputs_hash "$RALPH_REQS")" -r "$RALPH_REQS"

# ensure_node_modules DIR: `npm ci` in DIR when its lockfile (or Node) changed.
ensure_node_modules() {
    local dir="$1" node_version wanted stamp log
    [[ -f "$dir/package-lock.json" ]] || die "$dir/package-lock.json missing"
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
        || die "node and npm are required for the OIDC and Learning Locker tests ($dir); install Node.js >= 20 with npm"
    node_version="$(node --version)"
    [[ "$node_version" =~ ^v([0-9]+)\. ]] && (( BASH_REMATCH[1] >= 20 )) \
        || die "node is $node_version; Node.js >= 20 is required for $dir"
    wanted="node=$node_version inputs=$(inputs_hash "$dir/package.json" "$dir/package-lock.json")"
    stamp="$dir/node_modules/$STAMP_NAME"
    if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$wanted" ]]; then
        say "$dir/node_modules is up to date"
        return 0
    fi
    say "npm ci in $dir"
    log="$(mktemp)"
    if ! npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "npm ci in $dir failed"
    fi
    rm -f "$log"
    printf '%s\n' "$wanted" >"$stamp"
}

ensure_node_modules tests/oidc

# ensure_promtool: promtool on PATH, from Debian's `prometheus` package (the only one that
# ships it) when missing. Without root (or apt-get) it says so and goes on: the tests that
# need promtool then skip, and fail under CI=true.
ensure_promtool() {
    local log
    if command -v promtool >/dev/null 2>&1 || [[ -x /usr/bin/promtool ]]; then
        say "promtool is installed"
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        say "promtool is missing and cannot be installed here (needs root and apt-get): skipping;"
        say "  install Debian's 'prometheus' package for tests/test_deploy.py (they fail under CI=true)"
        return 0
    fi
    say "installing promtool (Debian package prometheus)"
    log="$(mktemp)"
    if ! { apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                prometheus; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get install prometheus failed"
    fi
    rm -f "$log"
    # Only promtool is wanted: where systemd runs, do not leave a Prometheus server running.
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
    command -v promtool >/dev/null 2>&1 || die "the prometheus package did not install promtool"
}

ensure_promtool
say "ready (.venv, .venv-ralph, tests/oidc/node_modules, promtool)"
