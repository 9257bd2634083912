#!/usr/bin/env bash
# Builds steerd against the GPU machine's pip PyTorch (CUDA libtorch 2.x) and checks the
# CUDA path. Run on that machine from the repository root, after
# scripts/device/make-deps.sh prepared .deps-pack/ here (carry it):
#
#   run(command="bash scripts/device/cuda-check.sh", carry=[".deps-pack"])
#
# Steps (each logged to $OUT/log.txt; the first failure stops the script with a
# FAILED line, and the log and $OUT/summary.txt still come back):
#   0. machine facts (nvidia-smi -L, gcc, cmake, nvcc, torch);
#   1. unpack .deps-pack/deps.tar.xz (Debian 12 build dependencies: abseil, gRPC,
#      protobuf + protoc + grpc_cpp_plugin, prometheus-cpp, nlohmann-json, pcre2, ICU,
#      SQLite, OpenSSL headers, gtest, pkgconf) into .deps/ and point its .pc files there;
#   2. configure build-cuda/ (Release, Ninja) with CMAKE_PREFIX_PATH=.deps/usr;torch's
#      prefix, LD_LIBRARY_PATH/PATH on .deps for protoc and the linker, and build the
#      targets steerd and model_test (ninja -k 0: every compile error in one run).
#      Two workarounds for pip's libtorch, each explained where it is set: a -I copy of
#      Debian's protobuf headers (torch/include ships an older google/protobuf), and
#      -lstdc++ first on the link line (libtorch.so exports std::filesystem functions).
#      The top-level CMakeLists.txt itself finds Protobuf before Torch (Caffe2Config
#      otherwise aliases protobuf::libprotobuf to an empty target);
#   3. a. greedy generate on steerd-tiny, --device cuda vs --device cpu: ids must match;
#      b. the same with a random steering vector ([4,192] 'steering', made here), plus
#         the logits of a fixed sequence cpu vs cuda (max |diff| must stay < 1e-2);
#      d. bench decode --device cuda --batch 1,16 --new-tokens 32 --json on a random
#         Qwen2.5-0.5B-shaped bf16 model made here with init-model ($OUT/bench_decode.json);
#      c. model_test (the HF parity suite, CPU; fixtures from .deps-pack/fixtures);
#      e. bench serve --device cuda --seconds 3 --training-concurrency 8 --json
#         ($OUT/bench_serve.json), last as the longest and the most likely to break.
#      d and e are skipped (said so in the log) when STEERD_CHECK_BUDGET_S (default
#      300) seconds would run out, and e drops to concurrency 8 when short.
# Setup, build, a, b and d stop the script at their first failing command; a comparison
# that fails (ids or logits differ) and a failing or crashing model_test or bench serve
# are logged as CHECK FAILED and the other checks still run (device time is scarce); the
# script then exits 1. Typical run on an H200 (16 cores): ~60 s to build, ~220 s in all.
# Environment: OUT (default ./out-cuda), STEERD_CHECK_BUDGET_S, JOBS (default nproc),
# STEERD_DRYRUN=1 (on the Debian dev machine: Debian's CPU libtorch, --device cpu in
# place of cuda; tests this script without a GPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out-cuda}
mkdir -p "$OUT"
LOG=$OUT/log.txt
SUMMARY=$OUT/summary.txt
: >"$LOG"
: >"$SUMMARY"
BUDGET=${STEERD_CHECK_BUDGET_S:-300}
DRYRUN=${STEERD_DRYRUN:-0}
JOBS=${JOBS:-$(nproc)}
BUILD=$ROOT/build-cuda
GPU=cuda
[ "$DRYRUN" = 1 ] && { GPU=cpu; BUILD=$ROOT/build-cuda-dryrun; }
BIN=$BUILD/bin
TMP=$(mktemp -d)
T0=$SECONDS

