#!/usr/bin/env bash
# Installs Debian's clickhouse-server (18.16) once, for the tests that run the record index
# against a ClickHouse server. Prints the server binary's path.
set -euo pipefail
bin=/usr/sbin/clickhouse-server
if [ ! -x "$bin" ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get install -y -q clickhouse-server >&2 || {
    $sudo apt-get update -q >&2 && $sudo apt-get install -y -q clickhouse-server >&2
  }
fi
echo "$bin"
