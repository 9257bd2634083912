#!/usr/bin/env bash
# Builds steerd with a sanitizer in a build folder of its own and runs tests under it.
# Usage:
#   scripts/sanitize.sh address   AddressSanitizer + UndefinedBehaviorSanitizer (with
#                                 LeakSanitizer): builds build-asan/, runs the whole suite
#   scripts/sanitize.sh thread    ThreadSanitizer: builds build-tsan/, runs the tests that
#                                 use threads (engine, server, training, client, storage)
# It exits 0 only when every test passes and no sanitizer reported anything, in the test
# programs or in the steerd / steerctl processes they start (each process writes its
# reports to build-*/sanitizer-logs/, which the script prints at the end).
# SANITIZE_TORCH_FREE=1 builds only the torch-free targets (STEERD_TORCH=OFF, folder
# build-asan-core/ or build-tsan-core/) and runs their tests: the parsers, tenancy,
# storage, the client library and steerctl, the API conversions, error details and
# /metrics, in minutes rather than the 12 minutes the libtorch targets take to build
# sanitized. CI runs the whole address mode (`scripts/sanitize.sh address`).
# Environment: SANITIZE_JOBS (build parallelism, default 2), SANITIZE_TESTS (a ctest -R
# regex instead of the default set), STEERD_TEST_TIMEOUT_SCALE (how much longer the
# integration tests wait for the slower sanitized server; default 4 for address, 8 for
# thread).
#
# Thread mode needs abseil's Mutex to tell TSan about its locking. Debian's abseil is
# not built with TSan, so TSan would see no ordering between two critical sections of
# one absl::Mutex and report every guarded variable as a race; likewise for the
# SpinLock that recycles threads' identities. The script therefore builds
# libabsl_synchronization and the abseil libraries under it (base, spinlock_wait,
# malloc_internal, graphcycles_internal) from the Debian source of the installed abseil
# (apt-get source into build-tsan/absl-src/; needs dpkg-dev and the Debian archive, or
# ABSL_SOURCE_DIR=an unpacked source of the same version) with -fsanitize=thread, and
# puts them first on LD_LIBRARY_PATH: our code and gRPC then lock through them.
# OpenMP: TSan cannot see libgomp's synchronization, so the tests run with
# OMP_NUM_THREADS=1 and the servers they start get --threads 1 (STEERD_TEST_SERVER_THREADS):
# no OpenMP worker threads exist, so none of libgomp's hand-offs are left unseen.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${SANITIZE_JOBS:-2}
mode=${1:-}
supp=$root/tests/sanitizers

# The test programs that run threads: TSan has nothing to check in the others.
thread_tests='^(engine_test|server_test|server_api_test|server_training_test|client_test|tenancy_storage_test|metrics_http_test|tokenizer_test)(\.[a-z_]+)?$'

torch=ON
suffix=
if [ "${SANITIZE_TORCH_FREE:-0}" = 1 ]; then
  torch=OFF
  suffix=-core
fi
case "$mode" in
  address) build=$root/build-asan$suffix ;;
  thread) build=$root/build-tsan$suffix ;;
  *)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

configure() {
  if [ ! -f "$build/build.ninja" ]; then
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DSTEERD_SANITIZE="$mode" -DSTEERD_TORCH="$torch" >/dev/null
  fi
}

# The abseil libraries rebuilt with TSan (see the header), each with the sources of its
# CMake target in the abseil tree: synchronization (absl::Mutex, whose annotations tell
# TSan about its locking), and below it the SpinLock, thread identities and the
# low-level allocator they recycle per-thread state through.
tsan_absl_libs=(
  "synchronization:synchronization/barrier synchronization/blocking_counter
    synchronization/internal/create_thread_identity synchronization/internal/per_thread_sem
    synchronization/internal/waiter synchronization/mutex synchronization/notification"
  "graphcycles_internal:synchronization/internal/graphcycles"
  "base:base/internal/cycleclock base/internal/spinlock base/internal/sysinfo
    base/internal/thread_identity base/internal/unscaledcycleclock"
  "spinlock_wait:base/internal/spinlock_wait"
  "malloc_internal:base/internal/low_level_alloc"
)

