#!/usr/bin/env bash
# Load test of the running server with wrk (Debian's package; installed if missing):
# concurrency 1, 8, 32, 128 and an overload run at 512, reporting requests/s, p50, p99, status
# counts and the server's peak resident memory. Writes a Markdown table per index.
#
#   benches/load.sh [INDEX_DIR ...]
#
# Without INDEX_DIR: an index of routes/ built here, then the CLINC150-sized (15,000
# utterances) and 100,000-utterance tables that `benches/scale.sh DATASETS_DIR` builds into
# .cache/pointsman/bench-tables (each skipped, with a note, until it is built).
# The environment variable OUT_FILE (default bench-results/load.md) says where the tables go.
# DURATION (default 15s) sets each run's length; SERVE_ARGS adds flags to `pointsman serve`;
# MODEL_DIR serves (and builds the default index with) another model than the default.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/lib.sh
# (assigned first: `eval "$(...)"` would ignore setup failing)
setup_env="$(scripts/setup.sh)"
eval "$setup_env"
export POINTSMAN_MODEL_DIR="${MODEL_DIR:-$POINTSMAN_MODEL_DIR}"
need wrk wrk
cargo build --release --locked --quiet
bin="$root/target/release/pointsman"
work="$(mktemp -d)"
trap 'if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT

indexes=("$@")
if [ ${#indexes[@]} -eq 0 ]; then
  "$bin" build routes/ --out "$work/example" >/dev/null
  indexes=("$work/example")
  for size in 15000 100000; do
    table="$root/.cache/pointsman/bench-tables/$size/index"
    if [ -f "$table/CURRENT" ]; then
      indexes+=("$table")
    else
      echo "no $size-utterance table yet (benches/scale.sh DATASETS_DIR builds it); skipping it" >&2
    fi
  done
fi
out="${OUT_FILE:-bench-results/load.md}"
mkdir -p "$(dirname "$out")"
duration="${DURATION:-15s}"

{
  echo "# Load test: POST /v1/route"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk 1 thread, $duration per run; wrk runs on the same machine."
  echo "Server: \`pointsman serve --embed-cache-entries 0 ${SERVE_ARGS:-}\`, model $(basename "$POINTSMAN_MODEL_DIR")."
} > "$out"
peak_rss() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status"; }
for index in "${indexes[@]}"; do
  # the cache is off so that every request pays its forward pass, as unique prompts do
  # shellcheck disable=SC2086
  start_server "$bin" "$index" --embed-cache-entries 0 ${SERVE_ARGS:-}
  {
    echo
    echo "## $(curl -fs "$addr/readyz" | python3 -c 'import json, sys; r = json.load(sys.stdin); print("{:,} utterances (neighbours by {})".format(r["vectors"], r["search"]))')"
    echo
    echo "| concurrency | requests/s | p50 ms | p99 ms | max ms | 200 | 429 | other | socket errors |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  } >> "$out"
  for c in 1 8 32 128 512; do
    line=$(wrk -t1 -c"$c" -d"$duration" --timeout 10s -s benches/wrk-route.lua "$addr" | grep '^{')
    echo "c=$c $line" >&2
    python3 - "$c" "$line" >> "$out" <<'PY'
import json, sys
c, r = sys.argv[1], json.loads(sys.argv[2])
s = r["statuses"]
other = sum(v for k, v in s.items() if k not in ("200", "429"))
print(f"| {c} | {r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {s.get('200', 0)} | {s.get('429', 0)} | {other} | {r['socket_errors'] + r['timeouts']} |")
PY
  done
  echo >> "$out"
  echo "Peak resident memory of the server: $(peak_rss) MB." >> "$out"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
done
cat "$out"
