#!/usr/bin/env bash
# Drives the playground page in Debian's headless Chromium with Playwright (playwright-core from
# npm, no browser download): builds the example index, serves it on a free port, runs
# tests/browser, and leaves screenshots in target/browser/. Installs what it needs (Chromium,
# Node.js and npm from Debian when missing; the npm packages when the lock file changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/lib.sh
# (assigned first: `eval "$(...)"` would ignore setup failing)
setup_env="$(scripts/setup.sh)"
eval "$setup_env"
need chromium chromium
need npm nodejs npm
# npm ci reinstalls from scratch: only when the lock file changed since the last install
lock_sum="$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)"
stamp=tests/browser/node_modules/.pointsman-lock-sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
  echo "$lock_sum" > "$stamp"
fi
cargo build --locked --quiet
bin="$root/target/debug/pointsman"
work="$(mktemp -d)"
trap 'if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
"$bin" build routes/ --out "$work/index" >/dev/null
# with an API key, so the test also enters one in the page
api_key="playground-test-key"
start_server "$bin" "$work/index" --api-key "$api_key"
mkdir -p target/browser
(cd tests/browser && POINTSMAN_URL="$addr" POINTSMAN_API_KEY="$api_key" \
  SCREENSHOT_DIR="$root/target/browser" node --test)
