#!/usr/bin/env bash
# Installs what steerd needs, builds it, and runs the main job on the embedded default
# model: starts the gRPC server (`steerd serve`: the embedded model on 127.0.0.1:50051,
# metrics on 127.0.0.1:9090, data in ./data), trains a steering vector on it with RL on
# the built-in arith task as a training job (`steerctl train`; once per model: the
# vector stays in ./data), generates through the API with and without it, measures both
# offline on the held-out test split, then drains the server. With --serve the server
# keeps running afterwards (Ctrl-C drains and stops it).
# Usage: scripts/run.sh [--serve] [PROMPT]
set -euo pipefail
cd "$(dirname "$0")/.."
keep_serving=0
if [ "${1:-}" = "--serve" ]; then
  keep_serving=1
  shift
fi
bash scripts/install-deps.sh
bash scripts/build.sh steerd steerctl
steerd=build/bin/steerd
steerctl=build/bin/steerctl
model=models/steerd-tiny
prompt=${1:-$'Q: 6*6*2+4+5\nA:'}

echo "== starting the server: $steerd serve"
$steerd serve > build/serve.log 2>&1 &
server=$!
stop_server() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server" || true
  fi
}
trap stop_server EXIT
# Ready when health says SERVING (the models are loaded and warm).
for _ in $(seq 1 300); do
  if $steerctl health > /dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then
    cat build/serve.log
    exit 1
  fi
  sleep 0.1
done
grep -v "^  sk-" build/serve.log || true

# The key of the default tenant is in data/api_key; steerctl finds it there.
run() {
  echo "\$ steerctl $(printf '%q ' "$@")"
  $steerctl "$@"
}
run models
# Trained once per model weights: the description names them.
weights=$(sha256sum "$model/model.safetensors" | cut -c1-12)
if $steerctl vectors get arith 2>/dev/null | grep -q "$weights"; then
  echo "== arith is already trained for these weights:"
  run vectors get arith
else
  echo "== training a steering vector on the server (RL on arith, about a minute on 2 cores)"
  run train --model steerd-tiny --task arith --output arith --eval-split test \
      --description "RL on arith, weights $weights"
fi
vector=build/arith.safetensors
$steerctl vectors export arith --out "$vector" > /dev/null
echo "== the base model:"
run generate --model steerd-tiny --prompt "$prompt" --max-new-tokens 64
echo "== the same model steered by arith (the latest version):"
run generate --model steerd-tiny --prompt "$prompt" --max-new-tokens 64 --vector arith
echo "== a chat message, rendered with the model's chat template:"
run generate --model steerd-tiny --message "user:(12+7)*3-5" --max-new-tokens 64 --vector arith
echo "== held-out accuracy on arith (test split, greedy, offline):"
echo "base:    $($steerd eval --model "$model" --task arith)"
echo "steered: $($steerd eval --model "$model" --task arith --steering "$vector")"

if [ "$keep_serving" = 1 ]; then
  echo "== serving on 127.0.0.1:50051 (metrics: curl 127.0.0.1:9090/metrics); Ctrl-C stops"
  trap 'stop_server; exit 0' INT TERM
  wait "$server"
else
  echo "== draining the server (SIGTERM)"
  stop_server
  tail -n 2 build/serve.log
fi
