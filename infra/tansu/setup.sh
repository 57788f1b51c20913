#!/usr/bin/env bash
# Builds the tansu Kafka-protocol broker (0.6.0, with its SQLite storage engine) from its
# crate once, into ~/.cache/agentnet (outside the clone, so CI reuses it), for the Kafka
# tests. Prints the binary's path. About 20 minutes on two cores the first time.
set -euo pipefail
version=0.6.0
root="${AGENTNET_CACHE:-$HOME/.cache/agentnet}/tansu-$version"
bin="$root/bin/tansu"
if [ ! -x "$bin" ]; then
  # Its own build directory: the workspace's may be in use by a build running beside it.
  env -u CARGO_TARGET_DIR CARGO_TARGET_DIR="$root/build" \
    cargo install --root "$root" tansu --version "$version" --locked --features libsql >&2
  rm -rf "$root/build"
fi
echo "$bin"
