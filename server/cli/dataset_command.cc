// `steerd dataset` writes one split of a built-in task as JSONL; `steerd corpus` writes
// the mixed-mode pre-training corpus of the default model. Both are deterministic in
// their seed.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/cli/commands.h"
#include "server/train/dataset.h"
#include "server/train/tasks.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

absl::StatusOr<uint64_t> GetSeed(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(const int64_t seed, args.GetInt("seed", 0));
  if (seed < 0) return absl::InvalidArgumentError(absl::StrCat("--seed must be >= 0, got ", seed));
  return static_cast<uint64_t>(seed);
}

int64_t DefaultCount(train::Split split) {
  switch (split) {
    case train::Split::kTrain:
      return 1000;
    case train::Split::kDev:
      return 200;
    case train::Split::kTest:
      return 500;
  }
  return 0;
}

}  // namespace

absl::Status RunDatasetCommand(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(const std::string task, args.Required("task"));
  ASSIGN_OR_RETURN(const std::string split_name, args.Required("split"));
  ASSIGN_OR_RETURN(const std::string out, args.Required("out"));
  ASSIGN_OR_RETURN(const train::Split split, train::ParseSplit(split_name));
  ASSIGN_OR_RETURN(const int64_t count, args.GetInt("count", DefaultCount(split)));
  ASSIGN_OR_RETURN(const uint64_t seed, GetSeed(args));
  ASSIGN_OR_RETURN(const std::vector<train::Example> examples,
                   train::GenerateTask(task, split, count, seed));
  RETURN_IF_ERROR(train::WriteJsonl(out, examples));
  std::printf("wrote %zu %s %s examples (seed %llu) to %s\n", examples.size(), task.c_str(),
              split_name.c_str(), static_cast<unsigned long long>(seed), out.c_str());
  return absl::OkStatus();
}

absl::Status RunCorpusCommand(const ParsedFlags& args) {
  ASSIGN_OR_RETURN(const std::string out, args.Required("out"));
  train::CorpusOptions options;
  ASSIGN_OR_RETURN(options.count, args.GetInt("count", options.count));
  ASSIGN_OR_RETURN(options.seed, GetSeed(args));
  ASSIGN_OR_RETURN(options.tagged_fraction, args.GetDouble("tagged-fraction", 0.0));
  ASSIGN_OR_RETURN(const std::vector<train::Example> corpus, train::BuildCorpus(options));
  RETURN_IF_ERROR(train::WriteJsonl(out, corpus));
  std::printf("wrote %zu corpus records (seed %llu) to %s\n", corpus.size(),
              static_cast<unsigned long long>(options.seed), out.c_str());
  return absl::OkStatus();
}

}  // namespace steerd
