#!/usr/bin/env bash
# Installs what tests/integration/openai_http_test.cc needs to drive the OpenAI HTTP API
# with the official `openai` JavaScript SDK: Node.js and npm from Debian (when missing),
# then the exact SDK version locked in tests/http/node/package-lock.json into
# tests/http/node/node_modules (a test-only folder, nothing installed globally).
# Idempotent and fast when everything is already present.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

# A node from elsewhere (NodeSource, nvm) is kept: any Node.js >= 18 runs the SDK, and
# NodeSource's nodejs package conflicts with Debian's npm while shipping its own.
if ! command -v node >/dev/null 2>&1; then
  apt_install nodejs npm
elif ! command -v npm >/dev/null 2>&1; then
  apt_install npm
fi

cd tests/http/node
# The version the lock file pins, and the one installed (empty when none is): npm ci
# (which starts by deleting node_modules) runs only when they differ.
locked=$(node -p "require('./package-lock.json').packages['node_modules/openai'].version")
installed=""
if [ -f node_modules/openai/package.json ]; then
  installed=$(node -p "require('./node_modules/openai/package.json').version")
fi
if [ "$installed" != "$locked" ]; then
  npm ci --no-audit --no-fund
fi