log() { echo "== [$((SECONDS - T0))s] $*" | tee -a "$LOG"; }
note() { echo "$*" | tee -a "$SUMMARY" "$LOG" >/dev/null; echo "$*"; }
fail() {
  note "FAILED at $((SECONDS - T0))s: $*"
  exit 1
}
MISMATCHES=0
mismatch() {
  note "CHECK FAILED: $*"
  MISMATCHES=$((MISMATCHES + 1))
}
# step NAME CMD...: runs CMD with its output in the log; stops the script on failure.
step() {
  local name=$1
  shift
  log "$name: $*"
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || fail "$name (exit $rc; see log.txt)"
}
# capture FILE NAME CMD...: like step, stdout to FILE (and the log), stderr to the log.
capture() {
  local file=$1 name=$2
  shift 2
  log "$name: $*"
  "$@" >"$file" 2>>"$LOG"
  local rc=$?
  cat "$file" >>"$LOG"
  [ "$rc" -eq 0 ] || fail "$name (exit $rc; see log.txt)"
}
left() { echo $((BUDGET - (SECONDS - T0))); }
py() { env -u LD_LIBRARY_PATH python3 "$@"; }

# ---- 0. machine facts --------------------------------------------------------------
log "machine"
{
  uname -srm
  grep PRETTY_NAME /etc/os-release
  echo "nproc $(nproc)"
  nvidia-smi -L 2>&1 || echo "nvidia-smi -L failed"
  gcc --version | head -1
  cmake --version | head -1
  echo "ninja $(ninja --version)"
  command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>&1
  for l in libz.so.1 libssl.so.3 libsqlite3.so.0 libicuuc libprotobuf libabsl_base; do
    echo "system $l: $(ldconfig -p | grep -c "$l")"
  done
  command -v pkg-config || echo "no system pkg-config"
} 2>&1 | tee -a "$LOG"
[ "$DRYRUN" = 1 ] || nvidia-smi -L >/dev/null 2>&1 || fail "nvidia-smi -L: no GPU"

if [ "$DRYRUN" = 1 ]; then
  TORCH_ARGS=(-DTorch_DIR=/usr/lib/x86_64-linux-gnu/cmake/Torch)
  TORCH_PREFIX=
else
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  TORCH_PREFIX=$(py -c 'import torch; print(torch.utils.cmake_prefix_path)') ||
    fail "python3 cannot import torch"
  py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)' \
    2>&1 | tee -a "$LOG"
  nvcc --version 2>&1 | tail -2 | tee -a "$LOG"
  TORCH_LIB=${TORCH_PREFIX%/share/cmake}/lib
  echo "torch lib: $TORCH_LIB; protobuf symbols exported by libtorch_cpu:" \
    "$(nm -D --defined-only "$TORCH_LIB/libtorch_cpu.so" 2>/dev/null | grep -c protobuf)," \
    "outside onnx_torch:" | tee -a "$LOG"
  nm -DC --defined-only "$TORCH_LIB/libtorch_cpu.so" 2>/dev/null | grep protobuf | grep -v onnx_torch |
    head -20 | cut -c1-200 | tee -a "$LOG"
  export CUDACXX=${CUDACXX:-$(command -v nvcc)}
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  TORCH_ARGS=(-DCMAKE_CUDA_ARCHITECTURES=90)
fi

# ---- 1. dependencies ---------------------------------------------------------------
log "unpacking .deps-pack/deps.tar.xz"
[ -f .deps-pack/deps.tar.xz ] || fail ".deps-pack/deps.tar.xz missing (run make-deps.sh here, carry .deps-pack)"
rm -rf .deps && mkdir -p .deps
if command -v xz >/dev/null; then
  tar -xJf .deps-pack/deps.tar.xz -C .deps || fail "untar deps"
else
  py -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    .deps-pack/deps.tar.xz .deps || fail "untar deps (python)"
