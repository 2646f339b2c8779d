#!/usr/bin/env bash
# The web app's typed API client comes from the API's OpenAPI schema.
#
#   scripts/openapi.sh          regenerate src/api/schema.d.ts from the API's code
#   scripts/openapi.sh --check  fail when src/api/schema.d.ts is not what the API's code gives
#                               (run by `npm run build`: a changed contract breaks the build)
#
# The schema comes from api.main:create_app built in-process (python -m api.openapi_schema),
# which needs no running service.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="$(cd "$here/.." && pwd)"
python="${HAVEN_PYTHON:-$root/.venv/bin/python}"
# HAVEN_WEB_SCHEMA: another file to write or check (the test of this check uses it).
target="${HAVEN_WEB_SCHEMA:-$here/src/api/schema.d.ts}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$root" && PYTHONPATH="$root" HAVEN_ENV=test "$python" -m api.openapi_schema) > "$work/openapi.json"
"$here/node_modules/.bin/openapi-typescript" "$work/openapi.json" --default-non-nullable false -o "$work/schema.d.ts" >/dev/null 2>&1 \
  || "$here/node_modules/.bin/openapi-typescript" "$work/openapi.json" --default-non-nullable false -o "$work/schema.d.ts"

if [[ "${1:-}" == "--check" ]]; then
  if ! diff -q "$target" "$work/schema.d.ts" >/dev/null 2>&1; then
    echo "web/src/api/schema.d.ts does not match the API's OpenAPI schema." >&2
    echo "Run 'npm run openapi' in web/ and commit the result (and fix what no longer type-checks)." >&2
    diff -u "$target" "$work/schema.d.ts" | head -40 >&2 || true
    exit 1
  fi
  echo "src/api/schema.d.ts matches the API's OpenAPI schema"
else
  cp "$work/schema.d.ts" "$target"
  echo "wrote $target"
fi
