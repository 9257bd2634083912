#include "server/train/tasks.h"

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/train/rewards.h"

namespace steerd {
namespace train {
namespace {

using ::testing::HasSubstr;

std::vector<Example> Generate(absl::string_view task, Split split, int64_t count, uint64_t seed) {
  absl::StatusOr<std::vector<Example>> examples = GenerateTask(task, split, count, seed);
  EXPECT_TRUE(examples.ok()) << examples.status();
  return examples.ok() ? *examples : std::vector<Example>();
}

// The split rule as specified, written out independently of the library.
Split ExpectedSplit(absl::string_view prompt) {
  uint64_t hash = 14695981039346656037ULL;
  for (unsigned char c : prompt) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  return hash % 20 == 0 ? Split::kTest : hash % 20 == 1 ? Split::kDev : Split::kTrain;
}

// The question between "Q: " and "\nA:".
std::string Question(const Example& example) {
  absl::string_view text = example.prompt;
  EXPECT_TRUE(absl::ConsumePrefix(&text, "Q: ")) << example.prompt;
  EXPECT_TRUE(absl::ConsumeSuffix(&text, "\nA:")) << example.prompt;
  return std::string(text);
}

// A tiny recursive-descent evaluator with standard precedence, independent of the
// generator's left-to-right construction.
class Evaluator {
 public:
  explicit Evaluator(absl::string_view text) : text_(text) {}
  std::optional<int64_t> Evaluate() {
    const std::optional<int64_t> value = Sum();
    if (pos_ != text_.size()) return std::nullopt;
    return value;
  }

 private:
  std::optional<int64_t> Sum() {
    std::optional<int64_t> value = Product();
    while (value.has_value() && pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) {
      const char op = text_[pos_++];
      const std::optional<int64_t> rhs = Product();
      if (!rhs.has_value()) return std::nullopt;
      *value = op == '+' ? *value + *rhs : *value - *rhs;
    }
    return value;
  }
  std::optional<int64_t> Product() {
    std::optional<int64_t> value = Factor();
    while (value.has_value() && pos_ < text_.size() && text_[pos_] == '*') {
      ++pos_;
      const std::optional<int64_t> rhs = Factor();
      if (!rhs.has_value()) return std::nullopt;
      *value *= *rhs;
    }
    return value;
  }
  std::optional<int64_t> Factor() {
    if (pos_ < text_.size() && text_[pos_] == '(') {
      ++pos_;
      const std::optional<int64_t> value = Sum();
      if (pos_ >= text_.size() || text_[pos_] != ')') return std::nullopt;
      ++pos_;
      return value;
    }
    const size_t start = pos_;
    while (pos_ < text_.size() && absl::ascii_isdigit(text_[pos_])) ++pos_;
    int64_t value = 0;
    if (!absl::SimpleAtoi(text_.substr(start, pos_ - start), &value)) return std::nullopt;
    return value;
  }

