#!/usr/bin/env bash
# Tests the TypeScript client (clients/typescript) against the real service: builds
# token-store, makes sure PostgreSQL and LocalStack KMS answer, creates a fresh database,
# migrates it, then runs `npm ci`, the build and the tests of the package (on its tsc output). The tests start
# a fake OAuth provider and `token-store serve` themselves (clients/typescript/test/support).
#
# Usage: scripts/ts-client-test.sh
# Needs: Rust (cargo), Node 20+ and npm; PostgreSQL and LocalStack come from
# scripts/postgres.sh and scripts/localstack.sh (see README "Quick start").
# Environment: PGHOST (127.0.0.1), PGPORT (5432), PGPASSWORD, LOCALSTACK_PORT (4566),
# CARGO_TARGET_DIR (target), TS_CLIENT_TEST_BIN=/path/to/token-store uses that binary
# instead of building one, TS_CLIENT_TEST_KEEP_DB=1 keeps the test database.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PKG="$ROOT/clients/typescript"

log() { printf '[ts-client-test] %s\n' "$*" >&2; }
die() { printf '[ts-client-test] ERROR: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "node not found (Node 20 or newer is needed)"
command -v npm >/dev/null 2>&1 || die "npm not found"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
(( node_major >= 20 )) || die "Node $(node --version) is too old: 20 or newer is needed"

scripts/postgres.sh ensure
scripts/localstack.sh start
eval "$(scripts/localstack.sh env)"

if [[ -n "${TS_CLIENT_TEST_BIN:-}" ]]; then
  BIN="$TS_CLIENT_TEST_BIN"
  log "using the token-store binary $BIN (TS_CLIENT_TEST_BIN; not building)"
else
  log "building token-store (debug)"
  cargo build --locked --bin token-store
  BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/token-store"
fi
[[ -x "$BIN" ]] || die "no binary at $BIN"

PG_HOST="${PGHOST:-127.0.0.1}"
PG_PORT="${PGPORT:-5432}"
DB="token_store_ts_client_$(date +%s)_$$"
psql_admin() { psql -w -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres "$@"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ts-client-test.XXXXXX")"
cleanup() {
  local rc=$?
  if [[ "${TS_CLIENT_TEST_KEEP_DB:-}" != "1" ]]; then
    psql_admin -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1 \
      || log "could not drop database $DB"
  else
    log "kept database $DB"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

log "creating database $DB"
psql_admin -c "create database \"$DB\""
DATABASE_URL="postgres://postgres@${PG_HOST}:${PG_PORT}/${DB}"
if [[ -n "${PGPASSWORD:-}" ]]; then
  DATABASE_URL="postgres://postgres:$(node -p 'encodeURIComponent(process.argv[1])' "$PGPASSWORD")@${PG_HOST}:${PG_PORT}/${DB}"
fi

# `migrate` needs only the database and the KMS key of a configuration file.
cat >"$WORK/migrate.toml" <<EOF
[database]
url = "$DATABASE_URL"

[kms]
key_id = "alias/token-store-local"
endpoint_url = "$AWS_ENDPOINT_URL"
EOF
log "migrating $DB"
# The binary reads every TOKEN_STORE_* variable of its sections as configuration: keep the
# caller's out of it (the tests do the same for `serve`).
run_bin() { env $(env | sed -n 's/^\(TOKEN_STORE_[A-Za-z0-9_]*\)=.*/-u \1/p') "$BIN" "$@"; }
run_bin migrate --config "$WORK/migrate.toml"

cd "$PKG"
log "npm ci"
npm ci --no-audit --no-fund --ignore-scripts
log "npm run build"
npm run build
log "npm run test:built (the tests, on dist/)"
TS_CLIENT_TEST_BIN="$BIN" \
TS_CLIENT_TEST_DATABASE_URL="$DATABASE_URL" \
TS_CLIENT_TEST_KMS_ENDPOINT="$AWS_ENDPOINT_URL" \
  npm run test:built
log "passed"
