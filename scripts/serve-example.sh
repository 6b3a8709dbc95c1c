#!/usr/bin/env bash
# Serves the example routes (routes/) on the default model at http://127.0.0.1:8080
# (POINTSMAN_ADDR overrides). Fetches the model and ONNX Runtime, builds pointsman, and
# (re)builds the index when the routes or the model changed, or the index is damaged or of an
# older format; every step is idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# (assigned first: `eval "$(...)"` would ignore setup failing)
setup_env="$(scripts/setup.sh)"
eval "$setup_env"
cargo build --release --locked --quiet
bin=target/release/pointsman
"$bin" build routes/ --out index/ --if-changed
exec "$bin" serve --index index/ --routes routes/ --addr "${POINTSMAN_ADDR:-127.0.0.1:8080}" "$@"
