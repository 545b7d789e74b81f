#!/usr/bin/env bash
# Static checks of the Terraform in infra/, installed pinned by this script (no Terraform or
# AWS account needed):
#   1. every infra/**/*.tf parses with python-hcl2, every `#checkov:skip=CKV_...:` carries a
#      reason, and every variable and output is documented in infra/README.md;
#   2. checkov over infra/ (terraform framework): any failed check fails the run;
#   3. only where `terraform` and a local AWS provider mirror exist (some machines ship one;
#      nothing is downloaded): terraform fmt -check, validate against the provider's schema,
#      and the offline mocked-provider tests in infra/tests/. Skipped, and said so, elsewhere.
#
# Usage: scripts/infra-check.sh
# Environment:
#   TOKEN_STORE_CACHE_DIR   where the virtualenv lives (default ~/.cache/token-store)
#   PYTHON                  Python 3.11 to build the virtualenv with (default python3.11, python3)
#   TF_PROVIDER_MIRROR      filesystem mirror holding registry.terraform.io/hashicorp/aws
#                           (default /opt/tf-plugins); INFRA_CHECK_TERRAFORM=0 skips step 3.
set -euo pipefail

CHECKOV_VERSION="3.3.30"
PYTHON_HCL2_VERSION="8.1.4"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INFRA="${ROOT}/infra"
CONSTRAINTS="${INFRA}/constraints-infra-check-py311.txt"
CACHE_DIR="${TOKEN_STORE_CACHE_DIR:-${HOME}/.cache/token-store}"
VENV_DIR="${CACHE_DIR}/infra-check-venv"
# python-hcl2 lives apart from checkov: checkov's bc-python-hcl2 installs a module named
# `hcl2` as well, and the two must not overwrite each other.
HCL2_DIR="${VENV_DIR}/python-hcl2"
MARKER="${VENV_DIR}/.token-store-install-ok"

log() { printf '[infra-check] %s\n' "$*" >&2; }
die() { printf '[infra-check] ERROR: %s\n' "$*" >&2; exit 1; }

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

ensure_installed() {
    [[ -f "${CONSTRAINTS}" ]] || die "pin list missing: ${CONSTRAINTS}"
    local want
    want="checkov==${CHECKOV_VERSION} python-hcl2==${PYTHON_HCL2_VERSION} constraints-sha256=$(sha256sum "${CONSTRAINTS}" | cut -d' ' -f1)"
    if [[ -f "${MARKER}" && "$(cat "${MARKER}")" == "${want}" && -x "${VENV_DIR}/bin/checkov" ]]; then
        return 0
    fi
    local py started=${SECONDS}
    py="$(find_base_python)" || die "Python 3.11 not found (the pins are resolved for 3.11). Set PYTHON=/path/to/python3.11."
    log "installing checkov ${CHECKOV_VERSION} and python-hcl2 ${PYTHON_HCL2_VERSION} into ${VENV_DIR} (about a minute)..."
    rm -rf "${VENV_DIR}"
    mkdir -p "${CACHE_DIR}"
    "${py}" -m venv "${VENV_DIR}" \
        || die "could not create a virtualenv with ${py} (on Debian system Python: apt-get install python3-venv)."
    "${VENV_DIR}/bin/python" -m pip install --disable-pip-version-check --quiet \
        -c "${CONSTRAINTS}" "checkov==${CHECKOV_VERSION}" \
        || die "pip install checkov failed; ${VENV_DIR} has no marker and is rebuilt on the next run."
    "${VENV_DIR}/bin/python" -m pip install --disable-pip-version-check --quiet \
        -c "${CONSTRAINTS}" --target "${HCL2_DIR}" "python-hcl2==${PYTHON_HCL2_VERSION}" \
        || die "pip install python-hcl2 failed; ${VENV_DIR} has no marker and is rebuilt on the next run."
    echo "${want}" >"${MARKER}"
    log "installed in $((SECONDS - started)) s"
}