fi
DEPS=$ROOT/.deps/usr
DEPS_LIB=$DEPS/lib/x86_64-linux-gnu
# Debian's .pc files say prefix=/usr; make them point into .deps.
sed -i -E "s#^([A-Za-z_]+[[:space:]]*=[[:space:]]*)/usr#\1$DEPS#; s#-I/usr/#-I$DEPS/#" \
  "$DEPS_LIB"/pkgconfig/*.pc "$DEPS"/share/pkgconfig/*.pc
# pip's torch/include holds an old google/protobuf (libtorch's own, 3.13-era); with torch's
# include directory ahead of .deps/usr/include among the -isystem directories it
# shadows Debian's protobuf 3.21 headers. A copy of the latter in a directory given
# only with -I is searched before every -isystem directory.
mkdir -p "$ROOT/.deps/first" && cp -a "$DEPS/include/google" "$ROOT/.deps/first/"
CXXFLAGS_FIRST="-I$ROOT/.deps/first"
export LD_LIBRARY_PATH=$DEPS_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$DEPS/bin:$PATH
export PKG_CONFIG_LIBDIR=$DEPS_LIB/pkgconfig:$DEPS/share/pkgconfig
export CMAKE_POLICY_VERSION_MINIMUM=3.5
step "pkg-config" "$DEPS/bin/pkgconf" --cflags --libs icu-uc libpcre2-8
step "protoc" "$DEPS/bin/protoc" --version

# ---- 2. configure and build --------------------------------------------------------
# Linker flags: --no-as-needed keeps libtorch_cuda.so (nothing references it directly;
# its static initialisers register CUDA). -lstdc++ ahead of everything puts
# libstdc++.so.6 first among the executables' NEEDED libraries: pip's libtorch.so
# exports std::filesystem functions linked statically from an older libstdc++
# (pytorch/pytorch#133437), and when libtorch.so comes first, steerd's calls such as
# std::filesystem::remove_all bind to those copies and crash (model_test segfaulted in
# ModelRuntimeTest::ScratchModel, bench serve at exit).
rm -rf "$BUILD"
step "configure" cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_PREFIX_PATH=$DEPS;$TORCH_PREFIX" "${TORCH_ARGS[@]}" \
  -DPKG_CONFIG_EXECUTABLE="$DEPS/bin/pkgconf" \
  -DProtobuf_PROTOC_EXECUTABLE="$DEPS/bin/protoc" \
  -DSTEERD_GRPC_CPP_PLUGIN="$DEPS/bin/grpc_cpp_plugin" \
  -DOPENSSL_ROOT_DIR="$DEPS" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--no-as-needed -lstdc++" -DCMAKE_CXX_FLAGS="$CXXFLAGS_FIRST" \
  -DSTEERD_FIXTURES_DIR="$ROOT/.deps-pack/fixtures"
log "where the dependencies were found"
grep -E '^(Torch_DIR|absl_DIR|gRPC_DIR|prometheus-cpp_DIR|GTest_DIR|nlohmann_json_DIR|Protobuf_(LIBRARY|INCLUDE_DIR|PROTOC_EXECUTABLE)|SQLite3_(LIBRARY|INCLUDE_DIR)|OPENSSL_(CRYPTO_LIBRARY|INCLUDE_DIR)|ZLIB_(LIBRARY_RELEASE|INCLUDE_DIR)|CMAKE_CUDA_COMPILER|CMAKE_CXX_COMPILER):' \
  "$BUILD/CMakeCache.txt" | tee -a "$LOG"
# build [EXTRA CMAKE ARGS]: configures (when given args) and builds; errors also go to
# $OUT/build_errors.txt. Returns ninja's status.
build() {
  if [ $# -gt 0 ]; then
    step "reconfigure" cmake "$BUILD" "$@"
  fi
  log "build: ninja -C $BUILD -j $JOBS -k 0 steerd model_test"
  ninja -C "$BUILD" -j "$JOBS" -k 0 steerd model_test 2>&1 | tee -a "$LOG" >"$TMP/build.txt"
  local rc=${PIPESTATUS[0]}
  grep -E -A3 'error:|undefined reference|FAILED:' "$TMP/build.txt" | head -400 >"$OUT/build_errors.txt"
  return "$rc"
}
if ! build; then
  log "build failed; first errors:"
  head -60 "$OUT/build_errors.txt"
  if grep -q "defined in header '<cstdint>'" "$TMP/build.txt"; then
    # GCC 13 dropped transitive <cstdint>: force it into every file (which rules out
    # the precompiled header, so those are switched off) and build once more.
    note "build: missing <cstdint> under $(gcc -dumpversion); rebuilding with -include cstdint"
    build -DCMAKE_CXX_FLAGS="$CXXFLAGS_FIRST -include cstdint" -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON ||
      fail "build (also with -include cstdint; see build_errors.txt)"
  else
    fail "build (see build_errors.txt)"
  fi
fi
log "libraries steerd needs"
readelf -d "$BIN/steerd" | grep NEEDED | grep -E 'torch|c10|cuda|grpc|protobuf' | tee -a "$LOG"
[ "$DRYRUN" = 1 ] || readelf -d "$BIN/steerd" | grep -q 'libtorch_cuda' || fail "steerd does not link libtorch_cuda.so"
note "build: ok in $((SECONDS - T0))s"

# ---- 3a. greedy generate, cuda vs cpu ----------------------------------------------
PROMPT='Q: 6*6*2+4+5\nA:'
GEN=(generate --model models/steerd-tiny --prompt "$PROMPT" --max-new-tokens 32 --json)
ids() { py -c 'import json, sys; print(",".join(map(str, json.load(open(sys.argv[1]))["ids"])))' "$1"; }
# Smoke: libtorch_cpu exports some protobuf symbols; should steerd (which also loads
# Debian's libprotobuf) die at start-up, retry once with Debian's library preloaded.
log "smoke: steerd generate --device cpu"
"$BIN/steerd" "${GEN[@]}" --device cpu >>"$LOG" 2>&1
rc=$?
if [ "$rc" -ge 128 ]; then
  note "smoke: steerd died with exit $rc; retrying with LD_PRELOAD=libprotobuf.so.32"
  export LD_PRELOAD=$DEPS_LIB/libprotobuf.so.32
  "$BIN/steerd" "${GEN[@]}" --device cpu >>"$LOG" 2>&1 || fail "smoke: steerd generate (also with LD_PRELOAD)"
  note "smoke: works with LD_PRELOAD=libprotobuf.so.32 (a protobuf symbol clash with libtorch)"
elif [ "$rc" -ne 0 ]; then
  fail "smoke: steerd generate --device cpu (exit $rc)"
fi
capture "$TMP/gen_gpu.json" "generate $GPU" "$BIN/steerd" "${GEN[@]}" --device "$GPU"
capture "$TMP/gen_cpu.json" "generate cpu" "$BIN/steerd" "${GEN[@]}" --device cpu
a_gpu=$(ids "$TMP/gen_gpu.json")
a_cpu=$(ids "$TMP/gen_cpu.json")
note "a. unsteered ids $GPU: $a_gpu"
note "a. unsteered ids cpu:  $a_cpu"
if [ "$a_gpu" = "$a_cpu" ]; then note "a. PASS (identical)"; else
  mismatch "a. greedy ids differ between $GPU and cpu"; fi

# ---- 3b. steered -------------------------------------------------------------------
# A [4,192] float32 tensor 'steering' (N(0, 10^2), seed 0) with the steerd format tag.
py - "$TMP/vec.safetensors" <<'PY'
import json, random, struct, sys
layers, hidden, std = 4, 192, 10.0
rng = random.Random(0)
data = struct.pack('<%df' % (layers * hidden), *[rng.gauss(0.0, std) for _ in range(layers * hidden)])
header = json.dumps({"__metadata__": {"format": "steerd.steering.v1"},
                     "steering": {"dtype": "F32", "shape": [layers, hidden],
                                  "data_offsets": [0, len(data)]}}).encode()
header += b' ' * (-len(header) % 8)
open(sys.argv[1], 'wb').write(struct.pack('<Q', len(header)) + header + data)
PY
[ -s "$TMP/vec.safetensors" ] || fail "b. making the steering vector"
capture "$TMP/sgen_gpu.json" "steered generate $GPU" "$BIN/steerd" "${GEN[@]}" --device "$GPU" --steering "$TMP/vec.safetensors"
capture "$TMP/sgen_cpu.json" "steered generate cpu" "$BIN/steerd" "${GEN[@]}" --device cpu --steering "$TMP/vec.safetensors"
b_gpu=$(ids "$TMP/sgen_gpu.json")
b_cpu=$(ids "$TMP/sgen_cpu.json")
note "b. steered ids $GPU: $b_gpu"
note "b. steered ids cpu:  $b_cpu"
if [ "$b_gpu" = "$b_cpu" ]; then note "b. PASS (identical)"; else
  mismatch "b. steered greedy ids differ between $GPU and cpu"; fi
[ "$b_cpu" != "$a_cpu" ] && note "b. the vector changes the output (as intended)" ||
  note "b. note: the vector did not change the output"
LOGITS=(logits --model models/steerd-tiny --ids 274,275,58,260,259,386,445,125 --json --steering "$TMP/vec.safetensors")
capture "$TMP/logits_gpu.json" "steered logits $GPU" "$BIN/steerd" "${LOGITS[@]}" --device "$GPU"
capture "$TMP/logits_cpu.json" "steered logits cpu" "$BIN/steerd" "${LOGITS[@]}" --device cpu
diff=$(py -c '
import json, sys
a = json.load(open(sys.argv[1]))["logits"]; b = json.load(open(sys.argv[2]))["logits"]
assert len(a) == len(b)
print(max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)))' "$TMP/logits_gpu.json" "$TMP/logits_cpu.json") ||
  fail "b. comparing logits"
note "b. steered logits max |$GPU - cpu| = $diff"
py -c 'import sys; sys.exit(0 if float(sys.argv[1]) < 1e-2 else 1)' "$diff" &&
  note "b. PASS (logits within 1e-2)" || mismatch "b. logits differ by $diff"
capture "$TMP/gen_bf16.json" "generate $GPU bf16 (information only)" "$BIN/steerd" "${GEN[@]}" --device "$GPU" --dtype bf16
note "b. unsteered ids $GPU bf16 (information only): $(ids "$TMP/gen_bf16.json")"

# ---- 3d. bench decode --------------------------------------------------------------
if [ "$(left)" -lt 60 ]; then
  note "d. SKIPPED: $(left)s of the ${BUDGET}s budget left"
else
  MODEL=$TMP/qwen05b
  step "init-model" "$BIN/steerd" init-model --config configs/qwen2.5-0.5b-shape.json --out "$MODEL" \
    --seed 0 --dtype bf16 --tokenizer .deps-pack/fixtures/tokenizers/qwen2_5
  capture "$OUT/bench_decode.json" "bench decode $GPU" "$BIN/steerd" bench decode --model "$MODEL" \
    --device "$GPU" --batch 1,16 --new-tokens 32 --json
  note "d. bench decode $GPU: $(tail -1 "$OUT/bench_decode.json")"
  rm -rf "$MODEL"
fi

# ---- 3c. model_test (CPU) ----------------------------------------------------------
# A failing, crashing or hanging test binary is a CHECK FAILED; the script goes on to e.
log "model_test: $BIN/model_test --gtest_brief=1"
timeout 120 "$BIN/model_test" --gtest_brief=1 >"$OUT/model_test.txt" 2>&1
rc=$?
cat "$OUT/model_test.txt" >>"$LOG"
note "c. model_test (exit $rc): $(grep -E '^\[  (PASSED|FAILED)' "$OUT/model_test.txt" | tr '\n' ' ')"
[ "$rc" -eq 0 ] || mismatch "c. model_test exit $rc (124: timeout, >128: signal)"

# ---- 3e. bench serve ---------------------------------------------------------------
if [ "$(left)" -lt 45 ]; then
  note "e. SKIPPED: $(left)s of the ${BUDGET}s budget left"
else
  CONC=1,8,32
  [ "$(left)" -lt 110 ] && CONC=8
  log "bench serve $GPU (concurrency $CONC)"
  timeout 140 "$BIN/steerd" bench serve --device "$GPU" --seconds 3 --training-concurrency 8 \
    --concurrency "$CONC" --json >"$OUT/bench_serve.json" 2>>"$LOG"
  rc=$?
  cat "$OUT/bench_serve.json" >>"$LOG"
  note "e. bench serve $GPU (concurrency $CONC, exit $rc): $(tail -1 "$OUT/bench_serve.json")"
  [ "$rc" -eq 0 ] || mismatch "e. bench serve exit $rc"
fi

rm -rf "$TMP"
[ "$MISMATCHES" -eq 0 ] || fail "$MISMATCHES comparison(s) failed (CHECK FAILED lines above)"
note "ALL CHECKS PASSED in $((SECONDS - T0))s"
