#!/usr/bin/env bash
# Smoke suite, run after every deploy and against a local Haven:
#
#   stack/smoke.sh BASE_URL TOKEN
#
# BASE_URL is the public entry point (nginx in a deployment, e.g. http://haven.example; the API
# itself locally, e.g. http://127.0.0.1:8080); TOKEN a bearer token of any user of a tenant
# (`curl -X POST $BASE_URL/api/v1/auth/token -d 'username=…&password=…'`).
# Prints one line per step; exits non-zero at the first failure.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 BASE_URL TOKEN" >&2
  exit 2
fi
BASE_URL=${1%/}
TOKEN=$2
TIMEOUT=${SMOKE_TIMEOUT:-15}

body=$(mktemp)
errors=$(mktemp)
trap 'rm -f "$body" "$errors"' EXIT
step_no=0

# step NAME EXPECTED_STATUS PATTERN CURL_ARGS... : one request; its status must be
# EXPECTED_STATUS and its body must contain PATTERN (a grep -E pattern, "" for any).
step() {
  local name=$1 expected=$2 pattern=$3
  shift 3
  step_no=$((step_no + 1))
  local status
  : >"$body"
  status=$(curl -sS -o "$body" -w '%{http_code}' --max-time "$TIMEOUT" "$@" 2>"$errors") || status=000
  if [[ $status != "$expected" ]] || { [[ -n $pattern ]] && ! grep -Eq -- "$pattern" "$body"; }; then
    echo "FAIL ${step_no}. ${name}: HTTP ${status} (expected ${expected}${pattern:+, body matching /$pattern/})"
    head -c 2000 "$body"
    echo
    cat "$errors"
    exit 1
  fi
  echo "ok   ${step_no}. ${name}"
}

auth=(-H "Authorization: Bearer ${TOKEN}")

echo "smoke: ${BASE_URL}"

# --- health -------------------------------------------------------------------------------
step "liveness /healthz" 200 '"status": ?"ok"' "${BASE_URL}/healthz"
step "readiness /readyz (every dependency)" 200 '"status": ?"ready"' "${BASE_URL}/readyz"
step "version /api/version" 200 '"version": ?"[^"]+"' "${BASE_URL}/api/version"
step "token accepted /api/v1/me" 200 '"tenant_id"' "${auth[@]}" "${BASE_URL}/api/v1/me"

# --- ingest of a small file to `ready` ------------------------------------------------------
# Added by the ingest issue.

# --- search: kNN, then hybrid ---------------------------------------------------------------
# Added by the search issue.

# --- one chat, streamed over SSE ------------------------------------------------------------
# Added by the chat issue.

echo "smoke: all ${step_no} steps passed"
