#!/usr/bin/env bash
# Runs the whole test suite on this machine: starts PostgreSQL if none runs, starts
# LocalStack KMS (installed pinned), then formatting, lints and every test.
# Idempotent; `.ci/run` calls exactly this.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NEXTEST_VERSION="0.9.143"
CARGO_AUDIT_VERSION="0.22.2"
# An offline copy of the RustSec advisory database, where the machine has one beside the
# checkout; elsewhere cargo audit fetches the current database.
ADVISORY_DB="$ROOT/../shared/advisory-db"

log() { printf '[test] %s\n' "$*" >&2; }

scripts/postgres.sh ensure
scripts/localstack.sh start
eval "$(scripts/localstack.sh env)"
# The PostgreSQL server the tests and the benchmark's smoke run create their databases on
# (test-support reads it).
export TS_TEST_DATABASE_URL="${TS_TEST_DATABASE_URL:-postgres://postgres@${PGHOST:-127.0.0.1}:${PGPORT:-5432}}"

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest $NEXTEST_VERSION"
  cargo install --locked "cargo-nextest@$NEXTEST_VERSION"
fi

if ! cargo audit --version 2>/dev/null | grep -q " $CARGO_AUDIT_VERSION\$"; then
  log "installing cargo-audit $CARGO_AUDIT_VERSION (a few minutes, once)"
  cargo install --locked "cargo-audit@$CARGO_AUDIT_VERSION"
fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
# Dependencies: any RustSec advisory (warnings such as "unmaintained" included) that
# .cargo/audit.toml does not list with its reason fails the run.
log "cargo audit"
if [ -d "$ADVISORY_DB" ]; then
  cargo audit --db "$ADVISORY_DB" --no-fetch --deny warnings
else
  cargo audit --deny warnings
fi
scripts/infra-check.sh  # Terraform in infra/: parses, documented, checkov clean (pinned, cached)
log "cargo nextest run"
# The whole workspace: the service, the benchmark (its smoke run) and the test support.
cargo nextest run --locked --workspace --no-fail-fast
# The contract: schemathesis (pinned) over /openapi.json of the binary nextest just built.
scripts/contract-test.sh
# The TypeScript client (clients/typescript) against the real service, after `npm ci`.
scripts/ts-client-test.sh
