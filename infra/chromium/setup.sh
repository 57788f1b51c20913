#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver once, for the dashboard's headless-browser
# test. Prints the driver's path.
set -euo pipefail
driver=/usr/bin/chromedriver
if [ ! -x "$driver" ] || [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get install -y -q --no-install-recommends chromium chromium-driver >&2 || {
    $sudo apt-get update -q >&2 && $sudo apt-get install -y -q --no-install-recommends chromium chromium-driver >&2
  }
fi
echo "$driver"
