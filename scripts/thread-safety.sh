#!/usr/bin/env bash
# Clang's thread-safety analysis over every translation unit of the project's own code
# (server/, client/, tests/; generated protobuf code is not checked). The ABSL_GUARDED_BY
# and ABSL_EXCLUSIVE_LOCKS_REQUIRED annotations are comments to GCC; this is what makes
# them checked. Exits non-zero on any diagnostic.
#
# It configures build-tsa/ with clang, generates the protobuf headers (protoc only),
# makes CMake's precompiled headers (ATen; once, then again only when a header they were
# made from changes) and runs `clang++ -fsyntax-only` with each file's own flags from
# build-tsa/compile_commands.json plus -Wthread-safety. No object file is built. Only the
# thread-safety warnings are enabled: the rest of clang's warnings are not this check's
# business (the GCC build holds the project to -Wall -Wextra).
#
# Usage: scripts/thread-safety.sh [regex]   (checks only the files whose path matches)
# Environment: CXX (default clang++), JOBS (parallel compilers, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX="${CXX:-clang++}"
JOBS="${JOBS:-2}"
FILTER="${1:-}"
BUILD=build-tsa

# STEERD_WERROR=OFF: -Werror would make clang's own -Wall -Wextra findings (which the
# project does not promise to be free of) fail the build; this check enables only the
# thread-safety warnings anyway.
if [ ! -f "$BUILD/build.ninja" ] || [ ! -f "$BUILD/compile_commands.json" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    -DSTEERD_WERROR=OFF >/dev/null
else
  # Re-runs CMake only when a CMakeLists.txt changed (a new source file, new flags).
  ninja -C "$BUILD" build.ninja >/dev/null
fi

# The generated headers the project's code includes: the protoc outputs themselves,
# not the steerd_proto library (whose .pb.cc files would be compiled too).
mapfile -t generated < <(ninja -C "$BUILD" -t targets all |
  sed -n 's/^\([^/][^:]*\.pb\.h\): CUSTOM_COMMAND$/\1/p')
if [ "${#generated[@]}" -gt 0 ]; then
  ninja -C "$BUILD" "${generated[@]}" >/dev/null
fi

exec python3 - "$BUILD/compile_commands.json" "$CXX" "$JOBS" "$FILTER" <<'EOF'
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys

db_path, cxx, jobs, pattern = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
root = os.getcwd()
# -Wno-everything first, so that only the thread-safety groups (attributes, analysis,
# precise, reference) are on, as errors; no error limit, so that every one is listed.
extra = ["-Wno-everything", "-Wthread-safety", "-Werror=thread-safety", "-ferror-limit=0"]


def args_of(entry):
    args = entry["arguments"] if "arguments" in entry else shlex.split(entry["command"])
    return [cxx] + args[1:]


def output_of(entry):
    args = args_of(entry)
    return os.path.normpath(os.path.join(entry["directory"], args[args.index("-o") + 1]))


def check_args(entry):
    """The entry's own compile command, as a syntax-only thread-safety check."""
    args, out, i = args_of(entry), [], 0
    while i < len(args):
        a = args[i]
        if a == "-o":
            i += 2
            continue
        if a in ("-c", "-Werror") or a == entry["file"]:
            i += 1
            continue
        out.append(a)
        i += 1
    return out + extra + ["-fsyntax-only", entry["file"]]


def pch_of(entry):
    """The precompiled header a file's command uses (-Xclang -include-pch -Xclang P)."""
    args = args_of(entry)
    for i in range(len(args) - 3):
        if args[i:i + 3] == ["-Xclang", "-include-pch", "-Xclang"]:
            return os.path.normpath(os.path.join(entry["directory"], args[i + 3]))
    return None


def pch_is_current(pch):
    """The PCH exists and is newer than every file it was made from (its depfile)."""
    dep = pch + ".tsa.d"
    if not (os.path.exists(pch) and os.path.exists(dep)):
        return False
    built = os.path.getmtime(pch)
    with open(dep) as f:
        text = f.read().replace("\\\n", " ")
    inputs = text.split(":", 1)[1].split() if ":" in text else []
    return all(os.path.exists(p) and os.path.getmtime(p) <= built for p in inputs)


with open(db_path) as f:
    db = json.load(f)
entries, pch_entries = [], {}
for e in db:
    rel = os.path.relpath(os.path.join(e["directory"], e["file"]), root)
    if e["file"].endswith("cmake_pch.hxx.cxx"):
        pch_entries[output_of(e)] = e
        continue
    if rel.split(os.sep)[0] not in ("server", "client", "tests"):
        continue
    if pattern and not re.search(pattern, rel):
        continue
    entries.append((rel, e))

# CMake's precompiled headers (ATen), made with their targets' own commands. Building
# them through ninja would build whole targets (a test's PCH waits for bin/steerd).
stale = sorted({p for _, e in entries if (p := pch_of(e)) and not pch_is_current(p)})


def build_pch(pch):
    e = pch_entries[pch]
    cmd = args_of(e) + ["-MD", "-MF", pch + ".tsa.d"]
    p = subprocess.run(cmd, cwd=e["directory"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    return pch, p.returncode, p.stdout


with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    for pch, rc, output in pool.map(build_pch, stale):
        if rc != 0:
            print(f"{os.path.relpath(pch, root)}: building the precompiled header failed "
                  f"(exit {rc}):\n{output}")
            sys.exit(2)


def run(item):
    rel, e = item
    p = subprocess.run(check_args(e), cwd=e["directory"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    return rel, p.returncode, p.stdout


diag_re = re.compile(r"^(\S.*?):(\d+):(\d+): (warning|error|fatal error): ")
seen = set()
with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    for rel, rc, output in pool.map(run, entries):
        # A header's diagnostic comes once per file that includes it: print it once.
        blocks, pending, current = [], [], None
        for line in output.splitlines():
            if diag_re.match(line):
                current = (line, pending + [line])
                blocks.append(current)
                pending = []
            elif line.startswith("In file included from"):
                pending.append(line)
            elif re.match(r"^\d+ (warnings?|errors?)( and \d+ errors?)? generated\.$", line):
                continue
            elif current is not None:
                current[1].append(line)
        for key, lines in blocks:
            if key not in seen:
                seen.add(key)
                print("\n".join(lines), flush=True)
        if rc != 0 and not blocks:
            # Failed without a diagnostic line (a crash, a missing compiler).
            print(f"{rel}: the check failed (exit {rc}):\n{output}", flush=True)
            seen.add(f"{rel}: exit {rc}")

print(f"thread-safety: {len(entries)} files checked, {len(seen)} diagnostics")
sys.exit(1 if seen or not entries else 0)
EOF
