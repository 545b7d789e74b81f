#!/usr/bin/env bash
# Make sure a PostgreSQL server answers for development and tests.
#
# Usage: scripts/postgres.sh [ensure|createdb NAME|stop]
#   ensure (default) a server answers at ${PGHOST:-127.0.0.1}:${PGPORT:-5432}
#          and user postgres can log in. If none answers, in this order:
#            1. a Debian cluster on that port exists (pg_lsclusters): start it
#               with pg_ctlcluster --skip-systemctl-redirect VER NAME start;
#            2. PostgreSQL binaries exist: initdb a private cluster in
#               .local/pg (trust auth, user postgres) and start it with pg_ctl;
#            3. neither: apt-get install postgresql, then 1. (the new Debian
#               cluster gets trust auth on 127.0.0.1/::1, local development only).
#          Then waits until it is ready.
#   createdb NAME  ensure, then create database NAME (owner postgres) if missing.
#   stop   stop the private .local/pg cluster started by this script (never a
#          Debian/system cluster).
#
# Environment: PGHOST (127.0.0.1), PGPORT (5432), PGPASSWORD (if the server
# wants one), PG_READY_TIMEOUT (seconds, default 30).
# PostgreSQL refuses to run as root: as root the private cluster runs as the
# `postgres` system user (created if missing).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

HOST="${PGHOST:-127.0.0.1}"
PORT="${PGPORT:-5432}"
DB_USER="postgres"
READY_TIMEOUT="${PG_READY_TIMEOUT:-30}"
RUN_AS="postgres"  # system user owning the private cluster when we are root

# Private cluster (gitignored .local/). Non-default ports get their own directory.
if [[ "${PORT}" == "5432" ]]; then SUFFIX=""; else SUFFIX="-${PORT}"; fi
LOCAL_PGDATA="${REPO_ROOT}/.local/pg${SUFFIX}"
# Used when running as root and the postgres user cannot reach .local/ (e.g. a
# clone under /root): PostgreSQL must own and reach its data directory.
FALLBACK_PGDATA="/var/lib/token-store/pg${SUFFIX}"
PGDATA_POINTER="${REPO_ROOT}/.local/pg${SUFFIX}.datadir"  # records which one we used

log() { printf '[postgres] %s\n' "$*" >&2; }
die() { printf '[postgres] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "${PORT}" =~ ^[0-9]+$ ]] || die "PGPORT must be a number, got '${PORT}'"

is_root() { [[ "$(id -u)" -eq 0 ]]; }

as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# Highest-version PostgreSQL server bin directory (Debian layout, else from PATH).
pg_bin_dir() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "${d}/initdb" ]] || continue
        best="${d}"   # the glob sorts 13 < 14 < 15 ... (same number of digits)
    done
    if [[ -z "${best}" ]] && command -v initdb >/dev/null 2>&1; then
        best="$(dirname "$(command -v initdb)")"
    fi
    [[ -n "${best}" ]] && echo "${best}"
}

# Put the server/client binaries on PATH (Debian keeps initdb/pg_ctl off PATH).
setup_path() {
    local bin
    if bin="$(pg_bin_dir)"; then
        PATH="${PATH}:${bin}"
    fi
}

host_is_local() {
    case "${HOST}" in
        127.0.0.1|localhost|::1) return 0 ;;
        *) return 1 ;;
    esac
}

is_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "${HOST}" -p "${PORT}" -t 2
    else
        # No client tools yet: does anything accept TCP connections there?
        (exec 3<>"/dev/tcp/${HOST}/${PORT}") 2>/dev/null
    fi
}

wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until is_ready; do
        (( SECONDS < deadline )) || return 1
        sleep 0.5
    done
}

apt_install() {
    log "installing with apt-get: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    hash -r
    setup_path
}

# Client tools (psql, createdb, pg_isready) are needed for the checks below.
ensure_client() {
    if ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
        apt_install postgresql-client
    fi
}

# --- 1. Debian clusters ----------------------------------------------------

# Prints "VER NAME STATUS OWNER" of the Debian cluster configured on $PORT.
debian_cluster_on_port() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters --no-header 2>/dev/null \
        | awk -v port="${PORT}" '$3 == port { print $1, $2, $4, $5; found = 1; exit } END { exit !found }'
}

