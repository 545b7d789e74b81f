#!/usr/bin/env bash
# Contract test: schemathesis (pinned in contract/requirements.txt) generates requests from
# the service's OpenAPI 3.1 document and checks every response against it (no 5xx; status
# codes, content types, bodies and headers as documented; invalid input refused, valid input
# accepted; auth enforced; unsupported methods 405), against a real `token-store serve` on
# a fresh database, LocalStack KMS and a stand-in OAuth provider (contract/fake_provider.py).
#
# Usage: scripts/contract-test.sh [-- EXTRA_SCHEMATHESIS_RUN_ARGS...]
#   e.g. scripts/contract-test.sh -- --include-path-regex '^/v1/' --max-failures 1
#   (a filter that leaves out linked operations needs --phases examples,coverage,fuzzing:
#   the stateful phase errors when it has no link left to follow)
# Exit status: 0 if every check passed, non-zero otherwise (schemathesis's own, or 1 for a
# set-up failure). Everything it starts is stopped, and its database dropped, at exit.
#
# Steps: PostgreSQL (scripts/postgres.sh ensure) and LocalStack KMS (scripts/localstack.sh
# start); schemathesis installed into a cached virtualenv keyed by the hash of
# contract/requirements.txt; the debug binary (built with cargo if missing); a database
# token_store_contract_<random>, migrated; a generated configuration in a temporary folder
# (a free loopback port, one client with a random API key and every permission,
# [providers.google] pointing at the stand-in provider); `token-store serve` in the
# background until /readyz answers 200; then `st run` against http://127.0.0.1:PORT.
#
# Environment:
#   CONTRACT_SCHEMA        OpenAPI file to test with instead of the service's own
#                          /openapi.json (development); the requests still go to the service
#   CONTRACT_MAX_EXAMPLES  test cases per operation and phase (default 25)
#   CONTRACT_SEED          schemathesis/Hypothesis seed (default 20251202): same seed, same cases
#   CONTRACT_WORKERS       concurrent schemathesis workers (default 1: with 2, Python 3.11.7's
#                          ast.parse, which Hypothesis calls from the workers' threads, fails
#                          now and then with "SystemError: AST constructor recursion depth
#                          mismatch", CPython gh-106905; one worker takes ~10 s longer)
#   CONTRACT_BUILD         1: run `cargo build --locked --bin token-store` even if the binary
#                          exists (default: only when it is missing, see TOKEN_STORE_BIN)
#   TOKEN_STORE_BIN        the service binary (default ${CARGO_TARGET_DIR:-target}/debug/token-store)
#   TOKEN_STORE_CACHE_DIR  where the virtualenv lives (default ~/.cache/token-store)
#   PYTHON                 Python 3.11 to build the virtualenv with (default python3.11, else
#                          python3 if it is 3.11)
#   PGHOST, PGPORT, PGPASSWORD, LOCALSTACK_PORT   as for scripts/postgres.sh and localstack.sh
#
# Output (gitignored .local/contract/): schemathesis.log (the console output), junit.xml,
# token-store.log (the service's log, RUST_LOG=info,token_store::http=debug),
# fake-provider.log. The virtualenv: ~/.cache/token-store/schemathesis-<sha256 prefix>;
# delete it to force a reinstall.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
cd "${REPO_ROOT}"

CONTRACT_DIR="${REPO_ROOT}/contract"
REQUIREMENTS="${CONTRACT_DIR}/requirements.txt"
ST_CONFIG="${CONTRACT_DIR}/schemathesis.toml"
ST_HOOKS="${CONTRACT_DIR}/hooks.py"
FAKE_PROVIDER="${CONTRACT_DIR}/fake_provider.py"

