#!/usr/bin/env bash
# Rebuilds the embedded default model, models/steerd-tiny, from nothing but steerd's own
# tools (see models/steerd-tiny/README.md): the seeded mixed-mode corpus of the built-in
# tasks, a byte-level BPE tokenizer trained on it, a randomly initialised Qwen2-shaped
# model, then full-model SFT on the corpus in two stages. About 30 minutes on 2 CPU cores.
# Usage: scripts/make-default-model.sh [OUT_DIR]   (default: models/steerd-tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-models/steerd-tiny}
bash scripts/build.sh steerd
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
steerd=build/bin/steerd
$steerd corpus --out "$work/corpus.jsonl" --count 100000 --seed 0
$steerd init-model --config configs/steerd-tiny.json --out "$work/init" --seed 0 --dtype f32 \
  --tokenizer-corpus "$work/corpus.jsonl"
# Two SFT stages of full fine-tuning (the second continues from the first with a fresh
# optimizer, a lower peak learning rate and a new data order).
$steerd train --model "$work/init" --data "$work/corpus.jsonl" --method full --objective sft \
  --steps 1500 --batch-size 64 --lr 3e-3 --warmup 50 --schedule cosine --weight-decay 0.01 \
  --seed 0 --out "$work/stage1"
$steerd train --model "$work/stage1" --data "$work/corpus.jsonl" --method full --objective sft \
  --steps 2000 --batch-size 64 --lr 2e-3 --warmup 20 --schedule cosine --weight-decay 0.01 \
  --seed 1 --out "$out"
for task in arith arith-words hops; do
  echo "$task: base greedy $($steerd eval --model "$out" --task $task --json)"
done
echo "arith with the forced prefix ' Step by step:':" \
  "$($steerd eval --model "$out" --task arith --prefix ' Step by step:' --json)"
