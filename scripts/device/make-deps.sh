#!/usr/bin/env bash
# Prepares, on the Debian 12 development machine, what scripts/device/cuda-check.sh
# needs on a GPU machine that has CUDA, a pip PyTorch, gcc, cmake and ninja but none of
# steerd's other build dependencies and no network:
#   .deps-debs/   the Debian packages (apt-get download), kept for reference
#   .deps/usr/    their contents (dpkg -x), pruned and patched (see below)
#   .deps-pack/   what travels: deps.tar.xz (.deps/usr, ~20 MB instead of ~83 MB) and
#                 fixtures/ (hf-reference and the qwen2_5 tokenizer from ../shared)
# All three are ignored through .git/info/exclude and never committed.
# Patches to the copies (nothing outside .deps changes):
#   - static archives other than gtest/gmock, docs, ICU's i18n/io/tools are removed;
#   - prometheus-cpp's CMake config is reduced to the core library (pull/push need
#     civetweb and curl, which steerd does not use);
#   - libz.so points at the system's libz.so.1 (zlib itself is not carried);
#   - every C++ header of abseil/protobuf/gRPC/re2/prometheus starts with
#     #include <cstdint>: GCC 13's libstdc++ no longer pulls it in transitively, and
#     abseil 20220623 relies on that.
# .pc files still say prefix=/usr; cuda-check.sh rewrites them where they land.
# Usage: bash scripts/device/make-deps.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(
  libabsl-dev libabsl20220623
  libgrpc++-dev libgrpc-dev libgrpc++1.51 libgrpc29 protobuf-compiler-grpc
  libprotobuf-dev libprotobuf32 libprotoc32 protobuf-compiler
  prometheus-cpp-dev libprometheus-cpp-core1.0 nlohmann-json3-dev
  libpcre2-dev libpcre2-8-0 libicu-dev libicu72 libsqlite3-dev libsqlite3-0
  libssl-dev libssl3 libgtest-dev libgmock-dev libre2-dev libre2-9
  libc-ares-dev libc-ares2 zlib1g-dev pkgconf pkgconf-bin libpkgconf3
)

grep -qx '/.deps\*/' .git/info/exclude 2>/dev/null || echo '/.deps*/' >> .git/info/exclude

rm -rf .deps-debs .deps .deps-pack
mkdir -p .deps-debs .deps .deps-pack/fixtures/tokenizers
(cd .deps-debs && apt-get download "${packages[@]}")
for f in .deps-debs/*.deb; do dpkg -x "$f" .deps; done

U=.deps/usr
L=$U/lib/x86_64-linux-gnu
find .deps -name '*.a' ! -name 'libgtest*' ! -name 'libgmock*' -delete
rm -rf $U/share/doc $U/share/man $U/share/lintian $U/share/doc-base $U/share/info \
  $U/share/icu $U/share/aclocal $U/src $L/icu $L/engines-3 $L/ossl-modules
rm -f $L/libicui18n* $L/libicuio* $L/libicutest* $L/libicutu* \
  $L/pkgconfig/icu-i18n.pc $L/pkgconfig/icu-io.pc \
  $L/libpcre2-16.so $L/libpcre2-32.so $L/libpcre2-posix.so \
  $L/pkgconfig/libpcre2-16.pc $L/pkgconfig/libpcre2-32.pc $L/pkgconfig/libpcre2-posix.pc \
  $L/libprotobuf-lite.so $L/libprometheus-cpp-pull.so $L/libprometheus-cpp-push.so
ln -sf /lib/x86_64-linux-gnu/libz.so.1 $L/libz.so

python3 - "$L/cmake/prometheus-cpp" "$U/include" <<'PY'
import os, re, sys
cfg, inc = sys.argv[1], sys.argv[2]
p = os.path.join(cfg, 'prometheus-cpp-targets-none.cmake')
s = open(p).read()
s = re.sub(r'# Import target "prometheus-cpp::(pull|push)".*?'
           r'_IMPORT_CHECK_FILES_FOR_prometheus-cpp::\1 [^\n]*\n\n', '', s, flags=re.S)
open(p, 'w').write(s)
p = os.path.join(cfg, 'prometheus-cpp-config.cmake')
s = open(p).read()
for part in ('PULL', 'PUSH'):
    s = s.replace('set(PROMETHEUS_CPP_ENABLE_%s ON)' % part,
                  'set(PROMETHEUS_CPP_ENABLE_%s OFF)  # steerd .deps: core only' % part)
open(p, 'w').write(s)
guard = '#include <cstdint>  // steerd .deps: GCC 13 no longer includes it transitively\n'
uses = re.compile(r'\b(u?int(8|16|32|64|ptr|max)_t)\b')
has = re.compile(r'#\s*include\s*[<"](cstdint|stdint\.h|inttypes\.h|cinttypes)[>"]')
count = 0
for top in ('absl', 'google', 'grpcpp', 'grpc++', 're2', 'prometheus'):
    for root, _, files in os.walk(os.path.join(inc, top)):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(('.h', '.hpp')) or os.path.islink(path):
                continue
            text = open(path, encoding='utf-8', errors='surrogateescape').read()
            if not uses.search(text) or has.search(text):
                continue
            open(path, 'w', encoding='utf-8', errors='surrogateescape').write(guard + text)
            count += 1
print('cstdint added to', count, 'headers')
PY

tar -C .deps -cf - usr | xz -T0 -6 > .deps-pack/deps.tar.xz
cp -r ../shared/fixtures/hf-reference .deps-pack/fixtures/
cp -r ../shared/fixtures/tokenizers/qwen2_5 .deps-pack/fixtures/tokenizers/
chmod -R u+w .deps-pack
du -sh .deps .deps-pack .deps-pack/*
