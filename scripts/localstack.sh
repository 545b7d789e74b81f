#!/usr/bin/env bash
# Local KMS for development and tests: LocalStack community 4.9.2 in host mode
# (no Docker needed), KMS and Secrets Manager only, bound to 127.0.0.1.
#
# Usage: scripts/localstack.sh [start|stop|status|env]
#   start   (default) install LocalStack into a cached virtualenv if needed,
#           start it in the background (or reuse one already answering on the
#           port), wait until KMS and Secrets Manager are healthy, then run localstack/init_kms.py
#           (idempotent: fixed key id + alias/token-store-local).
#   stop    stop the LocalStack started by this script (pid file), SIGTERM then
#           SIGKILL after ~10 s.
#   status  say whether KMS answers healthy on the port (exit 0 if so, 1 if not).
#   env     print `export ...` lines for the AWS SDK: eval "$(scripts/localstack.sh env)"
#
# Environment:
#   LOCALSTACK_PORT          port to listen on / look for (default 4566)
#   TOKEN_STORE_CACHE_DIR    where the virtualenv lives (default ~/.cache/token-store)
#   LOCALSTACK_START_TIMEOUT seconds to wait for health after starting (default 60)
#   PYTHON                   Python 3.11 interpreter to build the virtualenv with
#                            (default: python3.11, else python3 if it is 3.11)
#
# Why pinned: newer LocalStack does not run on Python 3.11 and an unpinned 4.9.2
# install pulls incompatible dependencies; see localstack/constraints-*.txt.
# Machines WITH a Docker engine can use localstack/docker-compose.yml instead.
set -euo pipefail

LOCALSTACK_VERSION="4.9.2"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
CONSTRAINTS="${REPO_ROOT}/localstack/constraints-localstack-${LOCALSTACK_VERSION}-py311.txt"
INIT_SCRIPT="${REPO_ROOT}/localstack/init_kms.py"

CACHE_DIR="${TOKEN_STORE_CACHE_DIR:-${HOME}/.cache/token-store}"
VENV_DIR="${CACHE_DIR}/localstack-${LOCALSTACK_VERSION}-py311"
# Written only after a successful install; holds the hash of the pin list so a
# changed pin list triggers a reinstall.
MARKER="${VENV_DIR}/.token-store-install-ok"

PORT="${LOCALSTACK_PORT:-4566}"
[[ "${PORT}" =~ ^[0-9]+$ ]] || { echo "[localstack] ERROR: LOCALSTACK_PORT must be a number, got '${PORT}'" >&2; exit 1; }
HOST="127.0.0.1"
ENDPOINT="http://${HOST}:${PORT}"
START_TIMEOUT="${LOCALSTACK_START_TIMEOUT:-60}"

# State lives in the repo's gitignored .local/. The default port uses plain
# names; another port gets its own files so two instances never share a pid file.
STATE_DIR="${REPO_ROOT}/.local"
if [[ "${PORT}" == "4566" ]]; then SUFFIX=""; else SUFFIX="-${PORT}"; fi
DATA_DIR="${STATE_DIR}/localstack${SUFFIX}"   # LOCALSTACK_VOLUME_DIR / FILESYSTEM_ROOT
PID_FILE="${STATE_DIR}/localstack${SUFFIX}.pid"
LOG_FILE="${STATE_DIR}/localstack${SUFFIX}.log"

log() { printf '[localstack] %s\n' "$*" >&2; }
die() { printf '[localstack] ERROR: %s\n' "$*" >&2; exit 1; }

# A Python for small helper checks (health probe, port probe). Any python3 will do.
helper_python() {
    if [[ -x "${VENV_DIR}/bin/python" ]]; then
        echo "${VENV_DIR}/bin/python"
    elif command -v python3 >/dev/null 2>&1; then
        command -v python3
    else
        die "python3 not found (needed to probe LocalStack)."
    fi
}

# Prints one word about what answers on the port:
#   healthy  LocalStack answers and reports kms "available" or "running"
#   other    something accepts connections but is not a healthy LocalStack KMS
#   down     nothing accepts connections
probe() {
    "$(helper_python)" - "${HOST}" "${PORT}" <<'PY'
import json, socket, sys, urllib.request
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=2).close()
except OSError:
    print("down"); sys.exit(0)
try:
    with urllib.request.urlopen(f"http://{host}:{port}/_localstack/health", timeout=3) as r:
        services = json.load(r).get("services", {})
    states = [services.get(name) for name in ("kms", "secretsmanager")]
    if "disabled" in states:
        print("missing")  # a LocalStack started without one of the services we need
    else:
        print("healthy" if all(s in ("available", "running") for s in states) else "other")
except Exception:
    print("other")
PY
}

