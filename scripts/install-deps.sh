#!/usr/bin/env bash
# Installs every Debian 12 package steerd needs to build, test and run.
# Idempotent and fast when everything is already present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # The OpenAI-compatible HTTP API (HTTP/1.1 with TLS through OpenSSL).
  libcpp-httplib-dev
  libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libpcre2-dev libicu-dev
  libgtest-dev libgmock-dev libbenchmark-dev libsqlite3-dev libssl-dev openssl
  # The shared store for replicas (libpq), and the PostgreSQL server the tests start.
  libpq-dev postgresql-15
  python3
  # tests/deploy/manifests_test.py reads the Kubernetes manifests with PyYAML.
  python3-yaml
  # The analysis builds: clang's thread-safety check, libFuzzer and its sanitizers.
  clang libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
