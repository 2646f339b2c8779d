#!/usr/bin/env bash
# System packages the test suite needs besides the virtualenv: Debian's nginx, run by
# tests/integration/test_nginx_proxy.py in front of a real API. Idempotent and quiet; called
# by `make install` (and so by .ci/run).
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; then
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
