#!/usr/bin/env bash
# Decisions on route tables of the sizes users have, beside their floor, in one run:
#
#   benches/scale.sh DATASETS_DIR [OUT_FILE]
#
# DATASETS_DIR holds clinc150/data_full.json. Three tables are made from CLINC150's training
# utterances (examples/clinc150/convert.py): 750 (5 a route), 15,000 (100 a route, all of them)
# and 100,050 (each utterance in 7 wordings, 667 a route), 150 routes each; their indexes are
# built once into .cache/pointsman/bench-tables (the 100k build takes a few minutes) and rebuilt
# when this pointsman cannot open them. For each, `pointsman serve` runs with its defaults and
# `benches/scale.rs` measures, on CLINC150 test prompts each sent once: HTTP p50 at concurrency 1
# interleaved with two bare embeddings, the reported neighbours' recall and cost (on validation
# prompts), and the server's resident memory. On the 15,000 table also: requests/s at
# concurrency 32 against the bare model on every core, and semantic-router 1.1.1 in process
# (installed into .cache/pointsman/sr-venv from PyPI). Then the concurrency-1 run again, on a
# fresh server (so again no cache hit) held to the last core while the client is held to the
# first: the client's own work (two bare embeddings between requests) then no longer runs on
# the core the server's session last ran on, nearer a client on another machine. Writes OUT_FILE
# (bench-results/scale.md).
# SECONDS_PER_RUN (default 15) sets the throughput runs' length; PROMPTS (default 500) the count.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/lib.sh
data="${1:?usage: benches/scale.sh DATASETS_DIR [OUT_FILE]}"
clinc="$data/clinc150/data_full.json"
[ -f "$clinc" ] || { echo "no $clinc (DATASETS_DIR must hold clinc150/data_full.json)" >&2; exit 2; }
out="${2:-bench-results/scale.md}"
seconds="${SECONDS_PER_RUN:-15}"
prompts="${PROMPTS:-500}"
setup_env="$(scripts/setup.sh)"
eval "$setup_env"
cargo build --release --locked --quiet
cargo bench --bench scale --locked --no-run --quiet
bench() { cargo bench --bench scale --locked --quiet -- "$@"; }
bin="$root/target/release/pointsman"
tables="$root/.cache/pointsman/bench-tables"
work="$(mktemp -d)"
trap 'if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT

# table name, --per-route, --variants
specs=("750 5 1" "15000 100 1" "100000 667 7")
for spec in "${specs[@]}"; do
  read -r name per variants <<< "$spec"
  dir="$tables/$name"
  python3 examples/clinc150/convert.py "$clinc" "$dir" --per-route "$per" --variants "$variants" >/dev/null
  if ! "$bin" route --index "$dir/index" "probe" >/dev/null 2>&1; then
    echo "building the $name-utterance index (once)..." >&2
    rm -rf "$dir/index"
    "$bin" build "$dir/routes.yaml" --out "$dir/index" >&2
  fi
done

rss() { awk -v k="$1:" '$1 == k {print int($2/1024)}' "/proc/$pid/status"; }
{
  echo "# Decisions at scale"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), \`benches/scale.sh\`."
  echo "Server: \`pointsman serve\` with its defaults (embedding cache on; every prompt is new to it),"
  echo "model $(basename "$POINTSMAN_MODEL_DIR"). Prompts: CLINC150 test (latency) and validation (recall)."
  echo
} > "$out"
for spec in "${specs[@]}"; do
  read -r name _ _ <<< "$spec"
  dir="$tables/$name"
  # --routes: an index built from an older conversion is refused, not measured
  if ! start_server "$bin" "$dir/index" --routes "$dir/routes.yaml"; then
    echo "rebuilding the $name-utterance index: its routes changed" >&2
    rm -rf "$dir/index"
    "$bin" build "$dir/routes.yaml" --out "$dir/index" >&2
    start_server "$bin" "$dir/index" --routes "$dir/routes.yaml"
  fi
  {
    manifest="$dir/index/$(cat "$dir/index/CURRENT")/manifest.json"
    echo "## $(python3 -c 'import json, sys; print("{:,}".format(json.load(open(sys.argv[1]))["vectors"]))' "$manifest") utterances, 150 routes"
    echo
    echo "Resident memory after start: $(rss VmRSS) MB."
    echo
    bench latency "$addr" "$dir/test.jsonl" "$prompts"
    echo
    bench search "$dir/index" "$dir/val.jsonl" 1000
    echo
    if [ "$name" = 15000 ]; then
      bench throughput "$addr" "$dir/test.jsonl" "$seconds"
      echo
      venv="$root/.cache/pointsman/sr-venv"
      if ! "$venv/bin/python" -c "import semantic_router, onnxruntime, tokenizers" 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "semantic-router==1.1.1" "onnxruntime==1.31.1" tokenizers numpy >&2
      fi
      # validation prompts: the latency run sent the test prompts, so they would be cache hits
      "$venv/bin/python" benches/vs_semantic_router.py "$dir/routes.yaml" "$dir/val.jsonl" \
        "$POINTSMAN_MODEL_DIR" "$addr" 300
      echo
    fi
    echo "Resident memory at the end: $(rss VmRSS) MB (peak $(rss VmHWM) MB)."
    echo
  } >> "$out"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  cores=$(nproc)
  if [ "$cores" -ge 2 ]; then
    printf '#!/bin/sh\nexec taskset -c %s "%s" "$@"\n' "$((cores - 1))" "$bin" > "$work/pinned"
    chmod +x "$work/pinned"
    start_server "$work/pinned" "$dir/index" --routes "$dir/routes.yaml"
    {
      echo "The same, the server held to core $((cores - 1)) and this client to core 0:"
      echo
      taskset -c 0 cargo bench --bench scale --locked --quiet -- latency "$addr" "$dir/test.jsonl" "$prompts"
      echo
    } >> "$out"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  fi
done
cat "$out"
