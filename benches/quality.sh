#!/usr/bin/env bash
# Quality-aware routing on graded outcomes, as a user runs it: for each data set, build an index
# with a quality predictor from its train split (methods chosen by cross-validation on train),
# then evaluate the cost-quality curve on its test split, with an SVG plot. Nothing is fitted on
# test. Writes bench-results/quality.md and the plots beside it.
#   benches/quality.sh PATH/TO/shared/datasets
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
datasets="${1:?usage: benches/quality.sh PATH/TO/datasets (holding routerbench/ and routellm-gsm8k/)}"
eval "$(scripts/setup.sh)"
cargo build --release --locked --quiet
bin="$root/target/release/pointsman"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
out=bench-results/quality.md
{
  echo "# Quality-aware routing on graded outcomes"
  echo
  echo "\`benches/quality.sh\` on $(date -u +%Y-%m-%d), the default model; trained and chosen on \`train\`, figures on \`test\`."
  echo
  echo "| set | method chosen by CV | APGR | CPT(50 %) | CPT(80 %) | best model's quality at cost share | savings at its quality | at the default knob: quality, mean cost | best single model | build (embedding + training) |"
  echo "|---|---|---:|---:|---:|---:|---:|---|---|---:|"
} > "$out"
for set in routerbench:mixed.train.jsonl:mixed.test.jsonl routellm-gsm8k:train.jsonl:test.jsonl; do
  IFS=: read -r name train test <<<"$set"
  start=$(date +%s)
  "$bin" build "$datasets/$name/routes.yaml" --outcomes "$datasets/$name/$train" --out "$work/$name" > "$work/$name.build"
  seconds=$(( $(date +%s) - start ))
  "$bin" eval --index "$work/$name" --outcomes "$datasets/$name/$test" --json --plot "bench-results/quality-$name.svg" > "$work/$name.json"
  chosen=$(sed -n 's/^  chosen: \([^;]*\);.*/\1/p' "$work/$name.build")
  python3 - "$work/$name.json" "$name" "$chosen" "$seconds" >> "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
name, chosen, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
f = lambda x: "never" if x is None else f"{x:.3f}"
b, k = r["baselines"]["best_single"], r["at_knob"]
print(f"| {name} | `{chosen}` | {r['apgr']:.4f} | {f(r['cpt50'])} | {f(r['cpt80'])} | {f(r['matches_best_at_cost_share'])} | "
      f"{f(r['savings_at_equal_quality'])} | {k['quality']:.4f} at ${k['cost_usd']:.6f} | {b['model']} {b['quality']:.4f} at ${b['cost_usd']:.6f} | {seconds:.0f} s |")
PY
done
echo >> "$out"
echo "Plots: [routerbench](quality-routerbench.svg), [routellm-gsm8k](quality-routellm-gsm8k.svg)." >> "$out"
cat "$out"