CACHE_DIR="${TOKEN_STORE_CACHE_DIR:-${HOME}/.cache/token-store}"
OUT_DIR="${REPO_ROOT}/.local/contract"
BIN="${TOKEN_STORE_BIN:-${CARGO_TARGET_DIR:-target}/debug/token-store}"
[[ "${BIN}" == /* ]] || BIN="${REPO_ROOT}/${BIN}"

MAX_EXAMPLES="${CONTRACT_MAX_EXAMPLES:-25}"
SEED="${CONTRACT_SEED:-20251202}"
WORKERS="${CONTRACT_WORKERS:-1}"
REQUEST_TIMEOUT=10      # s, one request; the service's own limit below is 10 s as well
READY_TIMEOUT=60        # s, until /readyz answers 200
PG_HOST="${PGHOST:-127.0.0.1}"
PG_PORT="${PGPORT:-5432}"
KMS_KEY_ID="alias/token-store-local"  # created by localstack/init_kms.py

log() { printf '[contract] %s\n' "$*" >&2; }
die() { printf '[contract] ERROR: %s\n' "$*" >&2; exit 1; }

for n in "${MAX_EXAMPLES}" "${SEED}" "${WORKERS}"; do
  [[ "${n}" =~ ^[0-9]+$ ]] || die "CONTRACT_MAX_EXAMPLES, CONTRACT_SEED and CONTRACT_WORKERS must be numbers"
done
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
if [[ $# -gt 0 ]]; then
  [[ "$1" == "--" ]] || die "unknown argument '$1'. Usage: $0 [-- EXTRA_SCHEMATHESIS_RUN_ARGS...]"
  shift
fi
EXTRA_ARGS=("$@")
if [[ -n "${CONTRACT_SCHEMA:-}" ]]; then
  [[ -f "${CONTRACT_SCHEMA}" ]] || die "CONTRACT_SCHEMA=${CONTRACT_SCHEMA}: no such file"
  CONTRACT_SCHEMA="$(cd "$(dirname "${CONTRACT_SCHEMA}")" && pwd)/$(basename "${CONTRACT_SCHEMA}")"
fi

# ---------------------------------------------------------------------------------------
# schemathesis in a virtualenv keyed by the pin list: a changed pin list gets a new one.

find_base_python() {
  local cand
  for cand in "${PYTHON:-}" python3.11 python3; do
    [[ -n "${cand}" ]] || continue
    command -v "${cand}" >/dev/null 2>&1 || continue
    if "${cand}" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      command -v "${cand}"
      return 0
    fi
  done
  return 1
}

REQ_HASH="$(sha256sum "${REQUIREMENTS}" | cut -d' ' -f1)"
VENV_DIR="${CACHE_DIR}/schemathesis-${REQ_HASH:0:16}"
# Written only after a successful install.
MARKER="${VENV_DIR}/.token-store-install-ok"

ensure_schemathesis() {
  [[ -f "${REQUIREMENTS}" ]] || die "pin list missing: ${REQUIREMENTS}"
  local want="requirements-sha256=${REQ_HASH}"
  if [[ -f "${MARKER}" && "$(cat "${MARKER}")" == "${want}" && -x "${VENV_DIR}/bin/st" ]]; then
    log "schemathesis already installed in ${VENV_DIR}"
    return 0
  fi
  local py
  py="$(find_base_python)" || die "Python 3.11 not found (contract/requirements.txt is compiled for 3.11). Set PYTHON=/path/to/python3.11."
  mkdir -p "${CACHE_DIR}"
  # Two runs at once (e.g. two checkouts) must not install into the same folder together.
  exec 9>"${VENV_DIR}.lock"
  flock 9
  if [[ -f "${MARKER}" && "$(cat "${MARKER}")" == "${want}" && -x "${VENV_DIR}/bin/st" ]]; then
    log "schemathesis installed meanwhile in ${VENV_DIR}"
  else
    log "installing schemathesis into ${VENV_DIR} (with ${py}; takes ~15 s)..."
    # A folder without the marker is a failed/partial install: start from scratch.
    rm -rf "${VENV_DIR}"
    "${py}" -m venv "${VENV_DIR}" \
      || die "could not create a virtualenv with ${py} (on Debian system Python: apt-get install python3-venv)."
    local started=${SECONDS} hashes=()
    # Every line of the pin list carries its sha256 (pip-compile --generate-hashes).
    grep -q -- '--hash=' "${REQUIREMENTS}" && hashes=(--require-hashes)
    "${VENV_DIR}/bin/python" -m pip install --disable-pip-version-check --quiet \
      "${hashes[@]}" -r "${REQUIREMENTS}" \
      || die "pip install failed; ${VENV_DIR} is left without its marker and will be rebuilt on the next run."
    "${VENV_DIR}/bin/st" --version >/dev/null || die "schemathesis installed but does not run; see above."
    echo "${want}" >"${MARKER}"
    log "installed in $((SECONDS - started)) s"
  fi
  flock -u 9
  exec 9>&-
}

# ---------------------------------------------------------------------------------------
# Clean-up: whatever was started is stopped, the database dropped, even on failure.

WORK_DIR=""
DB_NAME=""
SERVICE_PID=""
PROVIDER_PID=""
ST_PID=""

# shellcheck disable=SC2317  # called from the EXIT trap
stop_pid() {  # PID NAME: SIGTERM, up to 10 s, then SIGKILL
  local pid="$1" name="$2"
  kill -0 "${pid}" 2>/dev/null || return 0
  log "stopping ${name} (pid ${pid})"
  kill -TERM "${pid}" 2>/dev/null || true
  local _
  for _ in $(seq 1 100); do
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "${pid}" 2>/dev/null; then
    log "${name} still running after 10 s; sending SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  wait "${pid}" 2>/dev/null || true
}

psql_admin() {
  psql -w -X -q -v ON_ERROR_STOP=1 -h "${PG_HOST}" -p "${PG_PORT}" -U postgres -d postgres "$@"
}

# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n "${ST_PID}" ]] && stop_pid "${ST_PID}" schemathesis
  [[ -n "${SERVICE_PID}" ]] && stop_pid "${SERVICE_PID}" token-store
  [[ -n "${PROVIDER_PID}" ]] && stop_pid "${PROVIDER_PID}" "the stand-in provider"
  if [[ -n "${DB_NAME}" ]]; then
    if psql_admin -c "DROP DATABASE IF EXISTS \"${DB_NAME}\" WITH (FORCE)" >/dev/null 2>&1; then
      log "dropped database ${DB_NAME}"
    else
      log "WARNING: could not drop database ${DB_NAME}; drop it by hand"
    fi
  fi
  [[ -n "${WORK_DIR}" ]] && rm -rf "${WORK_DIR}"
  if (( rc == 0 )); then
    log "PASSED"
  else
    log "FAILED (exit ${rc}); logs and report in ${OUT_DIR#"${REPO_ROOT}"/}/"
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The binary reads every TOKEN_STORE_* variable as configuration and refuses unknown ones;
# the run is configured by its file alone, so none of the caller's may reach it.
# `env` execs the binary, so `token_store ... &` would leave a subshell between $! and the
# service: the background start below calls env directly instead.
STRIP_ENV=()
while IFS= read -r name; do
  if [[ "${name}" == TOKEN_STORE_* ]]; then STRIP_ENV+=(-u "${name}"); fi
done < <(compgen -e)
token_store() {
  env "${STRIP_ENV[@]}" NO_COLOR=1 "${BIN}" "$@"
}

free_port() {
  "${VENV_DIR}/bin/python" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------

STARTED=${SECONDS}
mkdir -p "${OUT_DIR}"
rm -f "${OUT_DIR}/junit.xml" "${OUT_DIR}/schemathesis.log" "${OUT_DIR}/token-store.log" \
  "${OUT_DIR}/fake-provider.log"

scripts/postgres.sh ensure
scripts/localstack.sh start
eval "$(scripts/localstack.sh env)"
ensure_schemathesis

if [[ ! -x "${BIN}" || "${CONTRACT_BUILD:-0}" == "1" ]]; then
  [[ -z "${TOKEN_STORE_BIN:-}" ]] || die "TOKEN_STORE_BIN=${TOKEN_STORE_BIN} is not an executable file"
  log "building token-store (debug): cargo build --locked --bin token-store"
  cargo build --locked --bin token-store
fi
[[ -x "${BIN}" ]] || die "no binary at ${BIN}"
log "service binary: ${BIN#"${REPO_ROOT}"/} (built $(date -u -r "${BIN}" '+%Y-%m-%d %H:%M:%SZ'))"

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/token-store-contract.XXXXXX")"

# A fresh database, dropped at exit.
DB_NAME="token_store_contract_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
psql_admin -c "CREATE DATABASE \"${DB_NAME}\"" >/dev/null || die "could not create database ${DB_NAME}"
log "created database ${DB_NAME}"
DB_URL="postgres://postgres@${PG_HOST}:${PG_PORT}/${DB_NAME}"
if [[ -n "${PGPASSWORD:-}" ]]; then
  DB_URL="postgres://postgres:$("${VENV_DIR}/bin/python" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "${PGPASSWORD}")@${PG_HOST}:${PG_PORT}/${DB_NAME}"
fi

# The stand-in OAuth provider (an ephemeral loopback port, written to a file).
"${VENV_DIR}/bin/python" "${FAKE_PROVIDER}" "${WORK_DIR}/provider.port" \
  >"${OUT_DIR}/fake-provider.log" 2>&1 </dev/null &
PROVIDER_PID=$!
for _ in $(seq 1 50); do [[ -s "${WORK_DIR}/provider.port" ]] && break; sleep 0.1; done
[[ -s "${WORK_DIR}/provider.port" ]] || die "the stand-in provider did not start; see ${OUT_DIR}/fake-provider.log"
PROVIDER_URL="http://127.0.0.1:$(cat "${WORK_DIR}/provider.port")"
log "stand-in OAuth provider at ${PROVIDER_URL} (pid ${PROVIDER_PID})"

# A random API key for this run; the configuration holds only its hash.
API_KEY="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
KEY_SHA256="$(printf '%s\n' "${API_KEY}" | token_store hash-key)"
[[ "${KEY_SHA256}" =~ ^[0-9a-f]{64}$ ]] || die "token-store hash-key printed '${KEY_SHA256}', not a SHA-256"

PORT="$(free_port)"
BASE_URL="http://127.0.0.1:${PORT}"
CONFIG="${WORK_DIR}/token-store.toml"
cat >"${CONFIG}" <<EOF
# Generated by scripts/contract-test.sh for one run.
[server]
listen = "127.0.0.1:${PORT}"
log_format = "pretty"
request_timeout_ms = 10000

[database]
url = "${DB_URL}"
max_connections = 8

[kms]
key_id = "${KMS_KEY_ID}"
endpoint_url = "${AWS_ENDPOINT_URL}"

[refresh]
# Short, so that nothing generated can hold a request for long.
provider_timeout_ms = 2000
lock_timeout_ms = 5000

# The stand-in provider: refreshes and revocations of "google" grants succeed.
[providers.google]
client_id = "contract-test"
client_secret = "contract-test-secret"
token_endpoint = "${PROVIDER_URL}/token"
revoke_endpoint = "${PROVIDER_URL}/revoke"

[[clients]]
name = "contract-test"
key_sha256 = "${KEY_SHA256}"
permissions = ["read", "write", "refresh", "revoke", "read_refresh_token", "inspect"]
EOF

log "token-store migrate (database ${DB_NAME})"
token_store migrate --config "${CONFIG}" >"${OUT_DIR}/token-store.log" 2>&1 \
  || { tail -n 30 "${OUT_DIR}/token-store.log" >&2; die "migrate failed"; }

log "starting token-store serve on ${BASE_URL} (log: ${OUT_DIR#"${REPO_ROOT}"/}/token-store.log)"
env "${STRIP_ENV[@]}" NO_COLOR=1 RUST_LOG="info,token_store::http=debug" \
  "${BIN}" serve --config "${CONFIG}" >>"${OUT_DIR}/token-store.log" 2>&1 </dev/null &
SERVICE_PID=$!
deadline=$((SECONDS + READY_TIMEOUT))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${BASE_URL}/readyz" || true)" == "200" ]]; do
  if ! kill -0 "${SERVICE_PID}" 2>/dev/null; then
    tail -n 30 "${OUT_DIR}/token-store.log" >&2
    SERVICE_PID=""
    die "token-store exited during start-up"
  fi
  if (( SECONDS >= deadline )); then
    tail -n 30 "${OUT_DIR}/token-store.log" >&2
    die "token-store did not answer 200 on /readyz within ${READY_TIMEOUT} s"
  fi
  sleep 0.2
done
log "token-store is ready (pid ${SERVICE_PID})"

if [[ -n "${CONTRACT_SCHEMA:-}" ]]; then
  SCHEMA_LOCATION="${CONTRACT_SCHEMA}"
  log "schema: ${SCHEMA_LOCATION} (CONTRACT_SCHEMA)"
else
  SCHEMA_LOCATION="${BASE_URL}/openapi.json"
  status="$(curl -s -o "${WORK_DIR}/openapi.json" -w '%{http_code}' --max-time 5 "${SCHEMA_LOCATION}" || true)"
  [[ "${status}" == "200" ]] \
    || die "GET /openapi.json answered HTTP ${status}, not 200: this binary serves no OpenAPI document (set CONTRACT_SCHEMA=path/to/openapi.json to test against a file)"
  cp "${WORK_DIR}/openapi.json" "${OUT_DIR}/openapi.json"
  log "schema: ${SCHEMA_LOCATION} (copy: ${OUT_DIR#"${REPO_ROOT}"/}/openapi.json)"
fi

# Checks: all of them (not_a_server_error, status_code_conformance, content_type_conformance,
# response_headers_conformance, response_schema_conformance, negative_data_rejection,
# missing_required_header, unsupported_method, allow_header_conformance, use_after_free,
# ensure_resource_availability, ignored_auth), except:
#   object_level_authorization  "one identity must not read an object another created": the
#     callers are trusted services and any client with `read` may read any user's grant by
#     design (there is no per-object owner); it also needs several identities configured.
#   positive_data_acceptance    replaced by positive_data_acceptance_token_store
#     (contract/hooks.py): the same check, except that a 422 provider_not_configured, the
#     documented answer to a valid refresh for a provider without an OAuth client, passes.
# Phases: all four (examples, coverage, fuzzing, stateful). Settings that are not flags
# (no state kept between runs, the dictionaries that make requests hit stored grants) are
# in contract/schemathesis.toml.
color=(--no-color)
[[ -t 1 ]] && color=()
ST_ARGS=(
  --config-file "${ST_CONFIG}"
  run "${SCHEMA_LOCATION}"
  --url "${BASE_URL}"
  --header "Authorization: Bearer ${API_KEY}"
  --checks all
  --exclude-checks "object_level_authorization,positive_data_acceptance"
  --max-examples "${MAX_EXAMPLES}"
  --seed "${SEED}"
  --workers "${WORKERS}"
  --request-timeout "${REQUEST_TIMEOUT}"
  --generation-database none
  --report junit
  --report-junit-path "${OUT_DIR}/junit.xml"
  "${color[@]}"
  "${EXTRA_ARGS[@]}"
)
shown="st ${ST_ARGS[*]}"
log "running: ${shown//${API_KEY}/<random key>}"
st_started=${SECONDS}
# In the background with `wait`, so that SIGTERM/SIGINT reach the trap at once (bash runs
# traps only between foreground commands); output to the console and schemathesis.log.
exec {tee_fd}> >(tee "${OUT_DIR}/schemathesis.log")
TEE_PID=$!
# From the temporary folder: nothing schemathesis writes lands in the work tree.
(cd "${WORK_DIR}" && SCHEMATHESIS_HOOKS="${ST_HOOKS}" exec "${VENV_DIR}/bin/st" "${ST_ARGS[@]}") \
  >&"${tee_fd}" 2>&1 </dev/null &
ST_PID=$!
st_rc=0
wait "${ST_PID}" || st_rc=$?
ST_PID=""
exec {tee_fd}>&-
wait "${TEE_PID}" 2>/dev/null || true
log "schemathesis finished in $((SECONDS - st_started)) s (exit ${st_rc}); whole run $((SECONDS - STARTED)) s"
if grep -qE '(ERROR|panicked)' "${OUT_DIR}/token-store.log"; then
  log "the service logged errors during the run:"
  grep -E '(ERROR|panicked)' "${OUT_DIR}/token-store.log" | tail -n 20 >&2
fi
exit "${st_rc}"
