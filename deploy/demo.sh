#!/usr/bin/env bash
# Quick start: the gateway in front of a real local LRS (Ralph), with a demo credential.
#
#   bash deploy/demo.sh                 # gateway on 127.0.0.1:8080, Ralph (storage) on :8100
#   bash deploy/demo.sh --with-target   # and a second Ralph on :8101 the gateway forwards to
#
# Needs only python3 (>= 3.11) and PyPI: no root, no apt, no npm. It
# - installs what it runs, once (deploy/demo/venvs.sh): .venv with the gateway's runtime
#   dependencies (`pip install -e .`, no dev tools) and .venv-ralph with Ralph (its pins clash
#   with ours), both at the same time: about 45 s on a fresh machine, nothing afterwards;
#   the whole demo is up in under a minute the first time (34-57 s measured from a fresh
#   clone with empty caches on 2 cores: deploy/demo/time_demo.py --fresh), in about 7 s
#   afterwards;
# - starts Ralph (filesystem backend) with one credential `gateway` (scope all) whose
#   password is generated once (demo/ralph-password), data in demo/ralph-data;
# - with --with-target, a second Ralph the same way under demo/target/, set as the gateway's
#   forwarding target;
# - writes the gateway credential `demo` (scope all) to demo/auth.json, password generated
#   once (demo/demo-password);
# - runs the gateway (config.yaml, storage = that Ralph) until Ctrl-C, then stops everything.
# Everything it creates is under demo/ (gitignored); delete that directory to start afresh.
#
# Environment:
#   LRS_GATEWAY_DEMO_PORT         the gateway's port (default 8080)
#   LRS_GATEWAY_DEMO_RALPH_PORT   Ralph's port, the storage LRS (default 8100)
#   LRS_GATEWAY_DEMO_TARGET_PORT  the forwarding target's port, with --with-target (default 8101)
#   LRS_GATEWAY_DEMO_REUSE_VENVS  1: use .venv and .venv-ralph as they are, install nothing
#                                 (for tests; they must exist)
#   PYTHON                        the Python that makes the venvs (default python3)
# A port already in use stops the demo before it installs or starts anything (exit 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
DEMO="$REPO_ROOT/demo"
HOST=127.0.0.1
STARTED_AT=$SECONDS

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

WITH_TARGET=0
for arg in "$@"; do
    case "$arg" in
        --with-target) WITH_TARGET=1 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

# --- ports, checked before anything is installed or started ---------------------------------
GATEWAY_PORT="${LRS_GATEWAY_DEMO_PORT:-8080}"
RALPH_PORT="${LRS_GATEWAY_DEMO_RALPH_PORT:-8100}"
TARGET_PORT="${LRS_GATEWAY_DEMO_TARGET_PORT:-8101}"
PORT_NAMES=(GATEWAY_PORT RALPH_PORT)
((WITH_TARGET)) && PORT_NAMES+=(TARGET_PORT)

# port_role NAME / port_var NAME: what a port is for / the variable that sets it.
port_role() {
    case "$1" in
        GATEWAY_PORT) echo "the gateway" ;;
        RALPH_PORT) echo "Ralph (the storage LRS)" ;;
        TARGET_PORT) echo "the forwarding target (a second Ralph)" ;;
    esac
}
port_var() {
    case "$1" in
        GATEWAY_PORT) echo LRS_GATEWAY_DEMO_PORT ;;
        RALPH_PORT) echo LRS_GATEWAY_DEMO_RALPH_PORT ;;
        TARGET_PORT) echo LRS_GATEWAY_DEMO_TARGET_PORT ;;
    esac
}

command -v "${PYTHON:-python3}" >/dev/null 2>&1 \
    || die "${PYTHON:-python3} not found: the demo needs Python >= 3.11 (set PYTHON=/path/to/python3.11+)"