  absl::string_view text_;
  size_t pos_ = 0;
};

TEST(EvaluatorTest, UsesStandardPrecedence) {
  EXPECT_EQ(Evaluator("(12+7)*3-5").Evaluate(), 52);
  EXPECT_EQ(Evaluator("(4*3+2)*5").Evaluate(), 70);
  EXPECT_EQ(Evaluator("2+3*4").Evaluate(), 14);
  EXPECT_EQ(Evaluator("20-3-2").Evaluate(), 15);
  EXPECT_EQ(Evaluator("2+").Evaluate(), std::nullopt);
}

// The steps of a solution "<prefix><step>, <step>. \boxed{<answer>}".
std::vector<std::string> Steps(const Example& example, absl::string_view prefix,
                               absl::string_view answer) {
  absl::string_view text = example.solution;
  EXPECT_TRUE(absl::ConsumePrefix(&text, prefix)) << example.solution;
  EXPECT_TRUE(absl::ConsumeSuffix(&text, absl::StrCat(". \\boxed{", answer, "}")))
      << example.solution;
  return absl::StrSplit(text, ", ");
}

TEST(TaskTest, ParseSplitAndFindTask) {
  for (Split split : {Split::kTrain, Split::kDev, Split::kTest}) {
    EXPECT_EQ(*ParseSplit(SplitName(split)), split);
  }
  EXPECT_EQ(ParseSplit("validation").status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<std::string> names;
  for (const TaskInfo& info : BuiltinTasks()) {
    names.push_back(info.name);
    EXPECT_FALSE(info.description.empty());
    EXPECT_EQ(info.verifier, VerifierKind::kBoxed);
    EXPECT_EQ(FindTask(info.name)->name, info.name);
  }
  EXPECT_THAT(names, ::testing::ElementsAre("arith", "arith-words", "hops"));
  absl::StatusOr<TaskInfo> missing = FindTask("gsm8k");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("arith, arith-words, hops"));
}

TEST(TaskTest, GenerateRejectsBadArguments) {
  EXPECT_EQ(GenerateTask("nope", Split::kTrain, 10, 0).status().code(),
            absl::StatusCode::kNotFound);
  for (int64_t count : {int64_t{0}, int64_t{-1}, int64_t{1000001}}) {
    absl::StatusOr<std::vector<Example>> examples = GenerateTask("arith", Split::kTrain, count, 0);
    EXPECT_EQ(examples.status().code(), absl::StatusCode::kInvalidArgument) << count;
    EXPECT_THAT(examples.status().message(), HasSubstr("between 1 and 1000000"));
  }
}

// Pinned output: the generators must give the same bytes on every machine and build.
TEST(TaskTest, GoldenSeedZero) {
  const std::vector<Example> arith = Generate("arith", Split::kTrain, 2, 0);
  const std::vector<Example> words = Generate("arith-words", Split::kTrain, 2, 0);
  const std::vector<Example> hops = Generate("hops", Split::kTest, 1, 0);
  ASSERT_EQ(arith.size(), 2);
  ASSERT_EQ(words.size(), 2);
  ASSERT_EQ(hops.size(), 1);
  EXPECT_EQ(arith[0].prompt, "Q: 3-2+23\nA:");
  EXPECT_EQ(arith[0].answer, "24");
  EXPECT_EQ(arith[0].solution, " Step by step: 3-2=1, 1+23=24. \\boxed{24}");
  EXPECT_EQ(arith[1].prompt, "Q: 13*6-8+28-16\nA:");
  EXPECT_EQ(words[0].answer, "twenty-four");
  EXPECT_EQ(words[0].solution, " In words, step by step: 3-2=1, 1+23=24. \\boxed{twenty-four}");
  EXPECT_EQ(hops[0].prompt, "Q: v=1, j=4, l=g, z=5, g=5, o=0. l?\nA:");
  EXPECT_EQ(hops[0].answer, "5");
  EXPECT_EQ(hops[0].solution, " Step by step: l=g, g=5. \\boxed{5}");
}

TEST(TaskTest, SameSeedSameOutputOtherSeedOther) {
  for (const TaskInfo& task : BuiltinTasks()) {
    const std::vector<Example> a = Generate(task.name, Split::kDev, 300, 7);
    const std::vector<Example> b = Generate(task.name, Split::kDev, 300, 7);
    const std::vector<Example> c = Generate(task.name, Split::kDev, 300, 8);
    ASSERT_EQ(a.size(), 300);
    ASSERT_EQ(c.size(), 300);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].prompt, b[i].prompt);
      EXPECT_EQ(a[i].answer, b[i].answer);
      EXPECT_EQ(a[i].solution, b[i].solution);
    }
    int same = 0;
    for (size_t i = 0; i < a.size(); ++i) same += a[i].prompt == c[i].prompt;
    EXPECT_LT(same, 30) << task.name;
    // A shorter request is a prefix of a longer one.
    const std::vector<Example> prefix = Generate(task.name, Split::kDev, 10, 7);
    for (size_t i = 0; i < prefix.size(); ++i) EXPECT_EQ(prefix[i].prompt, a[i].prompt);
  }
}

TEST(TaskTest, SplitsAreDisjointAndFollowTheHash) {
  for (const TaskInfo& task : BuiltinTasks()) {
    std::map<std::string, Split> owner;
    for (Split split : {Split::kTrain, Split::kDev, Split::kTest}) {
      const std::vector<Example> examples = Generate(task.name, split, 2000, 3);
      ASSERT_EQ(examples.size(), 2000);
      for (const Example& example : examples) {
        EXPECT_EQ(ExpectedSplit(example.prompt), split) << example.prompt;
        const auto [it, inserted] = owner.emplace(example.prompt, split);
        EXPECT_TRUE(inserted) << task.name << " repeats " << example.prompt << " in "
                              << SplitName(it->second) << " and " << SplitName(split);
      }
    }
  }
}

