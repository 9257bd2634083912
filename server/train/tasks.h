// Built-in reasoning tasks with seeded generators, small enough for a tiny model to
// learn: `arith` (2-4 operations on small integers, answered in digits), `arith-words`
// (the same problems answered in English words) and `hops` (multi-hop variable
// lookup). Output is byte-identical on every machine for the same arguments (our own
// integer sampling on std::mt19937_64; std's distributions are implementation-defined),
// and the train/dev/test splits are disjoint by construction: a problem's split is a
// hash of its prompt. BuildCorpus mixes answer modes (direct or step by step, digits or
// words) under the same prompts, to pre-train the default model. Torch-free; all
// functions are stateless and thread-safe.
#ifndef STEERD_SERVER_TRAIN_TASKS_H_
#define STEERD_SERVER_TRAIN_TASKS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/train/rewards.h"

namespace steerd {
namespace train {

struct Example {
  std::string prompt;    // "Q: (12+7)*3-5\nA:"
  std::string answer;    // "52": what the verifier compares against.
  std::string solution;  // A reference completion; may be empty.
};

enum class Split { kTrain, kDev, kTest };

// "train", "dev" or "test".
absl::StatusOr<Split> ParseSplit(absl::string_view name);
const char* SplitName(Split split);

struct TaskInfo {
  std::string name;
  std::string description;
  VerifierKind verifier;
};

// arith, arith-words, hops.
const std::vector<TaskInfo>& BuiltinTasks();
// NOT_FOUND listing the known names.
absl::StatusOr<TaskInfo> FindTask(absl::string_view name);

// `count` distinct problems (1 to 1,000,000) of `split`. arith and arith-words give the
// same prompts for the same seed and split. OUT_OF_RANGE when the split has fewer
// distinct problems than `count`.
absl::StatusOr<std::vector<Example>> GenerateTask(absl::string_view task, Split split,
                                                  int64_t count, uint64_t seed);

// English words for any int64: "zero", "nineteen", "fifty-two", "one hundred five",
// "minus three", "two thousand one".
std::string NumberToWords(int64_t n);

struct CorpusOptions {
  int64_t count = 100000;  // Records, 1 to 1,000,000.
  uint64_t seed = 0;
  double hops_fraction = 0.35;  // The rest are arith.
  // Answer-mode probabilities; they must sum to 1.
  double direct_digits = 0.55;  // " \boxed{52}"
  double direct_words = 0.15;   // " In words: \boxed{fifty-two}"
  double steps_digits = 0.20;   // The arith/hops reference solution.
  double steps_words = 0.10;    // The arith-words style solution, for hops too.
  // Share of records whose prompt also names the mode ("Q: 3+4 (show the steps)\nA:").
  // The model then represents the mode as a feature of its residual stream, which a
  // steering vector can write when the plain prompt leaves the mode to the default.
  double tagged_fraction = 0.0;
};

// The instruction a tagged corpus prompt carries for each mode, e.g. " (show the steps)".
const char* ModeTag(bool steps, bool words);

// Records drawn from the train split only (a prompt may repeat across records), each
// with `solution` the completion in its mode and `answer` that mode's answer.
// INVALID_ARGUMENT for a count out of range or fractions outside [0, 1] or not summing
// to 1.
absl::StatusOr<std::vector<Example>> BuildCorpus(const CorpusOptions& options);

}  // namespace train
}  // namespace steerd

#endif  // STEERD_SERVER_TRAIN_TASKS_H_
