#!/usr/bin/env bash
# Rebuilds the embedded default model, models/steerd-tiny, from nothing but steerd's own
# tools (see models/steerd-tiny/README.md): the seeded mixed-mode corpus of the built-in
# tasks, a byte-level BPE tokenizer trained on it, a randomly initialised Qwen2-shaped
# model, then full-model SFT on the corpus in three stages. About 30 minutes on 2 CPU cores.
# Usage: scripts/make-default-model.sh [OUT_DIR]   (default: models/steerd-tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-models/steerd-tiny}
bash scripts/build.sh steerd
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
steerd=build/bin/steerd
$steerd corpus --out "$work/corpus.jsonl" --count 100000 --seed 0
$steerd corpus --out "$work/tagged.jsonl" --count 100000 --seed 0 --tagged-fraction 0.4
$steerd init-model --config configs/steerd-tiny.json --out "$work/init" --seed 0 --dtype f32 \
  --tokenizer-corpus "$work/corpus.jsonl"
# Three SFT stages of full fine-tuning, each continuing from the last with a fresh
# optimizer: the plain corpus twice (lower peak learning rate and a new data order the
# second time), then the corpus with 40% of prompts naming their answer mode, which gives
# the model a mode feature that steering vectors can write.
$steerd train --model "$work/init" --data "$work/corpus.jsonl" --method full --objective sft \
  --steps 1500 --batch-size 64 --lr 3e-3 --warmup 50 --schedule cosine --weight-decay 0.01 \
  --seed 0 --out "$work/stage1"
$steerd train --model "$work/stage1" --data "$work/corpus.jsonl" --method full --objective sft \
  --steps 2000 --batch-size 64 --lr 2e-3 --warmup 20 --schedule cosine --weight-decay 0.01 \
  --seed 1 --out "$work/stage2"
$steerd train --model "$work/stage2" --data "$work/tagged.jsonl" --method full --objective sft \
  --steps 300 --batch-size 64 --lr 1e-3 --warmup 20 --schedule cosine --weight-decay 0.01 \
  --seed 2 --out "$out"
for task in arith arith-words hops; do
  echo "$task: base greedy $($steerd eval --model "$out" --task $task --json)"
done
echo "arith with the forced prefix ' Step by step:':" \
  "$($steerd eval --model "$out" --task arith --prefix ' Step by step:' --json)"
