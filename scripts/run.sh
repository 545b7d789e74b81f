#!/usr/bin/env bash
# Starts everything token-store needs on this machine and leaves the service answering:
# PostgreSQL (started if none runs), LocalStack KMS (host mode, installed pinned), the
# database and migrations, then `token-store serve` in the background.
#
# Usage: scripts/run.sh [start|stop]      (idempotent: a second start restarts the service)
# Environment: TOKEN_STORE_CONFIG (default localstack/token-store.toml), PORT of the
# service comes from that file (127.0.0.1:8080); LOCALSTACK_PORT (4566).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIG="${TOKEN_STORE_CONFIG:-localstack/token-store.toml}"
PID_FILE=".local/token-store.pid"
LOG_FILE=".local/token-store.log"
BIN="${CARGO_TARGET_DIR:-target}/release/token-store"

log() { printf '[run] %s\n' "$*" >&2; }

stop_service() {
  if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    local pid
    pid="$(cat "$PID_FILE")"
    log "stopping the running token-store (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$PID_FILE"
}

if [[ "${1:-start}" == "stop" ]]; then
  stop_service
  exit 0
fi

mkdir -p .local
scripts/postgres.sh createdb token_store
scripts/localstack.sh start
eval "$(scripts/localstack.sh env)"

log "building token-store (release)"
cargo build --release --locked --bin token-store

stop_service
"$BIN" migrate --config "$CONFIG"

log "starting token-store serve --config $CONFIG (log: $LOG_FILE)"
setsid nohup "$BIN" serve --config "$CONFIG" >"$LOG_FILE" 2>&1 < /dev/null &
echo $! > "$PID_FILE"

listen="$(sed -n 's/^listen *= *"\(.*\)"/\1/p' "$CONFIG" | head -n 1)"
listen="${TOKEN_STORE_SERVER__LISTEN:-$listen}"
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
