#include "server/train/rewards.h"

#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace steerd {
namespace train {
namespace {

using ::testing::HasSubstr;

// A 60-digit number and the same plus one: only exact comparison tells them apart.
constexpr char kHuge[] = "123456789012345678901234567890123456789012345678901234567890";
constexpr char kHugePlusOne[] = "123456789012345678901234567890123456789012345678901234567891";

std::unique_ptr<Verifier> MakeVerifier(const RewardOptions& options) {
  absl::StatusOr<std::unique_ptr<Verifier>> verifier = Verifier::Create(options);
  EXPECT_TRUE(verifier.ok()) << verifier.status();
  return verifier.ok() ? *std::move(verifier) : nullptr;
}

std::unique_ptr<Verifier> MakeVerifier(VerifierKind kind, const std::string& regex = "") {
  RewardOptions options;
  options.verifier = kind;
  options.regex = regex;
  return MakeVerifier(options);
}

TEST(VerifierKindTest, NamesRoundTrip) {
  for (VerifierKind kind :
       {VerifierKind::kBoxed, VerifierKind::kNumeric, VerifierKind::kExact, VerifierKind::kRegex}) {
    absl::StatusOr<VerifierKind> parsed = ParseVerifierKind(VerifierKindName(kind));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kind);
  }
  absl::StatusOr<VerifierKind> bad = ParseVerifierKind("Boxed");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("boxed, numeric, exact or regex"));
}

struct ExtractCase {
  const char* text;
  std::optional<std::string> want;
};

TEST(LastBoxedTest, Table) {
  const std::vector<ExtractCase> cases = {
      {"The answer is \\boxed{52}.", "52"},
      {"\\boxed{1} then \\boxed{2}, finally \\boxed{3}", "3"},
      {"\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"},
      {"\\boxed{{a}{b{c}}}", "{a}{b{c}}"},
      {"\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"},   // LaTeX's escaped braces do not group.
      {"\\boxed{7} and then \\boxed{8", "7"},  // An unclosed last box gives nothing.
      {"\\boxed{8", std::nullopt},
      {"\\boxed{ \\boxed{9}", "9"},  // A complete box inside an unclosed one.
      {"\\boxed{\\boxed{4}}", "\\boxed{4}"},
      {"\\boxed{}", ""},
      {"\\boxed{5} \\boxed{}", ""},  // The last box wins even when empty.
      {"no box here: 52", std::nullopt},
      {"boxed{52}", std::nullopt},
      {"", std::nullopt},
  };
  for (const ExtractCase& c : cases) EXPECT_EQ(LastBoxed(c.text), c.want) << c.text;
}

TEST(LastNumberTest, Table) {
  const std::vector<ExtractCase> cases = {
      {"12+7=19, 19*3=57, 57-5=52.", "52"},
      {"It costs 1,234 dollars", "1,234"},
      {"about 1,234,567.89 units", "1,234,567.89"},
      {"1,23 is not grouped", "23"},
      {"1234,567", "567"},  // A leading group longer than three digits is not grouped.
      {"x=-5", "-5"},
      {"-7 degrees", "-7"},
      {"57-5", "5"},  // A minus after a digit is subtraction, not a sign.
      {"2.5 then 3.", "3"},
      {"no digits", std::nullopt},
      {"", std::nullopt},
      {kHuge, kHuge},
  };
  for (const ExtractCase& c : cases) EXPECT_EQ(LastNumber(c.text), c.want) << c.text;
}

struct MatchCase {
  const char* got;
  const char* expected;
  bool match;
};

TEST(AnswersMatchTest, Table) {
  const std::vector<MatchCase> cases = {
      {"52", "52", true},
      {"00052", "52", true},
      {"52.0", "52", true},
      {"52.000", "52.", true},
      {" 52 ", "52", true},
      {"$52$", "52", true},
      {"$52", "52", true},
      {"1,234", "1234", true},
      {"+7", "7", true},
      {"-0", "0", true},
      {"-0.0", "0", true},
      {".5", "0.5", true},
      {"-52", "52", false},
      {"52.01", "52", false},
      {"53", "52", false},
      {kHuge, kHuge, true},
      {kHuge, kHugePlusOne, false},
      {"000123456789012345678901234567890123456789012345678901234567890.000", kHuge, true},
      {"1,23", "123", false},  // Not a number, so compared as text.
      {"fifty-two", "Fifty-Two ", true},
      {"fifty  two", "fifty two", true},
      {"fifty-two.", "fifty-two", true},
      {"$x^2$", "x^2", true},
      {"fifty-two", "52", false},
      {"fifty-three", "fifty-two", false},
      {"", "52", false},
      {"", "", true},
  };
  for (const MatchCase& c : cases) {
    EXPECT_EQ(AnswersMatch(c.got, c.expected), c.match) << c.got << " vs " << c.expected;
    EXPECT_EQ(AnswersMatch(c.expected, c.got), c.match) << c.expected << " vs " << c.got;
  }
}

