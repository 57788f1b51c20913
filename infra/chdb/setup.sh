#!/usr/bin/env bash
# Puts chDB's embedded ClickHouse library (libchdb.so, from the npm package
# @chdb/lib-linux-x64-gnu) where the indexer loads it, and prints its path. Idempotent.
#   export AGENTNET_CHDB_LIB=$(infra/chdb/setup.sh)
set -euo pipefail
version="${CHDB_VERSION:-26.5.3}"
dir="${AGENTNET_CACHE:-$HOME/.cache/agentnet}/chdb-$version"
lib="$dir/libchdb.so"
if [ ! -f "$lib" ]; then
  mkdir -p "$dir"
  tarball=$(cd "$dir" && npm pack --silent "@chdb/lib-linux-x64-gnu@$version")
  tar -xzf "$dir/$tarball" -C "$dir" package/libchdb.so
  mv "$dir/package/libchdb.so" "$lib"
  rm -rf "$dir/package" "$dir/$tarball"
fi
echo "$lib"
