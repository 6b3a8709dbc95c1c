#!/usr/bin/env bash
# Drives the playground page in Debian's headless Chromium with Playwright (playwright-core from
# npm, no browser download): builds the example index, serves it on a free port, runs
# tests/browser, and leaves screenshots in target/browser/. Installs what it needs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval "$(scripts/setup.sh)"
if ! command -v chromium >/dev/null; then
  echo "browser-test: installing chromium" >&2
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
cargo build --locked --quiet
bin="$root/target/debug/switchyard"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" build routes/ --out "$work/index" >/dev/null
"$bin" serve --index "$work/index" --addr 127.0.0.1:0 > "$work/serve.out" 2> "$work/serve.err" &
pid=$!
for _ in $(seq 1 300); do
  addr=$(sed -n 's/^switchyard listening on //p' "$work/serve.out")
  [ -n "$addr" ] && curl -fs "$addr/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
[ -n "${addr:-}" ] || { echo "server did not start:" >&2; cat "$work/serve.err" >&2; exit 2; }
mkdir -p target/browser
(cd tests/browser && SWITCHYARD_URL="$addr" SCREENSHOT_DIR="$root/target/browser" node --test)
