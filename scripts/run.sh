#!/usr/bin/env bash
# Starts everything token-store needs on this machine and leaves the service answering:
# PostgreSQL (started if none runs), LocalStack KMS (host mode, installed pinned), the
# database and migrations, then `token-store serve` in the background.
#
# Usage: scripts/run.sh [start|stop]      (idempotent: a second start restarts the service)
# Environment: TOKEN_STORE_CONFIG (default localstack/token-store.toml, relative to the
# repository root); the service's address comes from that file (127.0.0.1:8080) or
# TOKEN_STORE_SERVER__LISTEN; LOCALSTACK_PORT (4566); CARGO_TARGET_DIR (target).
# Log and pid file: .local/token-store.log, .local/token-store.pid.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIG="${TOKEN_STORE_CONFIG:-localstack/token-store.toml}"
PID_FILE=".local/token-store.pid"
LOG_FILE=".local/token-store.log"
BIN="${CARGO_TARGET_DIR:-target}/release/token-store"

log() { printf '[run] %s\n' "$*" >&2; }

# PID from the pid file if that process is alive and is a token-store (guards against a
# reused PID after a reboot or a crash).
service_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'token-store serve' || return 1
  echo "$pid"
}

stop_service() {
  local pid
  if pid="$(service_pid)"; then
    log "stopping the running token-store (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "still running after 10 s; sending SIGKILL"
      kill -KILL "$pid"
    fi
  else
    log "no token-store started by this script is running"
  fi
  rm -f "$PID_FILE"
}

case "${1:-start}" in
  start) ;;
  stop) stop_service; exit 0 ;;
  *) log "unknown command '$1'. Usage: $0 [start|stop]"; exit 2 ;;
esac

mkdir -p .local
scripts/postgres.sh createdb token_store
scripts/localstack.sh start
eval "$(scripts/localstack.sh env)"

log "building token-store (release)"
cargo build --release --locked --bin token-store

stop_service
"$BIN" migrate --config "$CONFIG"

log "starting token-store serve --config $CONFIG (log: $LOG_FILE)"
# The binary takes TOKEN_STORE_<SECTION>__<KEY> variables as configuration overrides and
# leaves other TOKEN_STORE_* names (TOKEN_STORE_CONFIG, this script's) alone.
# NO_COLOR: the log is a file, keep ANSI colour codes out of it.
setsid nohup env NO_COLOR=1 "$BIN" serve --config "$CONFIG" >"$LOG_FILE" 2>&1 < /dev/null &
echo $! > "$PID_FILE"

listen="$(sed -n 's/^listen *= *"\(.*\)"/\1/p' "$CONFIG" | head -n 1)"
listen="${TOKEN_STORE_SERVER__LISTEN:-${listen:-127.0.0.1:8080}}"  # 127.0.0.1:8080: the built-in default
for _ in $(seq 1 100); do
  if curl -fsS "http://$listen/readyz" >/dev/null 2>&1; then
    log "token-store is ready at http://$listen (pid $(cat "$PID_FILE")); stop it with: scripts/run.sh stop"
    exit 0
  fi
  kill -0 "$(cat "$PID_FILE")" 2>/dev/null || { tail -n 30 "$LOG_FILE" >&2; log "token-store exited"; exit 1; }
  sleep 0.2
done
tail -n 30 "$LOG_FILE" >&2
log "token-store did not become ready at http://$listen"
exit 1
