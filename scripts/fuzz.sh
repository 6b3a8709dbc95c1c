#!/usr/bin/env bash
# Fuzzes the route-file parser and the HTTP request bodies for a bounded time:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# Installs cargo-fuzz when it is missing, builds the targets of fuzz/ with the nightly toolchain
# and AddressSanitizer, then runs each target in chunks of at most FUZZ_CHUNK_S seconds (300)
# until its time is used. Exits 1 when a target crashed, saying where the input is and how to
# keep it as a regression test; 2 on any other failure.
#
# Environment: FUZZ_TARGETS (default "route_file request_bodies"), FUZZ_SANITIZER (address;
# `none` where ASan does not work), FUZZ_LOCK (a file to `flock` around every cargo command, so
# that builds on a shared machine take turns; the lock is released between chunks).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds="${1:-60}"
targets="${FUZZ_TARGETS:-route_file request_bodies}"
sanitizer="${FUZZ_SANITIZER:-address}"
chunk_s="${FUZZ_CHUNK_S:-300}"

if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi

locked() {
  if [ -n "${FUZZ_LOCK:-}" ]; then
    flock "$FUZZ_LOCK" "$@"
  else
    "$@"
  fi
}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  locked cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

locked cargo +nightly fuzz build -s "$sanitizer"

crashed=()
for target in $targets; do
  corpus="fuzz/corpus/$target"
  artifacts="fuzz/artifacts/$target"
  log="$artifacts/fuzz.log"
  mkdir -p "$corpus" "$artifacts"
  : > "$log"
  dict=()
  [ -f "fuzz/dicts/$target.dict" ] && dict=("-dict=fuzz/dicts/$target.dict")
  left="$seconds" runs=0
  while [ "$left" -gt 0 ]; do
    # let another build waiting for the lock go first
    [ -n "${FUZZ_LOCK:-}" ] && [ "$left" -lt "$seconds" ] && sleep 5
    now=$(( left < chunk_s ? left : chunk_s ))
    left=$(( left - now ))
    # the first corpus directory receives new inputs; the committed seeds are only read
    status=0
    locked cargo +nightly fuzz run -s "$sanitizer" "$target" "$corpus" "fuzz/seeds/$target" -- \
      -max_total_time="$now" -timeout=30 -print_final_stats=1 "${dict[@]}" \
      >> "$log" 2>&1 || status=$?
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    runs=$(( runs + ${n:-0} ))
    if [ "$status" -ne 0 ]; then
      crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
      if [ -z "$crash" ]; then
        echo "$target: the fuzzer failed without writing an input (exit $status); see $log" >&2
        exit 2
      fi
      crashed+=("$target $crash")
      echo "$target: CRASH after $runs runs: $crash" >&2
      break
    fi
    echo "$target: $(( seconds - left )) of $seconds s, $runs runs ($(grep -o 'cov: [0-9]*' "$log" | tail -1))"
  done
done

if [ "${#crashed[@]}" -gt 0 ]; then
  echo >&2
  for c in "${crashed[@]}"; do
    set -- $c
    cat >&2 <<MSG
$1 crashed on $2 (log: fuzz/artifacts/$1/fuzz.log). Reproduce and shrink it:
  cargo +nightly fuzz run $1 $2
  cargo +nightly fuzz tmin $1 $2
then keep the (shrunk) input as a regression test, named for the bug, and fix the bug:
  cp $2 tests/fuzz-regressions/$1/<what-it-broke>
  cargo test --test it fuzz_regressions
MSG
  done
  exit 1
fi
echo "no crash: ${targets// /, } fuzzed for $seconds s each"