struct VerifyCase {
  const char* completion;
  const char* expected;
  std::optional<std::string> extracted;
  bool correct;
};

void CheckVerifier(const Verifier& verifier, const std::vector<VerifyCase>& cases) {
  for (const VerifyCase& c : cases) {
    EXPECT_EQ(verifier.Extract(c.completion), c.extracted) << c.completion;
    EXPECT_EQ(verifier.IsCorrect(c.completion, c.expected), c.correct) << c.completion;
  }
}

TEST(VerifierTest, Boxed) {
  std::unique_ptr<Verifier> verifier = MakeVerifier(VerifierKind::kBoxed);
  ASSERT_NE(verifier, nullptr);
  CheckVerifier(*verifier,
                {
                    {" Step by step: 12+7=19, 19*3=57, 57-5=52. \\boxed{52}", "52", "52", true},
                    {" \\boxed{52.0}", "52", "52.0", true},
                    {" \\boxed{51} no wait \\boxed{52}", "52", "52", true},
                    {" \\boxed{52} no wait \\boxed{51}", "52", "51", false},
                    {" \\boxed{52} \\boxed{51", "52", "52", true},
                    {" \\boxed{}", "52", std::nullopt, false},
                    {" \\boxed{  }", "52", std::nullopt, false},
                    {" 52", "52", std::nullopt, false},
                    {" In words: \\boxed{Fifty-Two }", "fifty-two", "Fifty-Two ", true},
                    {" \\boxed{fifty-two}", "52", "fifty-two", false},
                    {" \\boxed{-3}", "-3", "-3", true},
                    {" \\boxed{3}", "-3", "3", false},
                    {" \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}", true},
                });
  const std::string huge_box = std::string(" \\boxed{") + kHuge + "}";
  EXPECT_TRUE(verifier->IsCorrect(huge_box, kHuge));
  EXPECT_FALSE(verifier->IsCorrect(huge_box, kHugePlusOne));
}

TEST(VerifierTest, Numeric) {
  std::unique_ptr<Verifier> verifier = MakeVerifier(VerifierKind::kNumeric);
  ASSERT_NE(verifier, nullptr);
  CheckVerifier(*verifier, {
                               {"12+7=19, so 19*3=57 and 57-5=52.", "52", "52", true},
                               {"The total is 1,234.", "1234", "1,234", true},
                               {"It is -4", "-4", "-4", true},
                               {"It is 4", "-4", "4", false},
                               {"52 or maybe 53", "52", "53", false},
                               {"fifty-two", "52", std::nullopt, false},
                               {"", "52", std::nullopt, false},
                           });
  EXPECT_TRUE(verifier->IsCorrect(std::string("so ") + kHuge, kHuge));
  EXPECT_FALSE(verifier->IsCorrect(std::string("so ") + kHuge, kHugePlusOne));
}

TEST(VerifierTest, Exact) {
  std::unique_ptr<Verifier> verifier = MakeVerifier(VerifierKind::kExact);
  ASSERT_NE(verifier, nullptr);
  CheckVerifier(*verifier, {
                               {" Fifty-Two \n", "fifty-two", "Fifty-Two", true},
                               {"Paris.", "paris", "Paris.", true},
                               {"52.0", "52", "52.0", true},
                               {"the answer is 52", "52", "the answer is 52", false},
                               {"   ", "52", std::nullopt, false},
                           });
}