# 1. Parse, suppression reasons, README coverage.
check_hcl() {
    PYTHONPATH="${HCL2_DIR}" "${VENV_DIR}/bin/python" - "${INFRA}" "${PYTHON_HCL2_VERSION}" <<'PY'
import pathlib, re, sys

root, want_version = pathlib.Path(sys.argv[1]), sys.argv[2]
import hcl2
from importlib.metadata import version
assert version("python-hcl2") == want_version, f"python-hcl2 {version('python-hcl2')} loaded, {want_version} pinned"

problems, variables, outputs = [], set(), set()
files = sorted(p for p in root.rglob("*.tf") if ".terraform" not in p.parts)
if not files:
    sys.exit(f"no .tf files under {root}")
skip = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(.*)")
for path in files:
    rel = path.relative_to(root.parent)
    text = path.read_text()
    try:
        doc = hcl2.loads(text)
    except Exception as err:  # the parser's own message says where
        problems.append(f"{rel}: does not parse: {err}")
        continue
    for block in doc.get("variable", []):
        variables.update(k.strip('"') for k in block)
    for block in doc.get("output", []):
        outputs.update(k.strip('"') for k in block)
    for n, line in enumerate(text.splitlines(), 1):
        m = skip.search(line)
        if m and len(m.group(2).lstrip(": ").strip()) < 20:
            problems.append(f"{rel}:{n}: #checkov:skip={m.group(1)} needs a reason after ':'")

readme = (root / "README.md").read_text() if (root / "README.md").exists() else ""
for kind, names in (("variable", variables), ("output", outputs)):
    for name in sorted(names):
        if f"`{name}`" not in readme:
            problems.append(f"infra/README.md does not document {kind} `{name}`")

for p in problems:
    print(f"[infra-check]   {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"[infra-check] {len(files)} .tf files parse; {len(variables)} variables and {len(outputs)} outputs documented", file=sys.stderr)
PY
}

# 3. Terraform itself, offline, when this machine can.
check_terraform() {
    local mirror="${TF_PROVIDER_MIRROR:-/opt/tf-plugins}"
    if [[ "${INFRA_CHECK_TERRAFORM:-1}" == "0" ]]; then
        log "terraform checks skipped (INFRA_CHECK_TERRAFORM=0)"
        return 0
    fi
    if ! command -v terraform >/dev/null 2>&1 || [[ ! -d "${mirror}/registry.terraform.io/hashicorp/aws" ]]; then
        log "terraform checks skipped (needs terraform on PATH and an AWS provider mirror in ${mirror})"
        return 0
    fi
    local work
    work="$(mktemp -d)"
    # Runs in a copy: init writes .terraform/ and a lock file that do not belong in infra/.
    cp -r "${INFRA}/." "${work}/"
    cat >"${work}/.terraformrc" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "${mirror}"
    include = ["registry.terraform.io/hashicorp/*"]
  }
}
EOF
    local rc=0
    (
        cd "${work}"
        export TF_CLI_CONFIG_FILE="${work}/.terraformrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
        terraform fmt -check -recursive -diff -no-color "${INFRA}" \
            || { echo "[infra-check]   run: terraform fmt -recursive infra" >&2; exit 1; }
        terraform init -backend=false -input=false -no-color >init.log 2>&1 \
            || { cat init.log >&2; exit 1; }
        terraform validate -no-color
        terraform test -no-color >test.log 2>&1 || { cat test.log >&2; exit 1; }
        grep -E '^(Success|Failure)!' test.log | sed 's/^/[infra-check] terraform test: /' >&2
    ) || rc=$?
    rm -rf "${work}"
    [[ ${rc} -eq 0 ]] || die "terraform fmt/validate/test failed (see above)"
}

started=${SECONDS}
ensure_installed

log "parsing infra/**/*.tf with python-hcl2 ${PYTHON_HCL2_VERSION}"
check_hcl || die "infra/ has problems (see above)"

log "checkov ${CHECKOV_VERSION} over infra/"
# --skip-download: no Prisma Cloud look-up (no network needed; suppressions are in the code).
"${VENV_DIR}/bin/checkov" -d "${INFRA}" --framework terraform --quiet --compact --skip-download \
    || die "checkov reported failed checks: fix them, or suppress one in the .tf code with '#checkov:skip=CKV_...: <reason>'"

check_terraform

log "infra/ checks passed in $((SECONDS - started)) s"
