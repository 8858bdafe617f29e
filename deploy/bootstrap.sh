#!/usr/bin/env bash
# Create (or refresh) everything the test command needs; safe to run again and again.
#
#   .venv        the gateway with its dev tools:  pip install -e '.[dev]'
#   .venv-ralph  a real Ralph LRS for tests and the demo: tests/realparts/requirements-ralph.txt
#   tests/oidc/node_modules  a real OpenID provider (npm oidc-provider) for the OIDC tests:
#                npm ci from tests/oidc/package-lock.json (needs Node >= 20 and npm)
#   promtool     Prometheus' rule checker, for tests/test_deploy.py (deploy/prometheus):
#                the Debian package `prometheus` when missing (needs root and apt-get)
#   chromium     a headless browser for the web UI tests (tests/realparts/chromium.py):
#                the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium,
#                /usr/bin/chromedriver) when missing (needs root and apt-get); never a
#                browser download at run time
#   postgresql, redis-server  real servers for tests (tests/realparts/postgres.py, redis.py):
#                the Debian packages `postgresql` (/usr/lib/postgresql/<version>/bin) and
#                `redis-server` (/usr/bin/redis-server) when missing (needs root and apt-get);
#                the tests start their own throwaway servers, never the system's services
#
# The venvs are made by deploy/demo/venvs.sh, which deploy/demo.sh shares (the demo installs
# only the gateway's runtime dependencies and Ralph, never npm or apt). A venv is
# (re)installed only when its inputs changed (pyproject.toml, or the Ralph requirements
# file, or the Python version), as recorded in a stamp file inside it; the same for
# node_modules (the lockfile, or the Node version).
# Environment: PYTHON (default python3, must be >= 3.11).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
STAMP_NAME=".lrs-gateway-bootstrap.stamp"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=deploy/demo/venvs.sh
source deploy/demo/venvs.sh
venvs_check_python
venvs_lock
ensure_gateway_venv_dev
ensure_ralph_venv

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

# ensure_chromium: /usr/bin/chromium and /usr/bin/chromedriver, from Debian's `chromium` and
# `chromium-driver` when either is missing (the UI tests drive exactly these two, so selenium
# never downloads a browser or a driver). `apt-get update` only when needed: apt knows no
# candidate yet, or installing from the lists it has failed (stale lists). Without root (or
# apt-get) it says so and goes on: the tests marked `chromium` then fail with the same advice.
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; }

ensure_chromium() {
    local log packages=(chromium chromium-driver)
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        say "chromium and chromedriver are installed"
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        say "chromium or chromedriver is missing and cannot be installed here (needs root and apt-get):"
        say "  skipping; install Debian's 'chromium' and 'chromium-driver' for the web UI tests"
        return 0
    fi
    say "installing Chromium (Debian packages chromium, chromium-driver)"
    log="$(mktemp)"
    if ! {
        if apt-cache show "${packages[@]}" >/dev/null 2>&1 && apt_install "${packages[@]}"; then
            true
        else
            apt-get update -qq && apt_install "${packages[@]}"
        fi
    } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get install chromium chromium-driver failed; the web UI tests need" \
            "/usr/bin/chromium and /usr/bin/chromedriver"
    fi
    rm -f "$log"
    [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] \
        || die "the chromium packages did not install /usr/bin/chromium and /usr/bin/chromedriver"
}

ensure_chromium

# ensure_db_servers: Debian's `postgresql` (a server >= 15 under /usr/lib/postgresql) and
# `redis-server` (/usr/bin/redis-server) when either is missing; the tests run their own
# throwaway servers from these binaries (tests/realparts/postgres.py, redis.py). Same rules
# as ensure_chromium: `apt-get update` only when needed, and without root (or apt-get) it
# says so and goes on (the tests marked `postgres` or `redis` then fail with the same advice).
postgres_installed() {
    local bin
    for bin in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x "$bin" ]] && return 0
    done
    return 1
}

ensure_db_servers() {
    local log packages=()
    postgres_installed || packages+=(postgresql)
    [[ -x /usr/bin/redis-server ]] || packages+=(redis-server)
    if (( ${#packages[@]} == 0 )); then
        say "postgresql and redis-server are installed"
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        say "${packages[*]} missing and cannot be installed here (needs root and apt-get):"
        say "  skipping; install Debian's '${packages[*]}' for the PostgreSQL and Redis tests"
        return 0
    fi
    say "installing Debian packages ${packages[*]}"
    log="$(mktemp)"
    if ! {
        if apt-cache show "${packages[@]}" >/dev/null 2>&1 && apt_install "${packages[@]}"; then
            true
        else
            apt-get update -qq && apt_install "${packages[@]}"
        fi
    } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get install ${packages[*]} failed; the PostgreSQL and Redis tests need them"
    fi
    rm -f "$log"
    # Only the binaries are wanted: where systemd runs, do not leave the packages' own
    # services running (the tests start their own servers on free ports).
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        local package
        for package in "${packages[@]}"; do
            systemctl disable --now "$package.service" >/dev/null 2>&1 || true
        done
    fi
    postgres_installed || die "the postgresql package did not install /usr/lib/postgresql/*/bin/postgres"
    [[ -x /usr/bin/redis-server ]] || die "the redis-server package did not install /usr/bin/redis-server"
}

ensure_db_servers
say "ready (.venv, .venv-ralph, tests/oidc/node_modules, promtool, chromium, postgresql, redis-server)"
