#!/usr/bin/env bash
# Prints the Docker Compose command that can read infra/compose.yaml (`docker compose`, or
# the standalone `docker-compose`), installing Debian's docker-compose package when neither
# is there. Reading and checking a compose file needs no Docker engine.
#   AGENTNET_COMPOSE=$(infra/compose/setup.sh)
set -euo pipefail
if docker compose version >/dev/null 2>&1; then
  echo "docker compose"
  exit 0
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get install -y -q docker-compose >&2 \
    || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q docker-compose >&2; }
fi
echo "docker-compose"
