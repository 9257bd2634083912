#!/usr/bin/env bash
# Installs what steerd needs, builds it, and runs the main job on the embedded default
# model: trains a steering vector with RL on the built-in arith task (once; it is kept in
# build/vectors/), then answers one question with and without it and measures both on
# the held-out test split.
# Usage: scripts/run.sh [PROMPT]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh steerd
steerd=build/bin/steerd
model=models/steerd-tiny
vector=build/vectors/arith.safetensors
mkdir -p build/vectors
if [ ! -f "$vector" ]; then
  echo "== training a steering vector for arith on $model (about 30 s on 2 cores)"
  $steerd train --model "$model" --task arith --out "$vector"
fi
prompt=${1:-$'Q: (12+7)*3-5\nA:'}
echo "== the base model:"
$steerd generate --model "$model" --prompt "$prompt" --max-new-tokens 64
echo "== the same model steered by $vector:"
$steerd generate --model "$model" --prompt "$prompt" --max-new-tokens 64 --steering "$vector"
echo "== held-out accuracy on arith (test split, greedy):"
echo "base:    $($steerd eval --model "$model" --task arith)"
echo "steered: $($steerd eval --model "$model" --task arith --steering "$vector")"
