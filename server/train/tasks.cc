#include "server/train/tasks.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace train {
namespace {

constexpr int64_t kMaxCount = 1000000;
// Consecutive candidates without a new problem of the split after which the split
// counts as exhausted. The test split takes 5% of candidates, so a split with
// problems left fails this with probability below 0.95^200000 (0 in practice).
constexpr int64_t kMaxMisses = 200000;

using Rng = std::mt19937_64;

// Uniform in [lo, hi] (hi >= lo) by rejection: unbiased and, unlike
// std::uniform_int_distribution, the same on every standard library.
int64_t UniformInt(Rng* rng, int64_t lo, int64_t hi) {
  const uint64_t range = static_cast<uint64_t>(hi - lo) + 1;
  const uint64_t threshold = (0 - range) % range;  // 2^64 mod range.
  uint64_t x = (*rng)();
  while (x < threshold) x = (*rng)();
  return lo + static_cast<int64_t>(x % range);
}

// Uniform in [0, 1) from the top 53 bits.
double UniformDouble(Rng* rng) { return static_cast<double>((*rng)() >> 11) * 0x1.0p-53; }

uint64_t Fnv1a64(absl::string_view text) {
  uint64_t hash = 14695981039346656037ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  return hash;
}

Split SplitOf(absl::string_view prompt) {
  switch (Fnv1a64(prompt) % 20) {
    case 0:
      return Split::kTest;
    case 1:
      return Split::kDev;
    default:
      return Split::kTrain;
  }
}

// A generated problem before it is written in an answer mode.
struct Problem {
  std::string prompt;
  std::vector<std::string> steps;  // "12+7=19", or "c=b" for hops.
  int64_t answer = 0;
};

Problem ArithProblem(Rng* rng) {
  int64_t value = UniformInt(rng, 2, 30);
  const int64_t ops = UniformInt(rng, 2, 4);
  std::string expression = absl::StrCat(value);
  bool additive = false;  // Whether `expression` has a top-level + or -.
  Problem problem;
  for (int64_t i = 0; i < ops; ++i) {
    // Operations that keep the value in [0, 99]; at least one always does.
    std::vector<char> feasible;
    if (value <= 97) feasible.push_back('+');
    if (value >= 2) feasible.push_back('-');
    if (value <= 49) feasible.push_back('*');
    const char op = feasible[UniformInt(rng, 0, static_cast<int64_t>(feasible.size()) - 1)];
    int64_t operand = 0;
    int64_t next = 0;
    switch (op) {
      case '+':
        operand = UniformInt(rng, 2, std::min<int64_t>(30, 99 - value));
        next = value + operand;
        break;
      case '-':
        operand = UniformInt(rng, 2, std::min<int64_t>(30, value));
        next = value - operand;
        break;
      default:
        operand = UniformInt(rng, 2, value == 0 ? 9 : std::min<int64_t>(9, 99 / value));
        next = value * operand;
        break;
    }
    // Parenthesise so that standard precedence evaluates left to right.
    if (op == '*' && additive) expression = absl::StrCat("(", expression, ")");
    additive = op != '*';
    const std::string op_text(1, op);
    absl::StrAppend(&expression, op_text, operand);
    problem.steps.push_back(absl::StrCat(value, op_text, operand, "=", next));
    value = next;
  }
  problem.prompt = absl::StrCat("Q: ", expression, "\nA:");
  problem.answer = value;
  return problem;
}

Problem HopsProblem(Rng* rng) {
  constexpr int kLetters = 6;
  std::string alphabet = "abcdefghijklmnopqrstuvwxyz";
  // A partial Fisher-Yates shuffle: the first kLetters are distinct uniform letters.
  for (int i = 0; i < kLetters; ++i) {
    std::swap(alphabet[i], alphabet[UniformInt(rng, i, 25)]);
  }
  auto letter = [&alphabet](int64_t i) { return std::string(1, alphabet[i]); };
  // The chain is letters 0..hops-1: letter 0 holds a digit, each next letter the one
  // before it; the query is the last.
  const int64_t hops = UniformInt(rng, 2, 4);
  Problem problem;
  problem.answer = UniformInt(rng, 0, 9);
  std::vector<std::string> statements = {absl::StrCat(letter(0), "=", problem.answer)};
  for (int64_t i = 1; i < hops; ++i) {
    statements.push_back(absl::StrCat(letter(i), "=", letter(i - 1)));
  }
  problem.steps.assign(statements.rbegin(), statements.rend());
  // Distractors hold a digit or an earlier distractor, so every lookup ends in a digit
  // without a cycle and none leads into the chain.
  for (int64_t i = hops; i < kLetters; ++i) {
    const bool digit = i == hops || UniformInt(rng, 0, 1) == 0;
    statements.push_back(absl::StrCat(
        letter(i), "=",
        digit ? absl::StrCat(UniformInt(rng, 0, 9)) : letter(UniformInt(rng, hops, i - 1))));
  }
  for (int64_t i = kLetters - 1; i > 0; --i) {
    std::swap(statements[i], statements[UniformInt(rng, 0, i)]);
  }
  problem.prompt =
      absl::StrCat("Q: ", absl::StrJoin(statements, ", "), ". ", letter(hops - 1), "?\nA:");
  return problem;
}

enum class Mode { kDirectDigits, kDirectWords, kStepsDigits, kStepsWords };

Example MakeExample(Problem problem, Mode mode) {
  const bool words = mode == Mode::kDirectWords || mode == Mode::kStepsWords;
  std::string answer = words ? NumberToWords(problem.answer) : absl::StrCat(problem.answer);
  std::string solution;
  switch (mode) {
    case Mode::kDirectDigits:
      solution = " ";
      break;
    case Mode::kDirectWords:
      solution = " In words: ";
      break;
    case Mode::kStepsDigits:
      solution = absl::StrCat(" Step by step: ", absl::StrJoin(problem.steps, ", "), ". ");
      break;
    case Mode::kStepsWords:
      solution =
          absl::StrCat(" In words, step by step: ", absl::StrJoin(problem.steps, ", "), ". ");
      break;
  }
  absl::StrAppend(&solution, "\\boxed{", answer, "}");
  return Example{std::move(problem.prompt), std::move(answer), std::move(solution)};
}

struct TaskSpec {
  TaskInfo info;
  Problem (*generate)(Rng*);
  Mode mode;
};

const std::vector<TaskSpec>& TaskSpecs() {
  static const auto* specs = new std::vector<TaskSpec>{
      {{"arith",
        "2-4 operations (+ - *) on integers up to 99, left to right with standard precedence; "
        "answer in digits",
        VerifierKind::kBoxed},
       ArithProblem,
       Mode::kStepsDigits},
      {{"arith-words", "the arith problems, answered in English words", VerifierKind::kBoxed},
       ArithProblem,
       Mode::kStepsWords},
      {{"hops", "multi-hop lookup: follow a 2-4 letter chain among 6 assignments to its digit",
        VerifierKind::kBoxed},
       HopsProblem,
       Mode::kStepsDigits},
  };
  return *specs;
}

absl::StatusOr<const TaskSpec*> FindSpec(absl::string_view name) {
  std::vector<std::string> names;
  for (const TaskSpec& spec : TaskSpecs()) {
    if (spec.info.name == name) return &spec;
    names.push_back(spec.info.name);
  }
  return absl::NotFoundError(
      absl::StrCat("unknown task '", name, "' (known: ", absl::StrJoin(names, ", "), ")"));
}

absl::Status CheckCount(int64_t count) {
  if (count >= 1 && count <= kMaxCount) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("count must be between 1 and ", kMaxCount, ", got ", count));
}

