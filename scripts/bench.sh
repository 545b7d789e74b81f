#!/usr/bin/env bash
# Runs the benchmark (bench/) on this machine, in one command: PostgreSQL (started if none
# runs), LocalStack KMS (installed pinned), a release build of `token-store` and `bench`,
# then `bench`, which prints markdown tables and writes the figures as JSON.
#
# Usage: scripts/bench.sh [--users N] [--duration S] [--out FILE] [other bench options]
#   --users N      users seeded through the API (default 10000)
#   --duration S   seconds per measurement (default 5)
#   --trials N     warm-read trials (service, HTTP floor, pgbench alternated; medians reported; default 3)
#   --out FILE     JSON results (default target/bench/results.json)
#   --smoke        a seconds-long run that only checks the benchmark works
#   --help         every option of the bench binary
# See docs/benchmarks.md for what each figure means. Takes about 5 minutes after the build
# with the defaults. Environment: CARGO_TARGET_DIR (honoured), RUST_LOG (passed to the
# services), TS_TEST_DATABASE_URL (PostgreSQL server, default
# postgres://postgres@127.0.0.1:5432; the tests read the same), LOCALSTACK_PORT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

log() { printf '[bench.sh] %s\n' "$*" >&2; }

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
  fi
done

scripts/postgres.sh ensure >&2
command -v pgbench >/dev/null 2>&1 || {
  log "pgbench not found (it comes with postgresql-client); installing"
  if [[ "$(id -u)" == 0 ]]; then apt-get install -y postgresql-client; else sudo apt-get install -y postgresql-client; fi
}
scripts/localstack.sh start >&2   # keep standard output for the tables
eval "$(scripts/localstack.sh env)"
export TS_TEST_DATABASE_URL="${TS_TEST_DATABASE_URL:-postgres://postgres@${PGHOST:-127.0.0.1}:${PGPORT:-5432}}"

log "building token-store and bench (release)"
cargo build --release --locked -p token-store -p bench

# The storm holds one connection per request (1,000 by default), plus the services' own.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p target/bench
exec "$TARGET_DIR/release/bench" "$@"
