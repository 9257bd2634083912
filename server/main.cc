// steerd: the composition root. Dispatches to the subcommands; holds no logic.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "server/cli/commands.h"
#include "server/cli/tokenize_command.h"

namespace {

constexpr char kUsage[] = R"(steerd: train and serve per-tenant steering vectors on frozen LLMs.

Usage: steerd <command> [flags]

Serving:
  serve       Serve the gRPC API (Models, Vectors, Generation, health, reflection).
                [--model NAME=DIR ...] (default: the embedded steerd-tiny)
                [--listen 127.0.0.1:50051] [--metrics-listen 127.0.0.1:9090 | off]
                [--metrics-port N] [--data-dir data] [--tenants FILE.json]
                [--tls-cert PEM --tls-key PEM] [--drain-seconds 30] [--max-batch 64]
                [--max-waiting 256] [--vector-cache-size 256] [--max-prompt-tokens N]
                [--max-new-tokens N] [--max-message-bytes N] [--dtype ...] [--device ...]
                [--threads N] [--weights mapped|hugepages]

Commands (offline):
  generate    Generate text with a model, optionally steered.
                --model DIR (--prompt TEXT | --ids 1,2,3) [--max-new-tokens N]
                [--temperature T] [--top-p P] [--top-k K] [--seed S] [--stop STR]
                [--steering FILE] [--scale X] [--ignore-eos] [--logprobs] [--json]
                [--dtype auto|f32|bf16] [--device auto|cpu|cuda] [--threads N]
  logits      Print the logits of every position as JSON.
                --model DIR --ids 1,2,3 [--steering FILE] [--scale X] [--dtype ...] --json
  tokenize    Encode JSONL lines {"text": ...}; print {"ids": [...], "decoded": ...}.
                --model DIR --input FILE.jsonl
  init-model  Write a random-weight model in Hugging Face layout.
                --config CONFIG.json --out DIR [--seed N] [--dtype f32|bf16]
                [--tokenizer DIR | --tokenizer-corpus FILE.jsonl]
                (default: a byte-level tokenizer of 256 tokens; --tokenizer-corpus trains
                a BPE tokenizer of up to the config's vocab_size tokens on the records'
                prompt + solution (or answer), shrinking vocab_size if it stops early)
  dataset     Write one split of a built-in task (arith, arith-words, hops) as JSONL.
                --task NAME --split train|dev|test --out FILE.jsonl
                [--count N]   (default 1000 train, 200 dev, 500 test) [--seed S]
  corpus      Write the mixed-mode pre-training corpus of the default model as JSONL.
                --out FILE.jsonl [--count N] (default 100000) [--seed S]
                [--tagged-fraction F] (share of prompts that also name the mode)
  train       Train a steering vector (or LoRA adapter, or every weight) on a task.
                --model DIR (--task NAME | --data FILE.jsonl) --out PATH
                [--method steering|lora|full] [--objective rl|sft] [--algorithm rloo|grpo]
                [--steps N] [--prompts-per-step P] [--rollouts G] [--batch-size N]
                [--micro-batch N] [--lr X] [--warmup N] [--schedule constant|cosine]
                [--weight-decay X] [--grad-clip X] [--temperature T] [--max-new-tokens N]
                [--layers 0,1,..] [--lora-rank R] [--lora-alpha A] [--lora-targets a,b]
                [--verifier boxed|numeric|exact|regex] [--regex RE] [--correct-reward X]
                [--wrong-reward X] [--format-reward X] [--seed S] [--train-count N]
                [--eval-every N] [--eval-count N] [--eval-data FILE] [--test-count N]
                [--checkpoint FILE] [--checkpoint-every N] [--resume]
                [--save-dtype f32|bf16] [--absolute-lr] [--json] [--quiet]
  eval        Accuracy (greedy unless --temperature) on a task split or a JSONL file.
                --model DIR (--task NAME [--split test] [--count N] | --data FILE)
                [--steering FILE] [--scale X] [--lora FILE] [--prefix TEXT]
                [--max-new-tokens N] [--temperature T --seed S] [--verifier ...]
                [--show N] [--json]
  inspect     A steering vector's per-layer norm and the tokens it boosts (logit lens).
                --model DIR --steering FILE [--top K] [--json]
  bench       Benchmarks. `steerd bench decode --model DIR [--batch 1,16]
                [--new-tokens 32] [--json]`; `steerd bench paper-table --model DIR
                [--task arith] [--seeds 3] [--steps N] [--prompts-per-step P]
                [--rollouts G] [--json]` (steering vs LoRA r1/r8 vs full, same RL recipe);
                `steerd bench serve [--model DIR] [--concurrency 1,8,32] [--seconds 5]
                [--new-tokens 64] [--threads N] [--max-batch 64] [--dtype ...]
                [--device ...] [--json]` (the server in-process over localhost gRPC:
                closed-loop tok/s, TTFT and inter-token latency steered vs unsteered,
                cold vs resident vector first-token cost)
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "help") == 0 || std::strcmp(argv[1], "--help") == 0 ||
      std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "serve") return steerd::RunServeCommand(args);
  if (command == "generate") return steerd::RunGenerateCommand(args);
  if (command == "logits") return steerd::RunLogitsCommand(args);
  if (command == "tokenize") return steerd::RunTokenizeCommand(args);
  if (command == "init-model") return steerd::RunInitModelCommand(args);
  if (command == "bench") return steerd::RunBenchCommand(args);
  if (command == "dataset") return steerd::RunDatasetCommand(args);
  if (command == "corpus") return steerd::RunCorpusCommand(args);
  if (command == "train") return steerd::RunTrainCommand(args);
  if (command == "eval") return steerd::RunEvalCommand(args);
  if (command == "inspect") return steerd::RunInspectCommand(args);
  std::fprintf(stderr, "error: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
