#!/usr/bin/env bash
# Installs what steerd needs, builds everything and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Node.js and the pinned `openai` SDK that the OpenAI HTTP API test drives the server with.
bash scripts/install-test-node.sh
bash scripts/build.sh
# One test per core, except the programs that compute on every core, which run alone
# (RUN_SERIAL in tests/CMakeLists.txt); the long programs are split into parts.
ctest --test-dir build --output-on-failure -j "$(nproc)"