declare -A SEEN_PORTS=()
for name in "${PORT_NAMES[@]}"; do
    port="${!name}"
    [[ "$port" =~ ^[0-9]{1,5}$ ]] && ((10#$port >= 1 && 10#$port <= 65535)) \
        || die "$(port_var "$name")='$port' is not a TCP port (1-65535)"
    port=$((10#$port))
    printf -v "$name" '%d' "$port"
    [[ -z "${SEEN_PORTS[$port]:-}" ]] \
        || die "$(port_var "$name") and $(port_var "${SEEN_PORTS[$port]}") are both $port; give each its own port"
    SEEN_PORTS[$port]="$name"
done

# check_ports: each port can be bound on HOST now, else exit 1 naming the port, what it is
# for and the variable that changes it.
check_ports() {
    local name port reason
    for name in "${PORT_NAMES[@]}"; do
        port="${!name}"
        if ! reason="$("${PYTHON:-python3}" - "$HOST" "$port" <<'PY'
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
try:
    sock.bind((sys.argv[1], int(sys.argv[2])))
except OSError as exc:
    print(exc.strerror or exc)
    sys.exit(1)
finally:
    sock.close()
PY
        )"; then
            die "port $port on $HOST for $(port_role "$name") is not free ($reason):" \
                "something else listens there (an earlier demo still running?)." \
                "Stop it, or pick another port: $(port_var "$name")=<port> bash deploy/demo.sh"
        fi
    done
}
check_ports

# --- stopping what we started (Ctrl-C, errors, the end) --------------------------------------
CHILD_PIDS=()   # in the order they are stopped: the gateway first, then the Ralphs
INSTALL_PIDS=()

# descendants PID: every process below PID (children first listed last).
descendants() {
    local child
    for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        descendants "$child"
        echo "$child"
    done
}

stop_pid() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    trap '' INT TERM
    for pid in "${INSTALL_PIDS[@]}"; do   # background installs ignore Ctrl-C: stop them
        kill -0 "$pid" 2>/dev/null || continue
        # shellcheck disable=SC2046
        kill -TERM $(descendants "$pid") "$pid" 2>/dev/null || true
    done
    if ((${#CHILD_PIDS[@]})); then
        say "stopping"
        for pid in "${CHILD_PIDS[@]}"; do stop_pid "$pid"; done
        say "stopped"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- step 1/2: the venvs ----------------------------------------------------------------------
if ((WITH_TARGET)); then STEPS=5; else STEPS=4; fi
step() { local n="$1"; shift; say "[$n/$STEPS] $*"; }

if [[ "${LRS_GATEWAY_DEMO_REUSE_VENVS:-}" == 1 ]]; then
    [[ -x .venv/bin/lrs-gateway ]] \
        || die "LRS_GATEWAY_DEMO_REUSE_VENVS=1 but .venv/bin/lrs-gateway is missing (run without it once)"
    [[ -x .venv-ralph/bin/python ]] \
        || die "LRS_GATEWAY_DEMO_REUSE_VENVS=1 but .venv-ralph/bin/python is missing (run without it once)"
    step 1 ".venv: reused as it is (LRS_GATEWAY_DEMO_REUSE_VENVS=1)"
    step 2 ".venv-ralph: reused as it is (LRS_GATEWAY_DEMO_REUSE_VENVS=1)"
else
    # shellcheck source=deploy/demo/venvs.sh
    source deploy/demo/venvs.sh
    venvs_check_python
    venvs_lock
    mkdir -p "$DEMO"
    declare -A JOB_NAME=() JOB_LOG=() JOB_START=()
    # install_job N DIR EXPECTED FUNCTION...: say what step N installs and how long it takes,
    # or that DIR is up to date; otherwise run FUNCTION in the background.
    install_job() {
        local n="$1" dir="$2" what="$3" expected="$4"
        shift 4
        if [[ "$dir" == .venv ]]; then
            if venv_is_current .venv "$(gateway_stamp_runtime)" "$(gateway_stamp_dev)"; then
                step "$n" "$dir: up to date"; return 0
            fi
        elif venv_is_current "$dir" "$(ralph_stamp)"; then
            step "$n" "$dir: up to date"; return 0
        fi
        step "$n" "$dir: installing $what; about $expected s (first run only; log demo/install$dir.log)"
        local log="$DEMO/install$dir.log"
        ( "$@" ) >"$log" 2>&1 &
        INSTALL_PIDS+=($!)
        JOB_NAME[$!]="$n $dir"
        JOB_LOG[$!]="$log"
        JOB_START[$!]=$SECONDS
    }
    install_job 1 .venv "the gateway's runtime dependencies (pip install -e ., no dev tools)" 35 \
        ensure_gateway_venv_runtime
    install_job 2 .venv-ralph "Ralph (ralph-malph, in parallel)" 40 \
        ensure_ralph_venv --no-compile
    # Both at once; a line every 10 s while they run.
    next_tick=$((SECONDS + 10))
    while :; do
        running=()
        for pid in "${INSTALL_PIDS[@]}"; do
            [[ -n "${JOB_NAME[$pid]:-}" ]] || continue
            if kill -0 "$pid" 2>/dev/null; then
                running+=("${JOB_NAME[$pid]#* }")
                continue
            fi
            read -r n dir <<<"${JOB_NAME[$pid]}"
            unset "JOB_NAME[$pid]"
            if ! wait "$pid"; then
                cat "${JOB_LOG[$pid]}" >&2
                die "installing $dir failed (above; log ${JOB_LOG[$pid]#"$REPO_ROOT"/})"
            fi
            step "$n" "$dir: installed in $((SECONDS - JOB_START[$pid])) s"
        done
        ((${#running[@]})) || break
        if ((SECONDS >= next_tick)); then
            say "      still installing ${running[*]} ($((SECONDS - STARTED_AT)) s so far)"
            next_tick=$((SECONDS + 10))
        fi
        sleep 0.5
    done
    INSTALL_PIDS=()
    venvs_unlock
fi

[[ -f config.yaml ]] || die "config.yaml not found in $REPO_ROOT"
mkdir -p "$DEMO/ralph-data" "$DEMO/gateway-data"
chmod 700 "$DEMO"
check_ports   # again: the installs took a while

# A password generated on the first run and kept in FILE.
kept_password() {
    local file="$1"
    if [[ ! -s "$file" ]]; then
        (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(18))' >"$file")
    fi
    tr -d '\n' <"$file"
}

# write_ralph_auth FILE PASSWORD: Ralph's credentials file with the `gateway` credential
# (scope all; the same agent as the test fixture).
write_ralph_auth() {
    LRS_GATEWAY_RALPH_PASSWORD="$2" .venv/bin/python - "$1" <<'PY'
import os, sys
from pathlib import Path
sys.path.insert(0, "tests")
from realparts.ralph import GATEWAY_AGENT, GATEWAY_USERNAME, write_auth_file
write_auth_file(Path(sys.argv[1]), GATEWAY_USERNAME, os.environ["LRS_GATEWAY_RALPH_PASSWORD"], GATEWAY_AGENT)
PY
}

# start_ralph DIR DATA_DIR AUTH_FILE PORT LOG: a Ralph (fs backend) in the background; its
# pid in LAST_PID.
start_ralph() {
    local dir="$1" data="$2" auth="$3" port="$4" log="$5"
    (
        cd "$dir"   # Ralph reads a .env from its working directory; keep it away from ours
        while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^RALPH_' || true)
        exec env RALPH_RUNSERVER_BACKEND=fs \
            RALPH_RUNSERVER_AUTH_BACKENDS=basic \
            RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH="$data" \
            RALPH_AUTH_FILE="$auth" \
            RALPH_APP_DIR="$dir/ralph-app" \
            PYTHONUNBUFFERED=1 \
            "$REPO_ROOT/.venv-ralph/bin/python" "$REPO_ROOT/tests/realparts/ralph_launcher.py" \
            "$HOST" "$port"
    ) >>"$log" 2>&1 &
    LAST_PID=$!
}

# wait_http URL PID TIMEOUT: until URL answers 200; false when PID exits or TIMEOUT s pass.
wait_http() {
    .venv/bin/python - "$@" <<'PY'
import os, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with opener.open(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
}

# --- step 3 (and 4): Ralph, and the target -----------------------------------------------------
RALPH_PASSWORD="$(kept_password "$DEMO/ralph-password")"
DEMO_PASSWORD="$(kept_password "$DEMO/demo-password")"
RALPH_ROOT="http://$HOST:$RALPH_PORT/"
GATEWAY_URL="http://$HOST:$GATEWAY_PORT"
write_ralph_auth "$DEMO/ralph-auth.json" "$RALPH_PASSWORD"

step 3 "starting Ralph, the storage LRS, on $RALPH_ROOT (about 10 s the first time, then 3 s; log demo/ralph.log)"
start_ralph "$DEMO" "$DEMO/ralph-data" "$DEMO/ralph-auth.json" "$RALPH_PORT" "$DEMO/ralph.log"
RALPH_PID=$LAST_PID
CHILD_PIDS+=("$RALPH_PID")

if ((WITH_TARGET)); then
    TARGET="$DEMO/target"
    mkdir -p "$TARGET/data"
    TARGET_PASSWORD="$(kept_password "$TARGET/ralph-password")"
    TARGET_ROOT="http://$HOST:$TARGET_PORT/"
    write_ralph_auth "$TARGET/ralph-auth.json" "$TARGET_PASSWORD"
    step 4 "starting a second Ralph, the forwarding target, on $TARGET_ROOT (at the same time; log demo/target/ralph.log)"
    start_ralph "$TARGET" "$TARGET/data" "$TARGET/ralph-auth.json" "$TARGET_PORT" "$TARGET/ralph.log"
    TARGET_PID=$LAST_PID
    CHILD_PIDS+=("$TARGET_PID")
fi

# While the Ralphs start: the demo credential, written afresh each run (its password is
# kept), and the forwarding configuration.
rm -f "$DEMO/auth.json"
# --password=VALUE: a generated password may start with "-", which argparse would take
# for an option of its own.
.venv/bin/lrs-gateway auth add --username demo --password="$DEMO_PASSWORD" --scope all \
    --agent-mbox mailto:demo@example.com -w --file "$DEMO/auth.json" >/dev/null

FORWARDINGS='[]'
if ((WITH_TARGET)); then
    FORWARDINGS="$(LRS_GATEWAY_DEMO_TARGET_PASSWORD="$TARGET_PASSWORD" .venv/bin/python - \
        "${TARGET_ROOT}xAPI/statements" <<'PY'
import json, os, sys
print(json.dumps([{
    "name": "demo-target", "is_active": True, "url": sys.argv[1],
    "basic_username": "gateway", "basic_password": os.environ["LRS_GATEWAY_DEMO_TARGET_PASSWORD"],
    "max_retries": 5, "timeout": 5, "backoff_cap": 5,
}]))
PY
    )"
fi

ralph_up() {   # ralph_up PID ROOT LOG WHAT
    wait_http "${2}__heartbeat__" "$1" 60 && return 0
    tail -n 40 "$3" >&2
    if kill -0 "$1" 2>/dev/null; then die "$4 did not answer ${2}__heartbeat__ within 60 s"; fi
    die "$4 exited (log above: ${3#"$REPO_ROOT"/})"
}
ralph_up "$RALPH_PID" "$RALPH_ROOT" "$DEMO/ralph.log" "Ralph"
say "      Ralph is up"
if ((WITH_TARGET)); then
    ralph_up "$TARGET_PID" "$TARGET_ROOT" "$TARGET/ralph.log" "The target Ralph"
    say "      the target Ralph is up"
fi

# --- last step: the gateway ---------------------------------------------------------------------
step "$STEPS" "starting the gateway on $GATEWAY_URL (about 2 s)"
# In the background, not `exec`: this shell stays to stop Ralph, and passes Ctrl-C or a
# SIGTERM on to the gateway (which then finishes its in-flight requests).
LRS_GATEWAY__SERVER__HOST="$HOST" \
LRS_GATEWAY__SERVER__PORT="$GATEWAY_PORT" \
LRS_GATEWAY__STORAGE__URL="${RALPH_ROOT}xAPI/" \
LRS_GATEWAY__STORAGE__BASIC_USERNAME=gateway \
LRS_GATEWAY__STORAGE__BASIC_PASSWORD="$RALPH_PASSWORD" \
LRS_GATEWAY__AUTH__BASIC__CREDENTIALS_FILE="$DEMO/auth.json" \
LRS_GATEWAY__DATA_DIR="$DEMO/gateway-data" \
LRS_GATEWAY_XAPI_FORWARDINGS="$FORWARDINGS" \
    .venv/bin/lrs-gateway serve --config config.yaml &
GATEWAY_PID=$!
CHILD_PIDS=("$GATEWAY_PID" "${CHILD_PIDS[@]}")
wait_http "$GATEWAY_URL/__lbheartbeat__" "$GATEWAY_PID" 30 \
    || die "the gateway did not answer $GATEWAY_URL/__lbheartbeat__ within 30 s (its log is above)"

cat <<EOF

  lrs-gateway demo: $GATEWAY_URL/xAPI/  ->  Ralph at ${RALPH_ROOT}xAPI/   (ready in $((SECONDS - STARTED_AT)) s)
  credential:  username demo   password $DEMO_PASSWORD   (scope all; demo/demo-password)

  Try it:
    curl -s -u 'demo:$DEMO_PASSWORD' -H 'X-Experience-API-Version: 1.0.3' \\
      -H 'Content-Type: application/json' -X POST $GATEWAY_URL/xAPI/statements \\
      -d '{"actor": {"mbox": "mailto:learner@example.com"},
           "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
           "object": {"id": "http://example.com/activities/demo"}}'
    curl -s -u 'demo:$DEMO_PASSWORD' -H 'X-Experience-API-Version: 1.0.3' \\
      $GATEWAY_URL/xAPI/statements
EOF
if ((WITH_TARGET)); then
    cat <<EOF

  Forwarding target: a second Ralph at ${TARGET_ROOT}xAPI/ (target "demo-target";
  data in demo/target/). Each statement the gateway stores arrives there a moment later:
    curl -s -u 'gateway:$TARGET_PASSWORD' -H 'X-Experience-API-Version: 1.0.3' \\
      ${TARGET_ROOT}xAPI/statements
EOF
fi
cat <<EOF

  Ctrl-C stops the gateway and Ralph$( ((WITH_TARGET)) && echo "s").

EOF

status=0
trap 'kill -TERM "$GATEWAY_PID" 2>/dev/null || true' INT TERM
wait "$GATEWAY_PID" || status=$?
if kill -0 "$GATEWAY_PID" 2>/dev/null; then  # woken by the trap: let the gateway finish
    wait "$GATEWAY_PID" || status=$?
fi
exit "$status"
