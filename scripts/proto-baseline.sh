#!/usr/bin/env bash
# Records the released steerd.v1 contract: writes proto/steerd/v1/descriptor_set.binpb,
# the descriptor set of proto/steerd/v1/*.proto with their imports (so it builds on its
# own). Run it when a version of the API is released, and commit the file with the
# release: it is what every later change must stay compatible with.
# tests/unit/proto_compat_test.cc (proto_compat_test in ctest) compares the compiled
# protos with it and fails on a removed, renumbered, renamed or retyped field, method,
# message, enum or enum value. Running it at any other time would bless whatever
# incompatible change is in the working tree.
#
# Usage: scripts/proto-baseline.sh            (from anywhere in the checkout)
#        scripts/proto-baseline.sh --check    (exit 1 if the file differs from the protos)
set -euo pipefail

cd "$(dirname "$0")/.."
out=proto/steerd/v1/descriptor_set.binpb

# Sorted, and without source info (comments, line numbers), so the bytes depend only on
# the contract: editing a comment changes nothing here.
mapfile -t protos < <(find proto/steerd/v1 -name '*.proto' | LC_ALL=C sort)

case "${1:-}" in
  "")
    protoc --proto_path=proto --include_imports --descriptor_set_out="$out" "${protos[@]}"
    echo "wrote $out from ${#protos[@]} files; commit it with the release"
    ;;
  --check)
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    protoc --proto_path=proto --include_imports --descriptor_set_out="$tmp" "${protos[@]}"
    if cmp -s "$tmp" "$out"; then
      echo "$out matches the protos"
    else
      echo "$out differs from the protos (fine between releases: the protos may grow)"
      exit 1
    fi
    ;;
  -h|--help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "usage: scripts/proto-baseline.sh [--check]" >&2
    exit 2
    ;;
esac
