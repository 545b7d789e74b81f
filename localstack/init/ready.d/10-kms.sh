#!/bin/bash
# LocalStack init hook (READY stage), for localstack/docker-compose.yml only:
# LocalStack runs every executable *.sh in /etc/localstack/init/ready.d once it
# serves requests. This one creates the fixed local-development KMS key and
# alias by running localstack/init_kms.py (mounted at /opt/token-store/) with a
# Python from the container that has boto3. Idempotent; a non-zero exit marks
# the hook ERROR (visible at http://localhost:4566/_localstack/init/ready).
# The host-mode path (scripts/localstack.sh) runs init_kms.py itself instead.
set -euo pipefail

INIT_SCRIPT="/opt/token-store/init_kms.py"

# LocalStack's own virtualenv has boto3; fall back to whatever python3 has it.
PY=""
for cand in /opt/code/localstack/.venv/bin/python python3; do
    if command -v "${cand}" >/dev/null 2>&1 && "${cand}" -c 'import boto3' 2>/dev/null; then
        PY="${cand}"
        break
    fi
done
if [[ -z "${PY}" ]]; then
    echo "[10-kms.sh] ERROR: no Python with boto3 found in the container" >&2
    exit 1
fi
if [[ ! -f "${INIT_SCRIPT}" ]]; then
    echo "[10-kms.sh] ERROR: ${INIT_SCRIPT} is not mounted (see localstack/docker-compose.yml)" >&2
    exit 1
fi

echo "[10-kms.sh] creating token-store KMS key and alias"
AWS_ENDPOINT_URL="http://localhost:4566" exec "${PY}" "${INIT_SCRIPT}"