# The unpacked source of the installed abseil: ABSL_SOURCE_DIR, or fetched once with
# apt-get source into $build/absl-src/ (private apt state; the system's is untouched).
absl_source() {
  if [ -n "${ABSL_SOURCE_DIR:-}" ]; then echo "$ABSL_SOURCE_DIR"; return 0; fi
  local src=$build/absl-src/source
  if [ ! -d "$src" ]; then
    local system_lib package version
    system_lib=$(readlink -f "$(ldconfig -p | awk '/libabsl_base\.so\./ {print $NF; exit}')")
    package=$(dpkg -S "$system_lib" | cut -d: -f1)
    version=$(dpkg-query -W -f='${source:Package}=${source:Version}' "$package")
    echo "== fetching the source of $version (for TSan builds of abseil)" >&2
    local apt=$build/absl-src/apt
    mkdir -p "$apt/parts" "$apt/lists/partial" "$apt/cache/archives/partial"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      >"$apt/parts/debian-src.sources"
    local opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt/parts"
                -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
                -o "Debug::NoLocking=1")
    apt-get "${opts[@]}" update >/dev/null
    (cd "$build/absl-src" && apt-get "${opts[@]}" source --download-only "$version" >/dev/null 2>&1)
    dpkg-source -x "$build"/absl-src/*.dsc "$src" >/dev/null 2>&1
  fi
  echo "$src"
}

# Builds each of tsan_absl_libs with -fsanitize=thread into $build/tsan-absl/, under the
# system library's soname, linked against the same libraries it needs.
build_tsan_abseil() {
  local out=$build/tsan-absl
  local cxx=${CXX:-c++}
  local entry src=
  mkdir -p "$out/obj"
  for entry in "${tsan_absl_libs[@]}"; do
    local name=${entry%%:*} sources=${entry#*:}
    local system_lib soname
    system_lib=$(readlink -f "$(ldconfig -p | awk -v lib="libabsl_$name.so." 'index($1, lib) == 1 {print $NF; exit}')")
    soname=$(readelf -d "$system_lib" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
    if [ -f "$out/$soname" ]; then continue; fi
    if [ -z "$src" ]; then src=$(absl_source); fi
    echo "== building $soname with ThreadSanitizer"
    local f objs=()
    for f in $sources; do
      local obj=$out/obj/${f//\//_}.o
      "$cxx" -std=c++17 -fPIC -O1 -g -fsanitize=thread -I "$src" -c "$src/absl/$f.cc" -o "$obj"
      objs+=("$obj")
    done
    local needed=()
    for f in $(readelf -d "$system_lib" | sed -n 's/.*NEEDED.*\[\(libabsl_.*\)\]/\1/p'); do
      needed+=("-l:$f")
    done
    "$cxx" -shared -fsanitize=thread -Wl,-soname,"$soname" -o "$out/$soname.tmp" \
      "${objs[@]}" "${needed[@]}"
    # The replacement must define everything the system library does, or a program
    # would fail to start (or, worse, bind a symbol elsewhere).
    local missing
    missing=$(comm -23 <(nm -D --defined-only "$system_lib" | awk '{print $3}' | sort -u) \
                       <(nm -D --defined-only "$out/$soname.tmp" | awk '{print $3}' | sort -u))
    if [ -n "$missing" ]; then
      echo "the TSan build of $soname lacks symbols of $system_lib:" >&2
      echo "$missing" >&2
      exit 1
    fi
    mv "$out/$soname.tmp" "$out/$soname"
  done
}

configure
start=$(date +%s)
if [ "$mode" = thread ]; then build_tsan_abseil; fi
if [ "$mode" = thread ] && [ "$torch" = ON ]; then
  targets=(steerd steerctl engine_test server_test server_api_test server_training_test
           client_test tenancy_storage_test metrics_http_test tokenizer_test)
  cmake --build "$build" --target "${targets[@]}" -- -j "$jobs"
else
  cmake --build "$build" -- -j "$jobs"
fi
echo "== build took $(($(date +%s) - start)) s"

logs=$build/sanitizer-logs
rm -rf "$logs"
mkdir -p "$logs"
# Every process (test programs, the servers and CLIs they start) inherits these and
# writes its reports to $logs/<tool>.<pid>.
if [ "$mode" = address ]; then
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:strict_init_order=1:check_initialization_order=1:log_path=$logs/asan"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  export STEERD_TEST_TIMEOUT_SCALE=${STEERD_TEST_TIMEOUT_SCALE:-4}
  ctest_args=()
  if [ -n "${SANITIZE_TESTS:-}" ]; then ctest_args=(-R "$SANITIZE_TESTS"); fi
else
  export LD_LIBRARY_PATH=$build/tsan-absl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export TSAN_OPTIONS="suppressions=$supp/tsan.supp:print_suppressions=0:ignore_noninstrumented_modules=1:second_deadlock_stack=1:history_size=4:log_path=$logs/tsan"
  export OMP_NUM_THREADS=1 STEERD_TEST_SERVER_THREADS=1
  export STEERD_TEST_TIMEOUT_SCALE=${STEERD_TEST_TIMEOUT_SCALE:-8}
  ctest_args=(-R "${SANITIZE_TESTS:-$thread_tests}")
fi

start=$(date +%s)
status=0
ctest --test-dir "$build" --output-on-failure "${ctest_args[@]}" || status=$?
echo "== tests took $(($(date +%s) - start)) s"

if [ -n "$(ls -A "$logs")" ]; then
  for f in "$logs"/*; do
    echo "== sanitizer report $f"
    cat "$f"
  done
  echo "== $mode: sanitizer reports in $logs"
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "== $mode: tests failed"
  exit "$status"
fi
echo "== $mode: clean"
