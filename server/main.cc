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
                [--tokenizer DIR]   (default: a byte-level tokenizer of 256 tokens)
  bench       Benchmarks. `steerd bench decode --model DIR [--batch 1,16]
                [--new-tokens 32] [--json]`
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
  if (command == "generate") return steerd::RunGenerateCommand(args);
  if (command == "logits") return steerd::RunLogitsCommand(args);
  if (command == "tokenize") return steerd::RunTokenizeCommand(args);
  if (command == "init-model") return steerd::RunInitModelCommand(args);
  if (command == "bench") return steerd::RunBenchCommand(args);
  std::fprintf(stderr, "error: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