TEST(TaskTest, ArithIsCorrectAndInRange) {
  for (Split split : {Split::kTrain, Split::kTest}) {
    for (const Example& example : Generate("arith", split, 2000, 11)) {
      const std::string question = Question(example);
      const std::optional<int64_t> value = Evaluator(question).Evaluate();
      ASSERT_TRUE(value.has_value()) << question;
      EXPECT_EQ(example.answer, absl::StrCat(*value)) << question;
      EXPECT_EQ(question.find(' '), std::string::npos) << question;

      const std::vector<std::string> steps = Steps(example, " Step by step: ", example.answer);
      ASSERT_GE(steps.size(), 2) << example.solution;
      ASSERT_LE(steps.size(), 4) << example.solution;
      int64_t previous = -1;
      for (size_t i = 0; i < steps.size(); ++i) {
        const size_t op = steps[i].find_first_of("+-*");
        const size_t equals = steps[i].find('=');
        ASSERT_NE(op, std::string::npos) << steps[i];
        ASSERT_NE(equals, std::string::npos) << steps[i];
        int64_t lhs = 0, rhs = 0, result = 0;
        ASSERT_TRUE(absl::SimpleAtoi(steps[i].substr(0, op), &lhs)) << steps[i];
        ASSERT_TRUE(absl::SimpleAtoi(steps[i].substr(op + 1, equals - op - 1), &rhs)) << steps[i];
        ASSERT_TRUE(absl::SimpleAtoi(steps[i].substr(equals + 1), &result)) << steps[i];
        const char symbol = steps[i][op];
        EXPECT_EQ(result, symbol == '+'   ? lhs + rhs
                          : symbol == '-' ? lhs - rhs
                                          : lhs * rhs)
            << steps[i];
        if (i == 0) {
          EXPECT_GE(lhs, 2);
          EXPECT_LE(lhs, 30);
          const size_t first = question.find_first_of("0123456789");
          const size_t last = question.find_first_not_of("0123456789", first);
          EXPECT_EQ(question.substr(first, last - first), absl::StrCat(lhs)) << question;
        } else {
          EXPECT_EQ(lhs, previous) << example.solution;
        }
        EXPECT_GE(rhs, 2) << steps[i];
        EXPECT_LE(rhs, symbol == '*' ? 9 : 30) << steps[i];
        EXPECT_GE(result, 0) << steps[i];
        EXPECT_LE(result, 99) << steps[i];
        previous = result;
      }
      EXPECT_EQ(absl::StrCat(previous), example.answer);
    }
  }
}

TEST(TaskTest, ArithWordsHasTheSamePromptsInWords) {
  const std::vector<Example> digits = Generate("arith", Split::kDev, 500, 5);
  const std::vector<Example> words = Generate("arith-words", Split::kDev, 500, 5);
  ASSERT_EQ(digits.size(), words.size());
  for (size_t i = 0; i < digits.size(); ++i) {
    EXPECT_EQ(words[i].prompt, digits[i].prompt);
    int64_t value = 0;
    ASSERT_TRUE(absl::SimpleAtoi(digits[i].answer, &value));
    EXPECT_EQ(words[i].answer, NumberToWords(value));
    EXPECT_EQ(Steps(words[i], " In words, step by step: ", words[i].answer),
              Steps(digits[i], " Step by step: ", digits[i].answer));
  }
}

