#!/usr/bin/env bash
# Label Studio for comcoco's human review: install (own virtualenv), start, stop, status.
#
# The server lives in its own virtualenv because its pins would downgrade Prefect and typer in the
# project's environment; the project talks to it over HTTP with label-studio-sdk.
#
# Settings (environment variables, defaults in brackets):
#   COMCOCO_LS_HOME           state directory                   [<repo>/.label-studio]
#   COMCOCO_LS_VENV           server virtualenv                 [$COMCOCO_LS_HOME/venv]
#   COMCOCO_LS_DATA_DIR       server data dir (db, media, logs) [$COMCOCO_LS_HOME/data]
#   COMCOCO_LS_PORT           port on 127.0.0.1                 [8080]
#   COMCOCO_LS_DOCUMENT_ROOT  root served as local files        [<repo>/runs]
#   COMCOCO_LS_USERNAME       admin e-mail                      [admin@comcoco.local]
#   COMCOCO_LS_PASSWORD       admin password                    [comcoco-review]
#   COMCOCO_LS_TOKEN          admin API token (40 hex)          [documented development token]
#   COMCOCO_LS_PYTHON         interpreter for the virtualenv    [python3.11]
#   COMCOCO_LS_START_TIMEOUT  seconds to wait for /health       [240]
#
# The token is passed to the server through its environment only: it is never printed, logged or put
# on a command line. Do not add `set -x` here.
set -euo pipefail

LS_VERSION="1.23.2"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LS_HOME="${COMCOCO_LS_HOME:-$REPO/.label-studio}"
VENV="${COMCOCO_LS_VENV:-$LS_HOME/venv}"
DATA_DIR="${COMCOCO_LS_DATA_DIR:-$LS_HOME/data}"
PORT="${COMCOCO_LS_PORT:-8080}"
DOCUMENT_ROOT="${COMCOCO_LS_DOCUMENT_ROOT:-$REPO/runs}"
USERNAME="${COMCOCO_LS_USERNAME:-admin@comcoco.local}"
PASSWORD="${COMCOCO_LS_PASSWORD:-comcoco-review}"
# Development default, documented in docs/review.md; override with COMCOCO_LS_TOKEN anywhere shared.
TOKEN="${COMCOCO_LS_TOKEN:-c0c0de7e1c0c0de7e1c0c0de7e1c0c0de7e1c0c0}"
PYTHON="${COMCOCO_LS_PYTHON:-python3.11}"
START_TIMEOUT="${COMCOCO_LS_START_TIMEOUT:-240}"

STAMP="$VENV/.comcoco-install-stamp"
# A migrated, user-less database: a fresh data directory seeded with it starts in seconds instead of
# spending half a minute or more on Django migrations.
TEMPLATE_DB="$VENV/comcoco-template/label_studio.sqlite3"
PID_FILE="$DATA_DIR/label-studio.pid"
URL_FILE="$DATA_DIR/label-studio.url"
LOG_FILE="$DATA_DIR/label-studio.log"
URL="http://127.0.0.1:$PORT"
# Offline and quiet: no version check, analytics or error reporting; warnings only.
QUIET_ENV=(LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SENTRY_DSN= FRONTEND_SENTRY_DSN= LOG_LEVEL=WARNING)

say() { printf 'label-studio: %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

usage() {
    cat <<EOF
usage: scripts/label_studio.sh install|start|stop|status
  install  create $VENV with label-studio==$LS_VERSION (idempotent)
  start    start the server on 127.0.0.1:\$COMCOCO_LS_PORT and wait until /health answers (idempotent)
  stop     stop the server by its recorded pid (process group), wait, remove the pid file
  status   say whether the server runs; exit 0 if it does, 3 if not
EOF
}

installed() {
    [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "label-studio==$LS_VERSION" ]] && [[ -x "$VENV/bin/label-studio" ]]
}

