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
# How long the small file may take to be ingested (a cold worker loads its models first).
INGEST_TIMEOUT=${SMOKE_INGEST_TIMEOUT:-180}

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

# json_field PATH: a field of the last response body (python3 is on every Haven host).
json_field() {
  python3 -c 'import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value[key]
print(value)' "$body" "$1"
}

# --- ingest of a small file to `ready` ------------------------------------------------------
# A word of its own makes the file new (no duplicate) and findable by this run only.
marker="smoke$(date +%s)$RANDOM"
sample=$(mktemp --suffix=.md)
trap 'rm -f "$body" "$errors" "$sample"' EXIT
printf '# Smoke check %s\n\nThe %s lighthouse keeper logs the weather every evening at six.\n' \
  "$marker" "$marker" >"$sample"
step "upload a small file" 201 '"job_id"' "${auth[@]}" \
  -F "file=@${sample};type=text/markdown" -F "title=smoke ${marker}" "${BASE_URL}/api/v1/documents"
document_id=$(json_field document.id)
job_id=$(json_field job_id)

step_no=$((step_no + 1))
deadline=$((SECONDS + INGEST_TIMEOUT))
state=queued
while [[ $state != ready ]]; do
  curl -sS -o "$body" --max-time "$TIMEOUT" "${auth[@]}" "${BASE_URL}/api/v1/jobs/${job_id}" \
    2>"$errors" || true
  state=$(json_field state 2>/dev/null || echo unknown)
  if [[ $state == failed || $state == canceled || $SECONDS -ge $deadline ]]; then
    echo "FAIL ${step_no}. ingest job ${job_id} to ready: ${state}"
    head -c 2000 "$body"
    echo
    exit 1
  fi
  [[ $state == ready ]] || sleep 1
done
echo "ok   ${step_no}. ingest job to ready"

# --- search: kNN, then hybrid ---------------------------------------------------------------
query="When does the ${marker} lighthouse keeper log the weather?"
step "kNN search finds the file" 200 "\"document_id\": ?\"${document_id}\"" "${auth[@]}" \
  -H "Content-Type: application/json" \
  -d "{\"query\": \"${query}\", \"mode\": \"dense\", \"top_k\": 5}" "${BASE_URL}/api/v1/search"
step "hybrid search finds the file" 200 "\"document_id\": ?\"${document_id}\"" "${auth[@]}" \
  -H "Content-Type: application/json" \
  -d "{\"query\": \"${query}\", \"mode\": \"hybrid\", \"top_k\": 5}" "${BASE_URL}/api/v1/search"

# --- one chat, streamed over SSE ------------------------------------------------------------
step "create a chat" 201 '"id"' "${auth[@]}" -H "Content-Type: application/json" \
  -d "{\"title\": \"smoke ${marker}\"}" "${BASE_URL}/api/v1/chats"
chat_id=$(json_field id)
step "streamed answer: meta, tokens, done" 200 '^event: done' "${auth[@]}" -N \
  -H "Content-Type: application/json" -H "Accept: text/event-stream" \
  -d "{\"content\": \"${query}\", \"max_tokens\": 16}" \
  "${BASE_URL}/api/v1/chats/${chat_id}/messages"
for event in meta token; do
  if ! grep -q "^event: ${event}\$" "$body"; then
    echo "FAIL ${step_no}. the stream has no ${event} event"
    head -c 2000 "$body"
    exit 1
  fi
done
if ! grep -q "${document_id}" "$body"; then
  echo "FAIL ${step_no}. the answer's sources do not include the smoke file"
  exit 1
fi

# --- clean up -------------------------------------------------------------------------------
step "delete the chat" 204 "" "${auth[@]}" -X DELETE "${BASE_URL}/api/v1/chats/${chat_id}"
step "delete the file" 204 "" "${auth[@]}" -X DELETE "${BASE_URL}/api/v1/documents/${document_id}"

echo "smoke: all ${step_no} steps passed"