start_debian_cluster() {
    local ver="$1" name="$2" status="$3" owner="$4"
    if [[ "${status}" == online* ]]; then
        log "Debian cluster ${ver}/${name} is already online on port ${PORT}; waiting for it"
        return 0
    fi
    log "starting Debian cluster ${ver}/${name} (port ${PORT})"
    if is_root || [[ "$(id -un)" == "${owner}" ]]; then
        pg_ctlcluster --skip-systemctl-redirect "${ver}" "${name}" start
    else
        as_root pg_ctlcluster --skip-systemctl-redirect "${ver}" "${name}" start
    fi
}

# Only for a cluster this script just installed with apt: Debian's default
# pg_hba.conf wants a password over TCP, and user postgres has none. Trust
# loopback connections (first matching line wins, so prepend). Local
# development machines only.
trust_loopback() {
    local ver="$1" name="$2" hba="/etc/postgresql/$1/$2/pg_hba.conf"
    [[ -f "${hba}" ]] || return 0
    if grep -q '^# token-store: trust loopback' "${hba}"; then return 0; fi
    log "new cluster ${ver}/${name}: trusting loopback TCP connections in ${hba} (local development)"
    as_root sed -i \
        -e '1i # token-store: trust loopback (local development; added by scripts/postgres.sh)' \
        -e '1i host all all 127.0.0.1/32 trust' \
        -e '1i host all all ::1/128 trust' \
        "${hba}"
    # Reload if it is already running (apt may have started it).
    as_root pg_ctlcluster --skip-systemctl-redirect "${ver}" "${name}" reload 2>/dev/null || true
}

# --- 2. private cluster in .local/pg -----------------------------------------

# Run a command as the user that owns the private cluster (from /, so a
# private current directory does not bother it).
run_pg() {
    if is_root; then
        (cd / && runuser -u "${RUN_AS}" -- "$@")
    else
        "$@"
    fi
}

ensure_run_as_user() {
    is_root || return 0
    if ! id -u "${RUN_AS}" >/dev/null 2>&1; then
        log "creating system user '${RUN_AS}' (PostgreSQL refuses to run as root)"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "${RUN_AS}"
    fi
}

# Picks (and remembers) the data directory of the private cluster.
private_pgdata() {
    if [[ -f "${PGDATA_POINTER}" ]]; then
        local known
        known="$(cat "${PGDATA_POINTER}")"
        if [[ -d "${known}" ]]; then
            echo "${known}"
            return 0
        fi
        rm -f "${PGDATA_POINTER}"   # its directory was deleted: start over
    fi
    local dir="${LOCAL_PGDATA}"
    mkdir -p "${dir}"
    if is_root; then
        chown "${RUN_AS}:" "${dir}"
        if ! runuser -u "${RUN_AS}" -- test -w "${dir}" 2>/dev/null; then
            log "user ${RUN_AS} cannot reach ${dir} (a parent directory is private); using ${FALLBACK_PGDATA}"
            rmdir "${dir}" 2>/dev/null || true
            dir="${FALLBACK_PGDATA}"
            mkdir -p "${dir}"
            chown "${RUN_AS}:" "${dir}"
        fi
    fi
    chmod 700 "${dir}"
    echo "${dir}" >"${PGDATA_POINTER}"
    echo "${dir}"
}

