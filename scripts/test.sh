#!/usr/bin/env bash
# Runs the whole test suite. Fetches the model and ONNX Runtime first (idempotent), so it works
# on a fresh clone; the tests that need the model fail loudly if it is missing, never skip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval "$(scripts/setup.sh)"
cargo test --locked "$@"
