#!/usr/bin/env bash
# Quick start: the gateway in front of a real local LRS (Ralph), with a demo credential.
#
#   bash deploy/demo.sh
#
# - installs everything it needs (deploy/bootstrap.sh: .venv and .venv-ralph);
# - starts Ralph (filesystem backend) on 127.0.0.1:8100, data in demo/ralph-data, with one
#   credential `gateway` (scope all) whose password is generated once (demo/ralph-password);
# - writes the gateway credential `demo` (scope all) to demo/auth.json, password generated
#   once (demo/demo-password);
# - runs the gateway on 127.0.0.1:8080 (config.yaml, storage = that Ralph) until Ctrl-C,
#   then stops Ralph.
# Everything it creates is under demo/ (gitignored); delete that directory to start afresh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
DEMO="$REPO_ROOT/demo"
RALPH_HOST=127.0.0.1
RALPH_PORT=8100
GATEWAY_URL="http://127.0.0.1:8080"

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

bash deploy/bootstrap.sh

[[ -f config.yaml ]] || die "config.yaml not found in $REPO_ROOT"

mkdir -p "$DEMO/ralph-data" "$DEMO/gateway-data"
chmod 700 "$DEMO"

# A password generated on the first run and kept in FILE.
kept_password() {
    local file="$1"
    if [[ ! -s "$file" ]]; then
        (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(18))' >"$file")
    fi
    tr -d '\n' <"$file"
}
RALPH_PASSWORD="$(kept_password "$DEMO/ralph-password")"
DEMO_PASSWORD="$(kept_password "$DEMO/demo-password")"

healthy() {
    .venv/bin/python - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
PY
}

RALPH_ROOT="http://$RALPH_HOST:$RALPH_PORT/"
if healthy "${RALPH_ROOT}__lbheartbeat__"; then
    die "something already answers on $RALPH_ROOT (an earlier demo still running?); stop it first"
fi

# Ralph's credentials file: the `gateway` credential (same agent as the test fixture).
LRS_GATEWAY_RALPH_PASSWORD="$RALPH_PASSWORD" .venv/bin/python - "$DEMO/ralph-auth.json" <<'PY'
import os, sys
from pathlib import Path
sys.path.insert(0, "tests")
from realparts.ralph import GATEWAY_AGENT, GATEWAY_USERNAME, write_auth_file
write_auth_file(Path(sys.argv[1]), GATEWAY_USERNAME, os.environ["LRS_GATEWAY_RALPH_PASSWORD"], GATEWAY_AGENT)
PY

say "starting Ralph on $RALPH_ROOT (log: demo/ralph.log)"
(
    cd "$DEMO"   # Ralph reads a .env from its working directory; keep it away from ours
    exec env RALPH_RUNSERVER_BACKEND=fs \
        RALPH_RUNSERVER_AUTH_BACKENDS=basic \
        RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH="$DEMO/ralph-data" \
        RALPH_AUTH_FILE="$DEMO/ralph-auth.json" \
        RALPH_APP_DIR="$DEMO/ralph-app" \
        PYTHONUNBUFFERED=1 \
        "$REPO_ROOT/.venv-ralph/bin/python" "$REPO_ROOT/tests/realparts/ralph_launcher.py" \
        "$RALPH_HOST" "$RALPH_PORT"
) >>"$DEMO/ralph.log" 2>&1 &
RALPH_PID=$!

stop_ralph() {
    if kill -0 "$RALPH_PID" 2>/dev/null; then
        say "stopping Ralph (pid $RALPH_PID)"
        kill -TERM "$RALPH_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$RALPH_PID" 2>/dev/null || return 0
            sleep 0.1
        done
        kill -KILL "$RALPH_PID" 2>/dev/null || true
    fi
}
trap stop_ralph EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in $(seq 150); do
    kill -0 "$RALPH_PID" 2>/dev/null || { tail -n 40 "$DEMO/ralph.log" >&2; die "Ralph exited"; }
    healthy "${RALPH_ROOT}__heartbeat__" && break
    sleep 0.2
done
healthy "${RALPH_ROOT}__heartbeat__" \
    || { tail -n 40 "$DEMO/ralph.log" >&2; die "Ralph did not become healthy in 30 s"; }
say "Ralph is up"

# The demo credential, written afresh each run (its password is kept).
rm -f "$DEMO/auth.json"
.venv/bin/lrs-gateway auth add --username demo --password "$DEMO_PASSWORD" --scope all \
    --agent-mbox mailto:demo@example.com -w --file "$DEMO/auth.json" >/dev/null

cat <<EOF

  lrs-gateway demo: $GATEWAY_URL/xAPI/  ->  Ralph at ${RALPH_ROOT}xAPI/
  credential:  username demo   password $DEMO_PASSWORD   (scope all; demo/demo-password)

  Try it:
    curl -s -u 'demo:$DEMO_PASSWORD' -H 'X-Experience-API-Version: 1.0.3' \\
      -H 'Content-Type: application/json' -X POST $GATEWAY_URL/xAPI/statements \\
      -d '{"actor": {"mbox": "mailto:learner@example.com"},
           "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
           "object": {"id": "http://example.com/activities/demo"}}'
    curl -s -u 'demo:$DEMO_PASSWORD' -H 'X-Experience-API-Version: 1.0.3' \\
      $GATEWAY_URL/xAPI/statements

  Ctrl-C stops the gateway and Ralph.

EOF

# In the background, not `exec`: this shell stays to stop Ralph, and passes Ctrl-C or a
# SIGTERM on to the gateway (which then finishes its in-flight requests).
LRS_GATEWAY__STORAGE__URL="${RALPH_ROOT}xAPI/" \
LRS_GATEWAY__STORAGE__BASIC_USERNAME=gateway \
LRS_GATEWAY__STORAGE__BASIC_PASSWORD="$RALPH_PASSWORD" \
LRS_GATEWAY__AUTH__BASIC__CREDENTIALS_FILE="$DEMO/auth.json" \
LRS_GATEWAY__DATA_DIR="$DEMO/gateway-data" \
    .venv/bin/lrs-gateway serve --config config.yaml &
GATEWAY_PID=$!
trap 'kill -TERM "$GATEWAY_PID" 2>/dev/null || true' INT TERM
status=0
wait "$GATEWAY_PID" || status=$?
if kill -0 "$GATEWAY_PID" 2>/dev/null; then  # woken by the trap: let the gateway finish
    wait "$GATEWAY_PID" || status=$?
fi
exit "$status"
