// Verifiers for reasoning tasks: they pull the answer out of a model's completion
// (the last \boxed{...}, the last number, the whole text, or a regex capture) and
// compare it with the expected answer, numerically and exactly when both are numbers
// (arbitrary length, no floating point), otherwise as normalised text. Reward() turns
// the verdict into the scalar a trainer optimises. Torch-free; Verifier is immutable
// and thread-safe after Create().
#ifndef STEERD_SERVER_TRAIN_REWARDS_H_
#define STEERD_SERVER_TRAIN_REWARDS_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace steerd {
namespace train {

enum class VerifierKind {
  kBoxed,    // The content of the last complete \boxed{...}.
  kNumeric,  // The last number in the completion.
  kExact,    // The whole completion, trimmed.
  kRegex,    // Capture group 1 of the last match of a pattern.
};

// "boxed", "numeric", "exact" or "regex"; anything else is INVALID_ARGUMENT listing them.
absl::StatusOr<VerifierKind> ParseVerifierKind(absl::string_view name);
const char* VerifierKindName(VerifierKind kind);

struct RewardOptions {
  VerifierKind verifier = VerifierKind::kBoxed;
  // kRegex only (required there, rejected elsewhere): a PCRE2 pattern (UTF mode) with
  // at least one capture group; group 1 of the LAST match is the answer.
  std::string regex;
  double correct_reward = 1.0;
  double wrong_reward = -1.0;
  // Added on top of wrong_reward when the completion gives a wrong answer in the
  // verifier's format, so a model is paid for learning the format first; 0 = off.
  double format_reward = 0.0;
};

class Verifier {
 public:
  // INVALID_ARGUMENT naming the field: a regex that does not compile or has no
  // capture group, a regex for another verifier, non-finite rewards.
  static absl::StatusOr<std::unique_ptr<Verifier>> Create(const RewardOptions& options);
  ~Verifier();

  // The answer the completion gives, or nullopt when it gives none. A blank answer
  // (an empty box, a whitespace-only capture) counts as none, so it earns no
  // format_reward.
  std::optional<std::string> Extract(absl::string_view completion) const;
  bool IsCorrect(absl::string_view completion, absl::string_view expected) const;
  // correct_reward, wrong_reward + format_reward for a wrong answer, or wrong_reward
  // when there is no answer.
  double Reward(absl::string_view completion, absl::string_view expected) const;

 private:
  struct Regex;
  Verifier(const RewardOptions& options, std::unique_ptr<Regex> regex);

  RewardOptions options_;
  std::unique_ptr<Regex> regex_;  // Set for kRegex only.
};

// The content of the last complete `\boxed{...}`, nested braces balanced
// ("\boxed{\frac{1}{2}}" -> "\frac{1}{2}"); an empty box gives "". A box that is never
// closed gives no answer, so the last complete one before it (or a complete one
// inside it) is returned instead; nullopt when there is none.
std::optional<std::string> LastBoxed(absl::string_view text);

// The last integer or decimal number as written: an optional '-' (not when it
// follows a digit, as in "57-5"), digits with optional thousands commas ("1,234"),
// an optional fraction ("2.5"; the period ending "52." is not one).
std::optional<std::string> LastNumber(absl::string_view text);

// Whether two answers agree. When both read as numbers (optional sign, thousands
// commas, fraction; surrounding whitespace and '$' and one trailing '.' ignored) they
// are compared exactly by value at any length: "00052" == "52" == "52.0", "-0" == "0".
// Otherwise as text: trimmed, ASCII lower-cased, internal whitespace collapsed, one
// trailing '.' and surrounding $...$ stripped ("Fifty-Two " == "fifty-two").
bool AnswersMatch(absl::string_view got, absl::string_view expected);

}  // namespace train
}  // namespace steerd

#endif  // STEERD_SERVER_TRAIN_REWARDS_H_
