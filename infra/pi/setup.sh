#!/usr/bin/env bash
# Installs the Pi agent runtime (npm @mariozechner/pi-coding-agent, pinned in
# package-lock.json) into infra/pi/node_modules for the Pi extension tests, and prints the
# path of its `pi` command. Idempotent: a stamp file records the package-lock installed.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.agentnet-stamp
want=$(sha256sum package.json package-lock.json | sha256sum | cut -c1-16)
if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  command -v npm >/dev/null || { echo "infra/pi/setup.sh: npm is required (Node.js 20.6+)" >&2; exit 1; }
  # Install scripts are skipped: Pi runs without the optional native helpers they build.
  npm ci --ignore-scripts --no-fund --no-audit >&2
  echo "$want" > "$stamp"
fi
echo "$PWD/node_modules/.bin/pi"
