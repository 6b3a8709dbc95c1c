#!/usr/bin/env bash
# Two pointsman binaries side by side on one bench table (benches/scale.sh builds the tables):
#
#   benches/ab.sh TABLE N BIN_A BIN_B        (TABLE: 750, 15000 or 100000)
#
# Starts both with `serve`'s defaults on the table's index and sends each of N CLINC150 test
# prompts once to each, alternating which goes first (benches/ab.py): the paired difference of
# the round trips measures a change the machine's drift would hide between two separate runs.
# Keep a copy of the binary before the change (cp target/release/pointsman /tmp/before).
# Run it twice, the second time with BIN_A and BIN_B swapped: the server started first can do a
# little better, and the same binary as A and B differs by up to ±0.03 ms p50 (docs/speed.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/lib.sh
[ $# -eq 4 ] || { echo "usage: benches/ab.sh TABLE N BIN_A BIN_B" >&2; exit 2; }
dir="$root/.cache/pointsman/bench-tables/$1"
[ -f "$dir/index/CURRENT" ] || { echo "no index in $dir: run benches/scale.sh first" >&2; exit 2; }
eval "$(scripts/setup.sh)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work_a" "$work_b"' EXIT
work_a="$(mktemp -d)"; work_b="$(mktemp -d)"
work="$work_a" start_server "$3" "$dir/index" --routes "$dir/routes.yaml"; pids+=("$pid"); a="$addr"
work="$work_b" start_server "$4" "$dir/index" --routes "$dir/routes.yaml"; pids+=("$pid"); b="$addr"
echo "A: $3"
echo "B: $4"
python3 benches/ab.py "$dir/test.jsonl" "$2" "$a" "$b"
