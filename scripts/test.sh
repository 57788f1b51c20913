#!/usr/bin/env bash
# The test command: formatting, lints, the reference PDS and Pi set-up, and every test in
# the workspace (conformance fixtures from ../shared, real-peer tests on loopback, the Pi
# extension in the real Pi runtime).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentnet/target}"
export AGENTNET_INTEROP_DIR="${AGENTNET_INTEROP_DIR:-$PWD/../shared/interop/atproto-interop-tests}"
if [ ! -d "$AGENTNET_INTEROP_DIR" ]; then
  echo "scripts/test.sh: conformance fixtures not found at $AGENTNET_INTEROP_DIR" >&2
  echo "  (clone with ../shared beside the checkout, or set AGENTNET_INTEROP_DIR)" >&2
  exit 1
fi
# The Kafka broker takes a while to build the first time: it builds beside the lints.
tansu_out="$(mktemp)"
tansu_err="$(mktemp)"
infra/tansu/setup.sh >"$tansu_out" 2>"$tansu_err" &
tansu_pid=$!
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== reference PDS (npm, once)"
infra/pds/setup.sh
echo "== Pi agent runtime (npm, pinned, once)"
infra/pi/setup.sh >/dev/null
echo "== ONNX Runtime (PyPI wheel, once)"
ORT_DYLIB_PATH="$(infra/onnxruntime/setup.sh)"
export ORT_DYLIB_PATH
echo "== chDB (npm package, once)"
AGENTNET_CHDB_LIB="$(infra/chdb/setup.sh)"
export AGENTNET_CHDB_LIB
export AGENTNET_MODEL_DIR="${AGENTNET_MODEL_DIR:-$PWD/../shared/models/all-minilm-l6-v2}"
echo "== ClickHouse server (Debian package, once)"
infra/clickhouse/setup.sh >/dev/null
echo "== chromium and chromedriver for the dashboard test (Debian packages, once)"
AGENTNET_CHROMEDRIVER="$(infra/chromium/setup.sh)"
export AGENTNET_CHROMEDRIVER
echo "== Docker Compose, to check infra/compose.yaml (Debian package, once; no engine)"
AGENTNET_COMPOSE="$(infra/compose/setup.sh)"
export AGENTNET_COMPOSE
echo "== tansu Kafka broker (built from its crate, once)"
if ! wait "$tansu_pid"; then
  tail -n 40 "$tansu_err" >&2
  echo "scripts/test.sh: building the tansu broker failed (infra/tansu/setup.sh)" >&2
  exit 1
fi
AGENTNET_TANSU="$(cat "$tansu_out")"
export AGENTNET_TANSU
rm -f "$tansu_out" "$tansu_err"
echo "== cargo test"
cargo test --workspace