TEST(TaskTest, HopsAnswersFollowTheChain) {
  for (const Example& example : Generate("hops", Split::kTrain, 2000, 13)) {
    const std::string question = Question(example);
    const std::vector<std::string> parts = absl::StrSplit(question, ". ");
    ASSERT_EQ(parts.size(), 2) << question;
    ASSERT_EQ(parts[1].size(), 2) << question;
    ASSERT_EQ(parts[1][1], '?') << question;
    std::map<char, std::string> statements;  // letter -> "x=y"
    for (absl::string_view statement : absl::StrSplit(parts[0], ", ")) {
      ASSERT_EQ(statement.size(), 3) << question;
      ASSERT_EQ(statement[1], '=') << question;
      EXPECT_TRUE(statements.emplace(statement[0], std::string(statement)).second) << question;
    }
    ASSERT_EQ(statements.size(), 6) << question;
    // Every letter's lookup ends in a digit without a cycle.
    std::map<char, std::vector<std::string>> chains;
    for (const auto& [letter, statement] : statements) {
      std::vector<std::string>& chain = chains[letter];
      char at = letter;
      while (chain.size() <= 6 && !absl::ascii_isdigit(at)) {
        ASSERT_EQ(statements.count(at), 1) << question;
        chain.push_back(statements[at]);
        at = statements[at][2];
      }
      ASSERT_TRUE(absl::ascii_isdigit(at)) << question;
    }
    const std::vector<std::string>& chain = chains[parts[1][0]];
    EXPECT_GE(chain.size(), 2) << question;
    EXPECT_LE(chain.size(), 4) << question;
    EXPECT_EQ(example.answer, std::string(1, chain.back()[2]));
    EXPECT_EQ(Steps(example, " Step by step: ", example.answer), chain);
    // Distractors never lead into the chain.
    std::set<char> on_chain;
    for (const std::string& statement : chain) on_chain.insert(statement[0]);
    for (const auto& [letter, statement] : statements) {
      if (on_chain.count(letter) == 0) {
        EXPECT_EQ(on_chain.count(statement[2]), 0) << question;
      }
    }
  }
}

TEST(NumberToWordsTest, Table) {
  const std::vector<std::pair<int64_t, std::string>> cases = {
      {0, "zero"},
      {7, "seven"},
      {10, "ten"},
      {13, "thirteen"},
      {19, "nineteen"},
      {20, "twenty"},
      {40, "forty"},
      {52, "fifty-two"},
      {99, "ninety-nine"},
      {100, "one hundred"},
      {105, "one hundred five"},
      {110, "one hundred ten"},
      {342, "three hundred forty-two"},
      {999, "nine hundred ninety-nine"},
      {1000, "one thousand"},
      {2001, "two thousand one"},
      {1234567, "one million two hundred thirty-four thousand five hundred sixty-seven"},
      {-3, "minus three"},
      {std::numeric_limits<int64_t>::min(),
       "minus nine quintillion two hundred twenty-three quadrillion three hundred seventy-two "
       "trillion thirty-six billion eight hundred fifty-four million seven hundred seventy-five "
       "thousand eight hundred eight"},
  };
  for (const auto& [n, words] : cases) EXPECT_EQ(NumberToWords(n), words) << n;
}

// The answer mode of a corpus record, from its solution's opening.
std::string ModeOf(const Example& example) {
  if (absl::StartsWith(example.solution, " \\boxed{")) return "direct_digits";
  if (absl::StartsWith(example.solution, " In words: ")) return "direct_words";
  if (absl::StartsWith(example.solution, " Step by step: ")) return "steps_digits";
  if (absl::StartsWith(example.solution, " In words, step by step: ")) return "steps_words";
  return "unknown";
}

TEST(CorpusTest, MixesModesInTheirProportionsFromTrainOnly) {
  CorpusOptions options;
  options.count = 20000;
  options.seed = 1;
  absl::StatusOr<std::vector<Example>> corpus = BuildCorpus(options);
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  ASSERT_EQ(corpus->size(), 20000);
  std::map<std::string, int> modes;
  int hops = 0;
  for (const Example& example : *corpus) {
    EXPECT_EQ(ExpectedSplit(example.prompt), Split::kTrain) << example.prompt;
    const std::string mode = ModeOf(example);
    ++modes[mode];
    hops += absl::StrContains(example.prompt, "?");
    // The box holds the answer, in digits or words as the mode says.
    EXPECT_EQ(LastBoxed(example.solution), example.answer) << example.solution;
    const bool words = absl::StrContains(mode, "words");
    EXPECT_EQ(absl::ascii_isdigit(example.answer[0]), !words) << example.solution;
    if (mode == "direct_digits") {
      EXPECT_EQ(example.solution, " \\boxed{" + example.answer + "}");
    }
    if (mode == "direct_words") {
      EXPECT_EQ(example.solution, " In words: \\boxed{" + example.answer + "}");
    }
  }
  const double n = 20000.0;
  EXPECT_NEAR(modes["direct_digits"] / n, 0.55, 0.02);
  EXPECT_NEAR(modes["direct_words"] / n, 0.15, 0.02);
  EXPECT_NEAR(modes["steps_digits"] / n, 0.20, 0.02);
  EXPECT_NEAR(modes["steps_words"] / n, 0.10, 0.02);
  EXPECT_EQ(modes.count("unknown"), 0);
  EXPECT_NEAR(hops / n, 0.35, 0.02);
}

