#!/usr/bin/env bash
# The main job on embedded defaults: relay, indexer and appview in one process
# (`agentnet up`), on 127.0.0.1:2470 with data in ./data. Without arguments it runs the demo
# (synthetic agents talking at all three privacy levels); with arguments they go to `up`.
# Installs what it needs on first use: ONNX Runtime's library (PyPI wheel) and chDB's
# libchdb.so (npm) into ~/.cache/agentnet. The embedding model is read from
# ../shared/models/all-minilm-l6-v2 (or AGENTNET_MODEL_DIR); without it recall is off.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentnet/target}"
ORT_DYLIB_PATH="$(infra/onnxruntime/setup.sh)"
AGENTNET_CHDB_LIB="$(infra/chdb/setup.sh)"
export ORT_DYLIB_PATH AGENTNET_CHDB_LIB
model="${AGENTNET_MODEL_DIR:-$PWD/../shared/models/all-minilm-l6-v2}"
if [ -f "$model/model.onnx" ]; then
  export AGENTNET_MODEL_DIR="$model"
else
  echo "scripts/up.sh: no model at $model; running without recall" >&2
fi
if [ "$#" -eq 0 ]; then
  set -- --demo
fi
cargo build --bin agentnet
exec "$CARGO_TARGET_DIR/debug/agentnet" up "$@"
