#!/usr/bin/env bash
# Installs what steerd needs, builds everything and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
# One test program per core: most are single-threaded (the servers they start compute on
# one thread), and the long programs are split into parts (tests/CMakeLists.txt).
ctest --test-dir build --output-on-failure -j "$(nproc)"