start_private_cluster() {
    host_is_local || die "PGHOST=${HOST} is not local; not starting a server for it."
    ensure_run_as_user
    mkdir -p "${REPO_ROOT}/.local"
    local dir
    dir="$(private_pgdata)"

    if [[ ! -f "${dir}/PG_VERSION" ]]; then
        log "initdb: new private cluster in ${dir} (user postgres, trust auth)"
        run_pg initdb -D "${dir}" -U "${DB_USER}" -A trust -E UTF8 --no-locale >/dev/null
        local listen="${HOST}" sockdir="${dir}"
        # Unix socket paths are limited to ~107 bytes: fall back to TCP only.
        (( ${#sockdir} + 20 < 100 )) || sockdir=""
        cat >>"${dir}/postgresql.conf" <<EOF

# --- token-store private development cluster (scripts/postgres.sh) ---
port = ${PORT}
listen_addresses = '${listen}'
unix_socket_directories = '${sockdir}'
EOF
    fi

    if run_pg pg_ctl -D "${dir}" status >/dev/null 2>&1; then
        log "private cluster in ${dir} is already running; waiting for it"
        return 0
    fi
    log "starting private cluster ${dir} on ${HOST}:${PORT} (log: ${dir}/server.log)"
    # pg_ctl puts the postmaster in its own session, so it outlives this script.
    run_pg pg_ctl -D "${dir}" -l "${dir}/server.log" -w -t "${READY_TIMEOUT}" start >/dev/null \
        || { tail -n 30 "${dir}/server.log" >&2 || true; die "private cluster did not start (log above)."; }
}

# --- commands ----------------------------------------------------------------

start_server() {
    local cluster bin
    if cluster="$(debian_cluster_on_port)"; then
        # shellcheck disable=SC2086
        start_debian_cluster ${cluster}
    elif bin="$(pg_bin_dir)"; then
        log "no Debian cluster on port ${PORT}; using PostgreSQL binaries in ${bin}"
        start_private_cluster
    else
        log "no PostgreSQL installed"
        apt_install postgresql
        if cluster="$(debian_cluster_on_port)"; then
            # shellcheck disable=SC2086
            set -- ${cluster}
            trust_loopback "$1" "$2"
            start_debian_cluster "$@"
        else
            # The package made its cluster on another port (e.g. 5432 was taken).
            start_private_cluster
        fi
    fi
}

cmd_ensure() {
    setup_path
    if is_ready; then
        log "PostgreSQL is up at ${HOST}:${PORT}"
    else
        host_is_local || die "nothing answers at ${HOST}:${PORT} and it is not a local address; start that server yourself."
        log "nothing answers at ${HOST}:${PORT}; starting a server"
        start_server
        wait_ready || die "PostgreSQL did not become ready at ${HOST}:${PORT} within ${READY_TIMEOUT} s."
        log "PostgreSQL is ready at ${HOST}:${PORT}"
    fi
    ensure_client
    wait_ready || die "PostgreSQL at ${HOST}:${PORT} is not accepting connections (pg_isready)."
    local out
    if ! out="$(psql -w -X -q -h "${HOST}" -p "${PORT}" -U "${DB_USER}" -d postgres -tAc 'select 1' 2>&1)"; then
        die "the server answers but user ${DB_USER} cannot log in: ${out}
  Set PGPASSWORD, or allow trust auth for ${HOST} in pg_hba.conf (local development)."
    fi
}

cmd_createdb() {
    local name="${1:-}"
    [[ -n "${name}" ]] || die "usage: $0 createdb NAME"
    cmd_ensure
    local exists
    # psql variables (:'name') quote the name safely; they need stdin, not -c.
    exists="$(psql -w -X -q -h "${HOST}" -p "${PORT}" -U "${DB_USER}" -d postgres -tA \
        -v name="${name}" <<<"SELECT 1 FROM pg_database WHERE datname = :'name';")"
    if [[ "${exists}" == "1" ]]; then
        log "database '${name}' already exists"
        return 0
    fi
    local err
    if err="$(createdb -w -h "${HOST}" -p "${PORT}" -U "${DB_USER}" "${name}" 2>&1)"; then
        log "created database '${name}'"
    elif [[ "${err}" == *"already exists"* ]]; then
        log "database '${name}' already exists (created concurrently)"
    else
        die "createdb '${name}' failed: ${err}"
    fi
}

cmd_stop() {
    setup_path
    if [[ ! -f "${PGDATA_POINTER}" ]]; then
        log "no private cluster for port ${PORT} (only .local/pg clusters made by this script are stopped)"
        return 0
    fi
    local dir
    dir="$(cat "${PGDATA_POINTER}")"
    if run_pg pg_ctl -D "${dir}" status >/dev/null 2>&1; then
        log "stopping private cluster ${dir}"
        run_pg pg_ctl -D "${dir}" -m fast -w stop >/dev/null
        log "stopped"
    else
        log "private cluster ${dir} is not running"
    fi
}

case "${1:-ensure}" in
    ensure)   cmd_ensure ;;
    createdb) shift; cmd_createdb "$@" ;;
    stop)     cmd_stop ;;
    -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
    *) die "unknown command '${1}'. Usage: $0 [ensure|createdb NAME|stop]" ;;
esac
