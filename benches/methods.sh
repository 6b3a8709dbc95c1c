#!/usr/bin/env bash
# Compares the decision rules on CLINC150: converts the data set (examples/clinc150/convert.py,
# 10 utterances a route, no thresholds), builds one index per rule and evaluates each on the
# `val` and `test` splits, printing in-scope accuracy as a Markdown table. The README's table
# under "How a route is chosen" and `src/scoring.rs` quote it.
#
#   benches/methods.sh PATH/TO/data_full.json [OUT_FILE]
#
# OUT_FILE defaults to bench-results/methods.md; MODEL_DIR evaluates another model than the
# default. Takes about a minute and a half on two cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
data="${1:?usage: benches/methods.sh PATH/TO/data_full.json [OUT_FILE]}"
out="${2:-bench-results/methods.md}"
# (assigned first: `eval "$(...)"` would ignore setup failing)
setup_env="$(scripts/setup.sh)"
eval "$setup_env"
export POINTSMAN_MODEL_DIR="${MODEL_DIR:-$POINTSMAN_MODEL_DIR}"
cargo build --release --locked --quiet
bin="$root/target/release/pointsman"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 examples/clinc150/convert.py "$data" "$work" --per-route 10 >/dev/null

# rule name | the route file's `defaults`
rules=(
  "nearest neighbour (top-1)|{method: neighbours, top_k: 1}"
  "top-5 mean (semantic-router's default rule)|{method: neighbours, top_k: 5, aggregation: mean}"
  "centroid|{method: centroid}"
  "classifier|{method: classifier, lexical_weight: 0.0}"
  "classifier + BM25 (default)|{method: classifier}"
)
accuracy() { python3 -c 'import json, sys; print("%.3f" % json.load(sys.stdin)["in_scope_accuracy"])'; }
{
  echo "# Decision rules on CLINC150"
  echo
  echo "\`benches/methods.sh\`, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)," \
    "model \`$(basename "$POINTSMAN_MODEL_DIR")\`: 150 routes of the first 10 training" \
    "utterances each, no thresholds; in-scope accuracy on \`val\` and \`test\`."
  echo
  echo "| rule | val | test |"
  echo "|---|---:|---:|"
  for entry in "${rules[@]}"; do
    name="${entry%%|*}"
    defaults="${entry#*|}"
    dir="$work/rule"
    rm -rf "$dir" && mkdir -p "$dir"
    sed "s/^version: 1\$/version: 1\ndefaults: $defaults/" "$work/routes.yaml" > "$dir/routes.yaml"
    grep -q "^defaults: " "$dir/routes.yaml" || { echo "methods: no version line in routes.yaml" >&2; exit 2; }
    "$bin" build "$dir/routes.yaml" --out "$dir/index" >/dev/null
    val=$("$bin" eval --index "$dir/index" --data "$work/val.jsonl" --json | accuracy)
    test=$("$bin" eval --index "$dir/index" --data "$work/test.jsonl" --json | accuracy)
    echo "| $name | $val | $test |"
  done
} | tee "$out"