# PID from the pid file if that process is alive and is a LocalStack runtime.
managed_pid() {
    [[ -f "${PID_FILE}" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"${PID_FILE}")"
    [[ -n "${pid}" ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    # Guard against PID reuse: the process must be our LocalStack.
    tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q 'localstack.runtime.main' || return 1
    echo "${pid}"
}

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

constraints_hash() { sha256sum "${CONSTRAINTS}" | cut -d' ' -f1; }

ensure_installed() {
    [[ -f "${CONSTRAINTS}" ]] || die "pin list missing: ${CONSTRAINTS}"
    local want
    want="localstack-core[base-runtime]==${LOCALSTACK_VERSION} moto-ext constraints-sha256=$(constraints_hash)"
    if [[ -f "${MARKER}" && "$(cat "${MARKER}")" == "${want}" && -x "${VENV_DIR}/bin/python" ]]; then
        log "LocalStack ${LOCALSTACK_VERSION} already installed in ${VENV_DIR}"
        return 0
    fi

    local py
    py="$(find_base_python)" || die "Python 3.11 not found (LocalStack ${LOCALSTACK_VERSION} is pinned for 3.11). Set PYTHON=/path/to/python3.11."
    log "installing LocalStack ${LOCALSTACK_VERSION} into ${VENV_DIR} (with ${py}; takes ~40 s)..."
    # Start from scratch: a directory without the marker is a failed/partial or outdated install.
    rm -rf "${VENV_DIR}"
    mkdir -p "${CACHE_DIR}"
    "${py}" -m venv "${VENV_DIR}" \
        || die "could not create a virtualenv with ${py} (on Debian system Python: apt-get install python3-venv)."
    local started=${SECONDS}
    if ! "${VENV_DIR}/bin/python" -m pip install --disable-pip-version-check --quiet \
            -c "${CONSTRAINTS}" "localstack-core[base-runtime]==${LOCALSTACK_VERSION}" moto-ext; then
        die "pip install failed; the virtualenv ${VENV_DIR} is left without its marker and will be rebuilt on the next run."
    fi
    # moto backs LocalStack's Secrets Manager (not part of base-runtime).
    "${VENV_DIR}/bin/python" -c 'import localstack, boto3, moto' \
        || die "LocalStack installed but does not import; see the errors above."
    echo "${want}" >"${MARKER}"
    log "installed in $((SECONDS - started)) s"
}

run_init() {
    log "running localstack/init_kms.py against ${ENDPOINT}"
    AWS_ENDPOINT_URL="${ENDPOINT}" "${VENV_DIR}/bin/python" "${INIT_SCRIPT}" \
        || die "KMS init failed (see above)."
}

wait_healthy() {
    local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
    while (( SECONDS < deadline )); do
        if [[ "$(probe)" == "healthy" ]]; then
            return 0
        fi
        if ! kill -0 "${pid}" 2>/dev/null; then
            log "LocalStack (pid ${pid}) exited during startup. Last lines of ${LOG_FILE}:"
            tail -n 40 "${LOG_FILE}" >&2 || true
            rm -f "${PID_FILE}"
            die "LocalStack did not start."
        fi
        sleep 0.5
    done
    log "LocalStack (pid ${pid}) not healthy after ${START_TIMEOUT} s. Last lines of ${LOG_FILE}:"
    tail -n 40 "${LOG_FILE}" >&2 || true
    die "LocalStack did not become healthy; stop it with: scripts/localstack.sh stop"
}

cmd_start() {
    ensure_installed

    local state pid
    state="$(probe)"
    if [[ "${state}" == "missing" ]] && managed_pid >/dev/null; then
        log "the running LocalStack lacks a service this project needs (KMS, Secrets Manager); restarting it"
        cmd_stop
        state="$(probe)"
    fi
    if [[ "${state}" == "healthy" ]]; then
        if pid="$(managed_pid)"; then
            log "already running and healthy at ${ENDPOINT} (pid ${pid}); reusing it"
        else
            log "a LocalStack with KMS already answers at ${ENDPOINT} (not started by this script); reusing it"
        fi
    elif pid="$(managed_pid)"; then
        # Ours, but not healthy yet (e.g. still starting): wait for it.
        log "LocalStack (pid ${pid}) is running but not healthy yet; waiting up to ${START_TIMEOUT} s"
        wait_healthy "${pid}"
    elif [[ "${state}" == "other" || "${state}" == "missing" ]]; then
        die "port ${PORT} on ${HOST} is in use by something that is not a healthy LocalStack with KMS and Secrets Manager. Free it, or use another port: LOCALSTACK_PORT=4567 $0 start"
    else
        mkdir -p "${STATE_DIR}" "${DATA_DIR}"
        rm -f "${PID_FILE}"
        log "starting LocalStack ${LOCALSTACK_VERSION} (KMS and Secrets Manager) on ${ENDPOINT}; log: ${LOG_FILE}"
        local started=${SECONDS}
        {
            echo "===== $(date -u '+%Y-%m-%dT%H:%M:%SZ') starting LocalStack ${LOCALSTACK_VERSION} on ${HOST}:${PORT} ====="
        } >>"${LOG_FILE}"
        # setsid + nohup: own session, immune to the terminal's hangup, so it
        # outlives this script. The inner sh writes its own PID and then execs
        # Python, so the pid file holds the LocalStack process itself.
        # GATEWAY_SERVER=hypercorn binds only 127.0.0.1; DNS_ADDRESS=0 disables
        # the DNS server (fails on these machines); no certificate download.
        # OVERRIDE_IN_DOCKER=0: these machines are themselves containers
        # (/.dockerenv), which makes LocalStack assume its own Docker image and
        # ignore FILESYSTEM_ROOT (it would write /var/lib/localstack,
        # /etc/localstack, /tmp/localstack and probe the Docker bridge). Forcing
        # host mode keeps all its files under .local/localstack.
        # shellcheck disable=SC2016  # $$, $1 and $@ belong to the inner sh
        (
            cd "${DATA_DIR}"
            env \
                OVERRIDE_IN_DOCKER=0 \
                SERVICES=kms,secretsmanager \
                GATEWAY_LISTEN="${HOST}:${PORT}" \
                GATEWAY_SERVER=hypercorn \
                SKIP_SSL_CERT_DOWNLOAD=1 \
                DISABLE_EVENTS=1 \
                DNS_ADDRESS=0 \
                LOCALSTACK_VOLUME_DIR="${DATA_DIR}" \
                FILESYSTEM_ROOT="${DATA_DIR}" \
                setsid nohup sh -c 'echo $$ >"$1"; shift; exec "$@"' sh \
                    "${PID_FILE}" "${VENV_DIR}/bin/python" -m localstack.runtime.main \
                    </dev/null >>"${LOG_FILE}" 2>&1 &
        )
        # Wait briefly for the pid file written by the child.
        local _
        for _ in $(seq 1 50); do
            [[ -s "${PID_FILE}" ]] && break
            sleep 0.1
        done
        [[ -s "${PID_FILE}" ]] || die "LocalStack process did not start (no pid file); see ${LOG_FILE}"
        pid="$(tr -dc '0-9' <"${PID_FILE}")"
        wait_healthy "${pid}"
        log "healthy after $((SECONDS - started)) s (pid ${pid})"
    fi

    run_init
    local env_cmd="$0 env"
    [[ "${PORT}" == "4566" ]] || env_cmd="LOCALSTACK_PORT=${PORT} ${env_cmd}"
    log "ready: eval \"\$(${env_cmd})\"   # exports AWS_ENDPOINT_URL=${ENDPOINT} etc."
}

cmd_stop() {
    local pid
    if ! pid="$(managed_pid)"; then
        rm -f "${PID_FILE}"
        if [[ "$(probe)" == "down" ]]; then
            log "not running (nothing on port ${PORT})"
        else
            log "no LocalStack started by this script is running; port ${PORT} is served by something else, left alone"
        fi
        return 0
    fi
    log "stopping LocalStack (pid ${pid})"
    kill -TERM "${pid}" 2>/dev/null || true
    local _
    for _ in $(seq 1 100); do   # ~10 s
        kill -0 "${pid}" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "${pid}" 2>/dev/null; then
        log "still alive after 10 s; sending SIGKILL"
        # It leads its own session/process group (setsid): kill any leftovers too.
        kill -KILL -- "-${pid}" 2>/dev/null || kill -KILL "${pid}" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "${PID_FILE}"
    log "stopped"
}

cmd_status() {
    local state pid who="not started by this script"
    state="$(probe)"
    if pid="$(managed_pid)"; then who="pid ${pid}, started by this script"; fi
    case "${state}" in
        healthy) echo "LocalStack KMS is healthy at ${ENDPOINT} (${who})"; return 0 ;;
        other)   echo "port ${PORT} answers but KMS is not healthy there (${who})"; return 1 ;;
        *)       if [[ -n "${pid:-}" ]]; then
                     echo "LocalStack process ${pid} is alive but not answering on ${ENDPOINT} (starting?)"
                 else
                     echo "LocalStack is not running on ${ENDPOINT}"
                 fi
                 return 1 ;;
    esac
}

cmd_env() {
    # stdout only carries the exports, so `eval "$(scripts/localstack.sh env)"` works.
    cat <<EOF
export AWS_ENDPOINT_URL=${ENDPOINT}
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
EOF
}

case "${1:-start}" in
    start)  cmd_start ;;
    stop)   cmd_stop ;;
    status) cmd_status ;;
    env)    cmd_env ;;
    -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
    *) die "unknown command '${1}'. Usage: $0 [start|stop|status|env]" ;;
esac
