#!/usr/bin/env bash
# Installs what steerd needs, builds it, and runs the main job on the embedded default
# model: trains a steering vector with RL on the built-in arith task (once per model; kept in
# build/vectors/), then answers one question with and without it and measures both on
# the held-out test split.
# Usage: scripts/run.sh [PROMPT]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh steerd
steerd=build/bin/steerd
model=models/steerd-tiny
# Named after the model's weights, so a changed model never reuses an old vector.
vector=build/vectors/arith-$(sha256sum "$model/model.safetensors" | cut -c1-12).safetensors
mkdir -p build/vectors
if [ ! -f "$vector" ]; then
  echo "== training a steering vector for arith on $model (about 30 s on 2 cores)"
  $steerd train --model "$model" --task arith --out "$vector"
fi
prompt=${1:-$'Q: 6*6*2+4+5\nA:'}
echo "== the base model:"
$steerd generate --model "$model" --prompt "$prompt" --max-new-tokens 64
echo "== the same model steered by $vector:"
$steerd generate --model "$model" --prompt "$prompt" --max-new-tokens 64 --steering "$vector"
echo "== held-out accuracy on arith (test split, greedy):"
echo "base:    $($steerd eval --model "$model" --task arith)"
echo "steered: $($steerd eval --model "$model" --task arith --steering "$vector")"
