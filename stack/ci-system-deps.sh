#!/usr/bin/env bash
# System packages Haven and its test suite need besides the virtualenv, from Debian:
# - tesseract-ocr and poppler-utils (pdftoppm): OCR of scanned PDFs (workers/ingest/extract.py);
# - nginx-light: run by tests/integration/test_nginx_proxy.py in front of a real API;
# - bubblewrap: the sandbox of code runs (haven/sandbox), tested for real;
# - chromium: the browser the web app's tests drive (tests/web, Playwright with Debian's build:
#   Playwright's own browser downloads are not reachable offline).
# Idempotent and quiet; called by `make install` (and so by .ci/run).
set -euo pipefail

missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