TEST(VerifierTest, Regex) {
  std::unique_ptr<Verifier> verifier = MakeVerifier(VerifierKind::kRegex, "Answer: *(\\S+)");
  ASSERT_NE(verifier, nullptr);
  CheckVerifier(*verifier, {
                               {"Answer: 5 ... Answer: 52", "52", "52", true},
                               {"Answer: 52 ... Answer: 5", "52", "5", false},
                               {"The answer is 52", "52", std::nullopt, false},
                               {"", "52", std::nullopt, false},
                           });
  // Group 1 of the last match, even when an earlier match set it and the last did not.
  std::unique_ptr<Verifier> optional_group = MakeVerifier(VerifierKind::kRegex, "=(\\d+)?;");
  ASSERT_NE(optional_group, nullptr);
  EXPECT_EQ(optional_group->Extract("=7; =;"), std::nullopt);
  EXPECT_EQ(optional_group->Extract("=; =7;"), "7");
  // A pattern that matches the empty string still finds the last match.
  std::unique_ptr<Verifier> empty = MakeVerifier(VerifierKind::kRegex, "(\\d*)");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->Extract("4 é 5"), std::nullopt);  // The last match is the empty one at the end.
  // Completions are sampled bytes, not always valid UTF-8.
  EXPECT_EQ(verifier->Extract("\xff\xfe Answer: 9 \xc3"), "9");
}

TEST(VerifierTest, CreateRejectsBadOptions) {
  struct Case {
    RewardOptions options;
    const char* message;
  };
  RewardOptions bad_regex;
  bad_regex.verifier = VerifierKind::kRegex;
  bad_regex.regex = "Answer: (\\d+";
  RewardOptions no_group = bad_regex;
  no_group.regex = "Answer: \\d+";
  RewardOptions no_pattern = bad_regex;
  no_pattern.regex = "";
  RewardOptions regex_elsewhere;
  regex_elsewhere.regex = "(\\d+)";
  RewardOptions infinite;
  infinite.correct_reward = std::numeric_limits<double>::infinity();
  RewardOptions nan;
  nan.format_reward = std::nan("");
  RewardOptions negative_infinity;
  negative_infinity.wrong_reward = -std::numeric_limits<double>::infinity();
  const std::vector<Case> cases = {
      {bad_regex, "regex does not compile"},
      {no_group, "regex has no capture group"},
      {no_pattern, "regex: the regex verifier needs a pattern"},
      {regex_elsewhere, "regex is only used by the regex verifier"},
      {infinite, "correct_reward must be finite"},
      {nan, "format_reward must be finite"},
      {negative_infinity, "wrong_reward must be finite"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::unique_ptr<Verifier>> verifier = Verifier::Create(c.options);
    EXPECT_EQ(verifier.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(verifier.status().message(), HasSubstr(c.message));
  }
}

TEST(VerifierTest, RewardValues) {
  struct Case {
    double format_reward;
    const char* completion;
    double want;
  };
  RewardOptions options;
  options.correct_reward = 2.5;
  options.wrong_reward = -0.5;
  const std::vector<Case> cases = {
      {0.0, " \\boxed{52}", 2.5},
      {0.0, " \\boxed{51}", -0.5},
      {0.0, " 52", -0.5},
      {0.2, " \\boxed{52}", 2.5},
      {0.2, " \\boxed{51}", -0.3},  // Wrong, but in the format: wrong_reward + format_reward.
      {0.2, " \\boxed{fifty-two}", -0.3},
      {0.2, " 52", -0.5},         // No box: no format reward.
      {0.2, " \\boxed{}", -0.5},  // An empty box is no answer.
      {0.2, " \\boxed{52", -0.5},
  };
  for (const Case& c : cases) {
    options.format_reward = c.format_reward;
    std::unique_ptr<Verifier> verifier = MakeVerifier(options);
    ASSERT_NE(verifier, nullptr);
    EXPECT_DOUBLE_EQ(verifier->Reward(c.completion, "52"), c.want)
        << c.completion << " with format_reward " << c.format_reward;
  }
}

TEST(VerifierTest, DefaultRewards) {
  std::unique_ptr<Verifier> verifier = MakeVerifier(RewardOptions());
  ASSERT_NE(verifier, nullptr);
  EXPECT_EQ(verifier->Reward(" \\boxed{7}", "7"), 1.0);
  EXPECT_EQ(verifier->Reward(" \\boxed{8}", "7"), -1.0);
  EXPECT_EQ(verifier->Reward("", "7"), -1.0);
}

}  // namespace
}  // namespace train
}  // namespace steerd