cmd_install() {
    mkdir -p "$(dirname "$VENV")"
    # One installer at a time (parallel test workers may all ask for it).
    exec 9>"$(dirname "$VENV")/.install.lock"
    flock 9
    if installed; then
        say "label-studio==$LS_VERSION already installed in $VENV"
        build_template
        return 0
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set COMCOCO_LS_PYTHON to a Python 3.11 interpreter)"
    rm -rf "$VENV"
    say "installing label-studio==$LS_VERSION into $VENV (about a minute)"
    "$PYTHON" -m venv "$VENV" || die "could not create the virtualenv $VENV with $PYTHON"
    # --no-compile: byte-compiling all of Django and friends up front costs ~40 s of CPU; the modules
    # the server imports are compiled on first use instead.
    if ! "$VENV/bin/python" -m pip install -q --no-compile --disable-pip-version-check \
            "label-studio==$LS_VERSION" \
            >"$(dirname "$VENV")/install.log" 2>&1; then
        tail -n 20 "$(dirname "$VENV")/install.log" >&2 || true
        die "pip install label-studio==$LS_VERSION failed (full log: $(dirname "$VENV")/install.log)"
    fi
    [[ -x "$VENV/bin/label-studio" ]] || die "label-studio executable missing in $VENV/bin after install"
    printf 'label-studio==%s' "$LS_VERSION" >"$STAMP"
    say "installed label-studio==$LS_VERSION"
    build_template
}

build_template() {
    [[ -f "$TEMPLATE_DB" ]] && return 0
    local tmp pkg
    tmp="$(dirname "$TEMPLATE_DB").tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    say "migrating a template database (once per install)"
    pkg="$("$VENV/bin/python" -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))')"
    if ! (cd "$tmp" && env "${QUIET_ENV[@]}" LABEL_STUDIO_BASE_DATA_DIR="$tmp" \
            "$VENV/bin/python" "$pkg/manage.py" migrate --no-color -v 0 >"$tmp/migrate.log" 2>&1); then
        tail -n 20 "$tmp/migrate.log" >&2 || true
        die "migrating the template database failed (log: $tmp/migrate.log)"
    fi
    [[ -f "$tmp/label_studio.sqlite3" ]] || die "migration wrote no database in $tmp"
    rm -rf "$(dirname "$TEMPLATE_DB")"
    mv "$tmp" "$(dirname "$TEMPLATE_DB")"
}

port_free() {
    # label-studio silently moves to another port when its port is taken; refuse instead. SO_REUSEADDR,
    # as every server sets it: without it the stopped server's own TIME_WAIT connections would make a
    # free port look taken for a minute after `stop`.
    "$VENV/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
PY
}

port_holder() {
    # What listens on the port, for the refusal message: a Label Studio (answers /health) or another program.
    if healthy "http://127.0.0.1:$1"; then
        printf 'another Label Studio (not the one of %s)' "$DATA_DIR"
    else
        printf 'another program'
    fi
}

alive() {
    # A live process, not a zombie waiting for its parent to reap it.
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [[ "$state" != "Z" ]]
}

group_alive() {
    # Whether any live (non-zombie) process is left in process group $1 (field 5 of /proc/PID/stat).
    local f line rest state ppid pgrp
    for f in /proc/[0-9]*/stat; do
        { read -r line < "$f"; } 2>/dev/null || continue
        rest="${line##*) }"
        read -r state ppid pgrp _ <<<"$rest"
        if [[ "$pgrp" == "$1" && "$state" != "Z" ]]; then
            return 0
        fi
    done
    return 1
}

running_pid() {
    # Prints the recorded pid if that process is alive; removes a stale pid file.
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid"; then
        printf '%s' "$pid"
        return 0
    fi
    rm -f "$PID_FILE"
    return 1
}

healthy() {
    # /health answers 200 once Django is up; uses the server's own python (no curl needed).
    "$VENV/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/health", timeout=3) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

log_tail() {
    # Last lines of the server log with the token masked, for diagnosing a failed start.
    [[ -f "$LOG_FILE" ]] || return 0
    COMCOCO_LS_MASK="$TOKEN" "$VENV/bin/python" - "$LOG_FILE" <<'PY' >&2 || true
import os, sys
lines = open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines()[-25:]
mask = os.environ.get("COMCOCO_LS_MASK", "")
for line in lines:
    print("  | " + (line.replace(mask, "<token>") if mask else line))
PY
}