absl::Status CheckFraction(double value, absl::string_view field) {
  if (value >= 0.0 && value <= 1.0) return absl::OkStatus();  // False for NaN too.
  return absl::InvalidArgumentError(absl::StrCat(field, " must be in [0, 1], got ", value));
}

// Words for 1..999.
std::string BelowThousand(int64_t n) {
  static constexpr const char* kOnes[] = {
      "zero",     "one",     "two",     "three",     "four",     "five",    "six",
      "seven",    "eight",   "nine",    "ten",       "eleven",   "twelve",  "thirteen",
      "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
  static constexpr const char* kTens[] = {"",      "",      "twenty",  "thirty", "forty",
                                          "fifty", "sixty", "seventy", "eighty", "ninety"};
  std::string words;
  if (n >= 100) {
    words = absl::StrCat(kOnes[n / 100], " hundred");
    n %= 100;
    if (n == 0) return words;
    words += " ";
  }
  if (n < 20) return absl::StrCat(words, kOnes[n]);
  absl::StrAppend(&words, kTens[n / 10]);
  if (n % 10 != 0) absl::StrAppend(&words, "-", kOnes[n % 10]);
  return words;
}

}  // namespace

absl::StatusOr<Split> ParseSplit(absl::string_view name) {
  for (Split split : {Split::kTrain, Split::kDev, Split::kTest}) {
    if (name == SplitName(split)) return split;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown split '", name, "' (expected train, dev or test)"));
}

const char* SplitName(Split split) {
  switch (split) {
    case Split::kTrain:
      return "train";
    case Split::kDev:
      return "dev";
    case Split::kTest:
      return "test";
  }
  return "unknown";
}

const std::vector<TaskInfo>& BuiltinTasks() {
  static const auto* tasks = [] {
    auto* infos = new std::vector<TaskInfo>();
    for (const TaskSpec& spec : TaskSpecs()) infos->push_back(spec.info);
    return infos;
  }();
  return *tasks;
}

absl::StatusOr<TaskInfo> FindTask(absl::string_view name) {
  ASSIGN_OR_RETURN(const TaskSpec* spec, FindSpec(name));
  return spec->info;
}

absl::StatusOr<std::vector<Example>> GenerateTask(absl::string_view task, Split split,
                                                  int64_t count, uint64_t seed) {
  ASSIGN_OR_RETURN(const TaskSpec* spec, FindSpec(task));
  RETURN_IF_ERROR(CheckCount(count));
  Rng rng(seed);
  absl::flat_hash_set<std::string> seen;
  std::vector<Example> examples;
  examples.reserve(count);
  int64_t misses = 0;
  while (static_cast<int64_t>(examples.size()) < count) {
    Problem problem = spec->generate(&rng);
    if (SplitOf(problem.prompt) != split || !seen.insert(problem.prompt).second) {
      if (++misses == kMaxMisses) {
        return absl::OutOfRangeError(absl::StrCat(task, ": found only ", examples.size(),
                                                  " distinct ", SplitName(split),
                                                  " problems; ask for fewer than ", count));
      }
      continue;
    }
    misses = 0;
    examples.push_back(MakeExample(std::move(problem), spec->mode));
  }
  return examples;
}

std::string NumberToWords(int64_t n) {
  if (n == 0) return "zero";
  static constexpr const char* kScales[] = {"",          " thousand",    " million",    " billion",
                                            " trillion", " quadrillion", " quintillion"};
  // Unsigned, so that the magnitude of INT64_MIN fits.
  uint64_t magnitude = n < 0 ? 0 - static_cast<uint64_t>(n) : static_cast<uint64_t>(n);
  std::vector<std::string> groups;  // Least significant first.
  for (int scale = 0; magnitude > 0; ++scale, magnitude /= 1000) {
    const int64_t group = static_cast<int64_t>(magnitude % 1000);
    if (group != 0) groups.push_back(absl::StrCat(BelowThousand(group), kScales[scale]));
  }
  std::reverse(groups.begin(), groups.end());
  return absl::StrCat(n < 0 ? "minus " : "", absl::StrJoin(groups, " "));
}

const char* ModeTag(bool steps, bool words) {
  if (steps) return words ? " (steps, in words)" : " (show the steps)";
  return words ? " (in words)" : " (just the answer)";
}

absl::StatusOr<std::vector<Example>> BuildCorpus(const CorpusOptions& options) {
  RETURN_IF_ERROR(CheckCount(options.count));
  RETURN_IF_ERROR(CheckFraction(options.hops_fraction, "hops_fraction"));
  RETURN_IF_ERROR(CheckFraction(options.direct_digits, "direct_digits"));
  RETURN_IF_ERROR(CheckFraction(options.direct_words, "direct_words"));
  RETURN_IF_ERROR(CheckFraction(options.steps_digits, "steps_digits"));
  RETURN_IF_ERROR(CheckFraction(options.steps_words, "steps_words"));
  RETURN_IF_ERROR(CheckFraction(options.tagged_fraction, "tagged_fraction"));
  const std::pair<double, Mode> modes[] = {{options.direct_digits, Mode::kDirectDigits},
                                           {options.direct_words, Mode::kDirectWords},
                                           {options.steps_digits, Mode::kStepsDigits},
                                           {options.steps_words, Mode::kStepsWords}};
  double total = 0.0;
  for (const auto& [probability, mode] : modes) total += probability;
  if (std::abs(total - 1.0) > 1e-6) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the mode probabilities (direct_digits, direct_words, steps_digits, steps_words) must "
        "sum to 1, got ",
        total));
  }
  Rng rng(options.seed);
  // Tags draw from their own stream, so an untagged corpus is the same as before.
  Rng tag_rng(options.seed ^ 0x7A66ED5EEDULL);
  std::vector<Example> corpus;
  corpus.reserve(options.count);
  for (int64_t i = 0; i < options.count; ++i) {
    const bool hops = UniformDouble(&rng) < options.hops_fraction;
    Problem problem;
    do {
      problem = hops ? HopsProblem(&rng) : ArithProblem(&rng);
    } while (SplitOf(problem.prompt) != Split::kTrain);
    // The last mode with a chance catches the rounding left over from the sum.
    double draw = UniformDouble(&rng);
    Mode chosen = Mode::kDirectDigits;
    for (const auto& [probability, mode] : modes) {
      if (probability <= 0.0) continue;
      chosen = mode;
      if (draw < probability) break;
      draw -= probability;
    }
    Example example = MakeExample(std::move(problem), chosen);
    if (options.tagged_fraction > 0.0 && UniformDouble(&tag_rng) < options.tagged_fraction) {
      const bool steps = chosen == Mode::kStepsDigits || chosen == Mode::kStepsWords;
      const bool words = chosen == Mode::kDirectWords || chosen == Mode::kStepsWords;
      const size_t at = example.prompt.rfind("\nA:");
      example.prompt.insert(at, ModeTag(steps, words));
    }
    corpus.push_back(std::move(example));
  }
  return corpus;
}

}  // namespace train
}  // namespace steerd
