# shellcheck shell=bash
# The project's virtualenvs, shared by deploy/bootstrap.sh (tests: everything) and
# deploy/demo.sh (quick start: only what the demo runs). Source it from the repository root
# after defining `say MESSAGE...` and `die MESSAGE...`.
#
#   .venv        the gateway. bootstrap: pip install -e '.[dev]' (dev tools);
#                demo: pip install -e . (runtime dependencies only). A dev .venv serves the
#                demo as it is; a demo .venv gets the dev tools on the next bootstrap.
#   .venv-ralph  a real Ralph LRS (tests/realparts/requirements-ralph.txt), kept apart
#                because its pins clash with the gateway's. The same for both.
#
# A venv is (re)installed only when its inputs changed (pyproject.toml, or the Ralph
# requirements file, or the Python version), as recorded in a stamp file inside it.
# Environment: PYTHON (default python3, must be >= 3.11).

PYTHON="${PYTHON:-python3}"
VENV_STAMP_NAME=".lrs-gateway-bootstrap.stamp"
RALPH_REQS="tests/realparts/requirements-ralph.txt"
PIP_QUIET=(--disable-pip-version-check --no-input -q)

# venvs_check_python: PYTHON exists and is >= 3.11; sets PY_VERSION.
venvs_check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3.11+)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.11 is required"
    PY_VERSION="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
    [[ -f pyproject.toml ]] || die "pyproject.toml missing in $(pwd)"
    [[ -f "$RALPH_REQS" ]] || die "$RALPH_REQS missing"
}

# venvs_lock: one installer at a time for this checkout (tests/run and demo.sh may race).
# Holds the lock on fd 9 until the shell exits or runs `venvs_unlock`.
venvs_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    local lock_id
    lock_id="$(printf '%s' "$(pwd)" | sha256sum | cut -c1-16)"
    exec 9>"${TMPDIR:-/tmp}/lrs-gateway-bootstrap-${lock_id}.lock"
    if ! flock -n 9; then
        say "another bootstrap of this checkout is running (tests/run or demo.sh): waiting for it"
        flock 9
    fi
}
venvs_unlock() { exec 9>&-; }

inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

# The stamps: what a venv was installed from. The dev stamp has the historical format.
gateway_stamp_dev() { printf 'python=%s inputs=%s' "$PY_VERSION" "$(inputs_hash pyproject.toml)"; }
gateway_stamp_runtime() { printf '%s runtime-only' "$(gateway_stamp_dev)"; }
ralph_stamp() { printf 'python=%s inputs=%s' "$PY_VERSION" "$(inputs_hash "$RALPH_REQS")"; }

# venv_is_current DIR STAMP...: DIR's Python runs and its stamp is one of STAMPs.
venv_is_current() {
    local dir="$1" stamp_file="$1/$VENV_STAMP_NAME" current wanted
    shift
    [[ -x "$dir/bin/python" && -f "$stamp_file" ]] || return 1
    "$dir/bin/python" -c '' >/dev/null 2>&1 || return 1
    current="$(cat "$stamp_file")"
    for wanted in "$@"; do
        [[ "$current" == "$wanted" ]] && return 0
    done
    return 1
}

# install_venv DIR STAMP PIP_INSTALL_ARGS...: (re)create DIR when its Python or pip does not
# run (e.g. an interrupted first run), pip install into it, then write STAMP. On failure:
# pip's output, and `die`.
install_venv() {
    local dir="$1" stamp="$2" log
    shift 2
    if [[ ! -x "$dir/bin/python" ]] || ! "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
        say "creating $dir"
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
    fi
    say "installing into $dir: $*"
    rm -f "$dir/$VENV_STAMP_NAME"
    log="$(mktemp)"
    if ! "$dir/bin/python" -m pip install "${PIP_QUIET[@]}" "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install into $dir failed"
    fi
    rm -f "$log"
    printf '%s\n' "$stamp" >"$dir/$VENV_STAMP_NAME"
}

# ensure_venv DIR STAMP ALSO_OK PIP_INSTALL_ARGS...: install unless DIR's stamp is STAMP or
# ALSO_OK (another stamp that is good enough, or "" for none).
ensure_venv() {
    local dir="$1" stamp="$2" accepted="$3"
    shift 3
    local -a also=()
    [[ -n "$accepted" ]] && also=("$accepted")
    if venv_is_current "$dir" "$stamp" "${also[@]}"; then
        say "$dir is up to date"
        return 0
    fi
    install_venv "$dir" "$stamp" "$@"
}

# The two venvs, for the tests (dev) or for the demo (runtime only, and --no-compile: the
# first start compiles only what it imports, which is faster than compiling everything).
ensure_gateway_venv_dev() { ensure_venv .venv "$(gateway_stamp_dev)" "" -e '.[dev]'; }
ensure_gateway_venv_runtime() {
    ensure_venv .venv "$(gateway_stamp_runtime)" "$(gateway_stamp_dev)" --no-compile -e .
}
# ensure_ralph_venv [EXTRA_PIP_ARGS...]
ensure_ralph_venv() { ensure_venv .venv-ralph "$(ralph_stamp)" "" "$@" -r "$RALPH_REQS"; }
