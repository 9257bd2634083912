#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of tests/fuzz, one per parser of untrusted
# input (FUZZING.md). The build folder build-fuzz/ is configured with clang++ and
# STEERD_FUZZ=ON: torch-free targets only, everything under ASan + UBSan.
# Usage:
#   scripts/fuzz.sh --list             names the fuzzers
#   scripts/fuzz.sh NAME SECONDS       builds (if needed) and runs one fuzzer
#   scripts/fuzz.sh --all SECONDS      runs each in turn for SECONDS (CI)
# A run fuzzes a working corpus, build-fuzz/corpus/NAME, seeded from the committed
# tests/fuzz/corpus/NAME; new inputs stay there for the next run. It ends with the
# executions and corpus size, and exits non-zero on a crash, leak or timeout, whose
# input is written under build-fuzz/artifacts/NAME/ (the path is printed).
# Environment: FUZZ_JOBS (build parallelism, default 2), FUZZ_ARGS (extra libFuzzer
# flags, e.g. "-seed=1").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=$root/build-fuzz

list_fuzzers() {
  for f in tests/fuzz/*_fuzzer.cc; do
    basename "$f" _fuzzer.cc
  done
}

# Longest input each fuzzer tries: large enough for its real inputs (tokenizer.json
# and chat templates are kilobytes), small enough to keep executions fast.
max_len_of() {
  case "$1" in
    tokenizer) echo 32768 ;;
    chat_template) echo 16384 ;;
    vector_ref) echo 256 ;;
    *) echo 4096 ;;
  esac
}

configure() {
  if [ ! -f "$build/build.ninja" ]; then
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_COMPILER=clang++ -DSTEERD_FUZZ=ON -DSTEERD_BUILD_TESTS=OFF \
      -DSTEERD_WERROR=OFF >/dev/null
  fi
}

build() {
  configure
  cmake --build "$build" --target "$@" -- -j "${FUZZ_JOBS:-2}"
}

# Runs one fuzzer for $2 seconds; returns libFuzzer's exit status.
run_one() {
  local name=$1 seconds=$2
  local corpus=$build/corpus/$name artifacts=$build/artifacts/$name/ log=$build/logs/$name.log
  mkdir -p "$corpus" "$artifacts" "$build/logs"
  if [ -d "tests/fuzz/corpus/$name" ]; then
    cp -n "tests/fuzz/corpus/$name"/* "$corpus"/ 2>/dev/null || true
  fi
  echo "== fuzzing $name for ${seconds}s (corpus $corpus)"
  local status=0
  # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags.
  "$build/bin/${name}_fuzzer" "$corpus" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$(max_len_of "$name")" -artifact_prefix="$artifacts" \
    -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
  local runs files bytes
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  files=$(find "$corpus" -type f | wc -l)
  bytes=$(du -sb "$corpus" | cut -f1)
  if [ "$status" -eq 0 ]; then
    echo "== $name: OK, ${runs:-?} executions in ${seconds}s; corpus $files files, $bytes bytes"
  else
    tail -n 60 "$log"
    echo "== $name: FAILED (exit $status) after ${runs:-?} executions; corpus $files files"
    grep -ho "Test unit written to .*" "$log" || true
    echo "== log: $log"
  fi
  return "$status"
}

case "${1:-}" in
  --list)
    list_fuzzers
    ;;
  --all)
    seconds=${2:?usage: scripts/fuzz.sh --all SECONDS}
    build steerd_fuzzers
    failed=()
    for name in $(list_fuzzers); do
      run_one "$name" "$seconds" || failed+=("$name")
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "== failed: ${failed[*]}"
      exit 1
    fi
    echo "== all fuzzers passed"
    ;;
  ""|-h|--help)
    sed -n '5,8p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    name=$1
    seconds=${2:?usage: scripts/fuzz.sh NAME SECONDS}
    if [ ! -f "tests/fuzz/${name}_fuzzer.cc" ]; then
      echo "no fuzzer named $name; scripts/fuzz.sh --list names them" >&2
      exit 2
    fi
    build "${name}_fuzzer"
    run_one "$name" "$seconds"
    ;;
esac
