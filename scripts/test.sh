#!/usr/bin/env bash
# Runs the whole test suite. Fetches the model and ONNX Runtime first (idempotent), so it works
# on a fresh clone; the tests that need the model fail loudly if it is missing, never skip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/lib.sh
# (assigned first: `eval "$(...)"` would ignore setup failing)
setup_env="$(scripts/setup.sh)"
eval "$setup_env"
# the Redis tests start their own redis-server (Debian's) on a free loopback port
need redis-server redis-server
# the proxy's end-to-end tests drive pointsman with the unmodified `openai` and `anthropic`
# Python packages and the Node `openai` package
venv=".cache/pointsman/venv"
if ! "$venv/bin/python" -c 'import openai, anthropic, sys; sys.exit(openai.__version__ != "3.57.0" or anthropic.__version__ != "2.15.0")' 2>/dev/null; then
  echo "test: installing the openai and anthropic Python packages into $venv" >&2
  python3 -m venv "$venv" 2>/dev/null || {
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check openai==3.57.0 anthropic==2.15.0
fi
# and the unmodified `litellm` package, in a venv of its own (it pins its own `openai`)
litellm_venv=".cache/pointsman/litellm-venv"
if ! "$litellm_venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("litellm") != "1.110.2")' 2>/dev/null; then
  echo "test: installing the litellm Python package into $litellm_venv" >&2
  python3 -m venv "$litellm_venv"
  "$litellm_venv/bin/pip" install -q --disable-pip-version-check litellm==1.110.2
fi
if [ ! -d tests/node/node_modules/openai ]; then
  need npm nodejs npm
  echo "test: installing the Node openai package into tests/node" >&2
  (cd tests/node && npm ci --silent --no-audit --no-fund)
fi
export POINTSMAN_PYTHON="$root/$venv/bin/python"
export POINTSMAN_LITELLM_PYTHON="$root/$litellm_venv/bin/python"
cargo test --locked "$@"
# the playground page in a real browser (Debian's Chromium, driven by Playwright)
scripts/browser-test.sh
