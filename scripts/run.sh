#!/usr/bin/env bash
# Installs what steerd needs, builds it, and runs the main job: generation with a small
# model that steerd makes itself (random weights until the embedded default model lands).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh steerd
model=build/models/tiny-qwen2
if [ ! -f "$model/model.safetensors" ]; then
  build/bin/steerd init-model --config configs/tiny-qwen2.json --out "$model" --seed 1 --dtype f32
fi
echo "steerd generate with $model (random weights and a byte-level tokenizer: the text is"
echo "noise, the pipeline is real; the trained default model replaces it in a later release)"
build/bin/steerd generate --model "$model" --prompt "${1:-What is 12 + 30?}" --max-new-tokens 32 \
  --temperature 0.8 --seed 7
