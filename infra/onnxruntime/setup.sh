#!/usr/bin/env bash
# Puts ONNX Runtime's shared library (from the onnxruntime wheel on PyPI) where the
# indexer's embedder loads it, and prints its path. Idempotent; nothing is downloaded from
# anywhere but the package registry.
#   export ORT_DYLIB_PATH=$(infra/onnxruntime/setup.sh)
set -euo pipefail
version="${ONNXRUNTIME_VERSION:-1.31.1}"
dir="${AGENTNET_CACHE:-$HOME/.cache/agentnet}/onnxruntime-$version"
lib="$dir/libonnxruntime.so.$version"
if [ ! -f "$lib" ]; then
  mkdir -p "$dir/wheel"
  python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$version" -d "$dir/wheel" >&2
  python3 - "$dir" "$version" <<'PY'
import sys, zipfile, glob, os
d, v = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(d, "wheel", "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    name = f"onnxruntime/capi/libonnxruntime.so.{v}"
    with z.open(name) as src, open(os.path.join(d, f"libonnxruntime.so.{v}"), "wb") as dst:
        dst.write(src.read())
PY
  rm -rf "$dir/wheel"
fi
echo "$lib"