TEST(CorpusTest, StepsMatchTheTaskSolutions) {
  CorpusOptions options;
  options.count = 2000;
  options.direct_digits = 0.0;
  options.direct_words = 0.0;
  options.steps_digits = 0.5;
  options.steps_words = 0.5;
  absl::StatusOr<std::vector<Example>> corpus = BuildCorpus(options);
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  for (const Example& example : *corpus) {
    const std::string mode = ModeOf(example);
    ASSERT_TRUE(mode == "steps_digits" || mode == "steps_words") << example.solution;
    EXPECT_FALSE(Steps(example,
                       mode == "steps_digits" ? " Step by step: " : " In words, step by step: ",
                       example.answer)
                     .empty());
  }
}

TEST(CorpusTest, Deterministic) {
  CorpusOptions options;
  options.count = 500;
  const std::vector<Example> a = *BuildCorpus(options);
  const std::vector<Example> b = *BuildCorpus(options);
  options.seed = 1;
  const std::vector<Example> c = *BuildCorpus(options);
  int same = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].solution, b[i].solution);
    same += a[i].prompt == c[i].prompt;
  }
  EXPECT_LT(same, 50);
}

TEST(CorpusTest, ValidatesOptions) {
  struct Case {
    CorpusOptions options;
    const char* message;
  };
  std::vector<Case> cases(7);
  cases[0].options.count = 0;
  cases[0].message = "count must be between 1 and 1000000";
  cases[1].options.count = 1000001;
  cases[1].message = "count must be between 1 and 1000000";
  cases[2].options.hops_fraction = 1.5;
  cases[2].message = "hops_fraction must be in [0, 1]";
  cases[3].options.direct_words = -0.05;
  cases[3].options.direct_digits = 0.75;
  cases[3].message = "direct_words must be in [0, 1]";
  cases[4].options.steps_words = std::numeric_limits<double>::quiet_NaN();
  cases[4].message = "steps_words must be in [0, 1]";
  cases[5].options.direct_digits = 0.5;
  cases[5].message = "must sum to 1, got 0.95";
  cases[6].options.steps_digits = 0.3;
  cases[6].message = "must sum to 1, got 1.1";
  for (const Case& c : cases) {
    absl::StatusOr<std::vector<Example>> corpus = BuildCorpus(c.options);
    EXPECT_EQ(corpus.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(corpus.status().message(), HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace train
}  // namespace steerd

namespace steerd::train {
namespace {

// Tagged prompts name the mode their solution is in; untagged corpora are unchanged.
TEST(CorpusTagsTest, TagsNameTheSolutionsMode) {
  CorpusOptions options;
  options.count = 4000;
  options.tagged_fraction = 0.4;
  auto tagged = BuildCorpus(options);
  ASSERT_TRUE(tagged.ok()) << tagged.status();
  options.tagged_fraction = 0.0;
  auto plain = BuildCorpus(options);
  ASSERT_TRUE(plain.ok());
  int64_t with_tag = 0;
  for (size_t i = 0; i < tagged->size(); ++i) {
    const Example& e = (*tagged)[i];
    EXPECT_EQ(e.solution, (*plain)[i].solution);
    const bool steps = e.solution.find("step by step") != std::string::npos ||
                       e.solution.find("Step by step") != std::string::npos;
    const bool words = e.solution.find("In words") != std::string::npos;
    const std::string tag = ModeTag(steps, words);
    if (e.prompt == (*plain)[i].prompt) continue;
    ++with_tag;
    EXPECT_EQ(e.prompt, (*plain)[i].prompt.substr(0, (*plain)[i].prompt.size() - 3) + tag + "\nA:");
  }
  EXPECT_NEAR(static_cast<double>(with_tag) / tagged->size(), 0.4, 0.03);
  options.tagged_fraction = 1.5;
  EXPECT_EQ(BuildCorpus(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace steerd::train