cmd_start() {
    installed || die "label-studio is not installed in $VENV (run: scripts/label_studio.sh install)"
    [[ "$TOKEN" =~ ^[0-9a-f]{40}$ ]] || die "COMCOCO_LS_TOKEN must be 40 lowercase hex characters"
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "COMCOCO_LS_PORT must be a number, got '$PORT'"
    mkdir -p "$DATA_DIR" "$DOCUMENT_ROOT"
    local pid
    if pid="$(running_pid)"; then
        say "already running (pid $pid) at $(cat "$URL_FILE" 2>/dev/null || echo "$URL")"
        return 0
    fi
    DOCUMENT_ROOT="$(cd "$DOCUMENT_ROOT" && pwd)"
    DATA_DIR="$(cd "$DATA_DIR" && pwd)"
    if ! port_free "$PORT"; then
        die "port $PORT on 127.0.0.1 is in use by $(port_holder "$PORT"); stop it, or move the server and the review \
commands together: \`export COMCOCO_LS_PORT=<free port>\` in the shell that runs both \`make label-studio\` and \
\`comcoco review\` (they read the same variable; an exported COMCOCO_LS_URL wins over it for the commands)"
    fi
    if [[ ! -f "$DATA_DIR/label_studio.sqlite3" && -f "$TEMPLATE_DB" ]]; then
        cp "$TEMPLATE_DB" "$DATA_DIR/label_studio.sqlite3"
    fi
    # A new session of its own: the pid is also the process group, so stop can end every child.
    env "${QUIET_ENV[@]}" \
        LABEL_STUDIO_BASE_DATA_DIR="$DATA_DIR" \
        LABEL_STUDIO_USERNAME="$USERNAME" \
        LABEL_STUDIO_PASSWORD="$PASSWORD" \
        LABEL_STUDIO_USER_TOKEN="$TOKEN" \
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="$DOCUMENT_ROOT" \
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
        setsid "$VENV/bin/label-studio" start --no-browser --data-dir "$DATA_DIR" \
            --internal-host 127.0.0.1 --port "$PORT" </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    printf '%s' "$pid" >"$PID_FILE"
    printf '%s' "$URL" >"$URL_FILE"
    say "starting (pid $pid) at $URL, data $DATA_DIR, log $LOG_FILE"
    local waited=0
    while ! healthy "$URL"; do
        if ! alive "$pid"; then
            rm -f "$PID_FILE"
            log_tail
            die "label-studio exited during start-up (log: $LOG_FILE)"
        fi
        if (( waited >= START_TIMEOUT )); then
            log_tail
            die "label-studio not ready at $URL after ${START_TIMEOUT}s (still running as pid $pid; log: $LOG_FILE)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "ready at $URL after ${waited}s"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        say "not running (no live pid in $PID_FILE)"
        return 0
    fi
    # Whole process group first (setsid made pid the group leader), then the pid itself.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while alive "$pid" && (( waited < 60 )); do
        sleep 0.5
        waited=$((waited + 1))
    done
    if alive "$pid"; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    # Children that ignored TERM (workers) go with the group.
    kill -KILL -- "-$pid" 2>/dev/null || true
    # A signal is delivered, not done: wait until no process of the group is left (a worker still
    # exiting holds the listening socket, and a start right after would find the port taken), then
    # until the port binds.
    waited=0
    while group_alive "$pid" && (( waited < 40 )); do
        sleep 0.25
        waited=$((waited + 1))
    done
    waited=0
    while ! port_free "$PORT" && (( waited < 20 )); do
        sleep 0.25
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    say "stopped (pid $pid)"
}

cmd_status() {
    local pid url
    if pid="$(running_pid)"; then
        url="$(cat "$URL_FILE" 2>/dev/null || echo "$URL")"
        if installed && healthy "$url"; then
            say "running (pid $pid) at $url, healthy"
        else
            say "running (pid $pid) at $url, not answering /health yet"
        fi
        return 0
    fi
    if installed; then
        say "not running (installed: label-studio==$LS_VERSION in $VENV)"
    else
        say "not running (not installed)"
    fi
    return 3
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
