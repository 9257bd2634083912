#include "server/train/rewards.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/util/status_macros.h"

namespace steerd {
namespace train {
namespace {

constexpr absl::string_view kBoxOpen = "\\boxed{";

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool AllDigits(absl::string_view text) {
  for (char c : text) {
    if (!IsDigit(c)) return false;
  }
  return true;
}

// Whether `text[pos]` starts a thousands group: ',' then exactly three digits.
bool IsCommaGroup(absl::string_view text, size_t pos) {
  return pos + 4 <= text.size() && text[pos] == ',' && AllDigits(text.substr(pos + 1, 3)) &&
         (pos + 4 == text.size() || !IsDigit(text[pos + 4]));
}

absl::string_view StripChars(absl::string_view text, absl::string_view chars) {
  while (!text.empty() && absl::StrContains(chars, text.front())) text.remove_prefix(1);
  while (!text.empty() && absl::StrContains(chars, text.back())) text.remove_suffix(1);
  return text;
}

// The digits of an integer part, which is either plain ("1234") or grouped in
// thousands ("1,234"), or nullopt.
std::optional<std::string> IntegerDigits(absl::string_view text) {
  if (!absl::StrContains(text, ',')) {
    if (!AllDigits(text)) return std::nullopt;
    return std::string(text);
  }
  std::string digits;
  bool first = true;
  for (absl::string_view group : absl::StrSplit(text, ',')) {
    const bool ok = first ? !group.empty() && group.size() <= 3 : group.size() == 3;
    if (!ok || !AllDigits(group)) return std::nullopt;
    digits.append(group.data(), group.size());
    first = false;
  }
  return digits;
}

// The canonical decimal form of a number ("-0052.50" -> "-52.5", "-0" -> "0"), or
// nullopt when `text` does not read as one. Strings, not doubles, so that any length
// compares exactly.
std::optional<std::string> CanonicalNumber(absl::string_view text) {
  constexpr absl::string_view kPadding = " \t\n\r\f\v$";
  text = StripChars(text, kPadding);
  if (absl::ConsumeSuffix(&text, ".")) text = StripChars(text, kPadding);
  const bool negative = absl::ConsumePrefix(&text, "-");
  if (!negative) absl::ConsumePrefix(&text, "+");
  const size_t point = text.find('.');
  absl::string_view fraction;
  if (point != absl::string_view::npos) {
    fraction = text.substr(point + 1);
    text = text.substr(0, point);
    if (fraction.empty() || !AllDigits(fraction)) return std::nullopt;
  }
  if (text.empty() && fraction.empty()) return std::nullopt;
  std::optional<std::string> integer = IntegerDigits(text);
  if (!integer.has_value()) return std::nullopt;
  const size_t nonzero = integer->find_first_not_of('0');
  std::string canonical = nonzero == std::string::npos ? "0" : integer->substr(nonzero);
  while (!fraction.empty() && fraction.back() == '0') fraction.remove_suffix(1);
  if (!fraction.empty()) absl::StrAppend(&canonical, ".", fraction);
  if (negative && canonical != "0") canonical.insert(0, "-");
  return canonical;
}

std::string NormalizeText(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  if (absl::ConsumeSuffix(&text, ".")) text = absl::StripTrailingAsciiWhitespace(text);
  if (text.size() >= 2 && text.front() == '$' && text.back() == '$') {
    text = absl::StripAsciiWhitespace(text.substr(1, text.size() - 2));
  }
  std::string out;
  bool space = false;
  for (char c : text) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c))) {
      space = true;
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

absl::Status CheckFinite(double value, absl::string_view field) {
  if (std::isfinite(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " must be finite, got ", value));
}

std::string Pcre2ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

absl::StatusOr<VerifierKind> ParseVerifierKind(absl::string_view name) {
  for (VerifierKind kind :
       {VerifierKind::kBoxed, VerifierKind::kNumeric, VerifierKind::kExact, VerifierKind::kRegex}) {
    if (name == VerifierKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown verifier '", name, "' (expected boxed, numeric, exact or regex)"));
}

const char* VerifierKindName(VerifierKind kind) {
  switch (kind) {
    case VerifierKind::kBoxed:
      return "boxed";
    case VerifierKind::kNumeric:
      return "numeric";
    case VerifierKind::kExact:
      return "exact";
    case VerifierKind::kRegex:
      return "regex";
  }
  return "unknown";
}

// A compiled pattern. pcre2_code is read-only while matching, so one is shared by all
// threads; each match gets its own match data.
struct Verifier::Regex {
  struct CodeDeleter {
    void operator()(pcre2_code* code) const { pcre2_code_free(code); }
  };
  struct MatchDataDeleter {
    void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
  };

  // Group 1 of the last match, or nullopt when nothing matches or group 1 did not
  // take part in the last match. A match error (the backtracking limit) ends the
  // search with the matches found so far.
  std::optional<std::string> LastCapture(absl::string_view subject) const {
    std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
        pcre2_match_data_create_from_pattern(code.get(), /*gcontext=*/nullptr));
    if (data == nullptr) return std::nullopt;
    std::optional<std::string> last;
    size_t offset = 0;
    while (offset <= subject.size()) {
      const int rc = pcre2_match(code.get(), reinterpret_cast<PCRE2_SPTR>(subject.data()),
                                 subject.size(), offset, /*options=*/0, data.get(),
                                 /*mcontext=*/nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
      // Groups that took no part in the match are PCRE2_UNSET.
      last.reset();
      if (ovector[2] != PCRE2_UNSET) {
        last = std::string(subject.substr(ovector[2], ovector[3] - ovector[2]));
      }
      offset = ovector[1];
      if (ovector[1] <= ovector[0]) {
        // An empty match: step over one character (not into the middle of one).
        ++offset;
        while (offset < subject.size() && (subject[offset] & 0xC0) == 0x80) ++offset;
      }
    }
    return last;
  }

  std::unique_ptr<pcre2_code, CodeDeleter> code;
};

Verifier::Verifier(const RewardOptions& options, std::unique_ptr<Regex> regex)
    : options_(options), regex_(std::move(regex)) {}

Verifier::~Verifier() = default;

absl::StatusOr<std::unique_ptr<Verifier>> Verifier::Create(const RewardOptions& options) {
  RETURN_IF_ERROR(CheckFinite(options.correct_reward, "correct_reward"));
  RETURN_IF_ERROR(CheckFinite(options.wrong_reward, "wrong_reward"));
  RETURN_IF_ERROR(CheckFinite(options.format_reward, "format_reward"));
  if (options.verifier != VerifierKind::kRegex) {
    if (!options.regex.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("regex is only used by the regex verifier, not '",
                       VerifierKindName(options.verifier), "'"));
    }
    return std::unique_ptr<Verifier>(new Verifier(options, nullptr));
  }
  if (options.regex.empty()) {
    return absl::InvalidArgumentError("regex: the regex verifier needs a pattern");
  }
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  auto regex = std::make_unique<Regex>();
  // MATCH_INVALID_UTF: a completion is whatever the model sampled, which need not be
  // valid UTF-8; it is matched as far as it is valid instead of failing outright.
  regex->code.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(options.regex.data()),
                                  options.regex.size(), PCRE2_UTF | PCRE2_MATCH_INVALID_UTF,
                                  &error_code, &error_offset, /*ccontext=*/nullptr));
  if (regex->code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "regex does not compile at offset ", error_offset, ": ", Pcre2ErrorMessage(error_code)));
  }
  uint32_t groups = 0;
  pcre2_pattern_info(regex->code.get(), PCRE2_INFO_CAPTURECOUNT, &groups);
  if (groups == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("regex has no capture group; group 1 is the answer: ", options.regex));
  }
  // Where JIT is unavailable pcre2_match interprets the pattern: slower, same result.
  pcre2_jit_compile(regex->code.get(), PCRE2_JIT_COMPLETE);
  return std::unique_ptr<Verifier>(new Verifier(options, std::move(regex)));
}

std::optional<std::string> Verifier::Extract(absl::string_view completion) const {
  std::optional<std::string> answer;
  switch (options_.verifier) {
    case VerifierKind::kBoxed:
      answer = LastBoxed(completion);
      break;
    case VerifierKind::kNumeric:
      answer = LastNumber(completion);
      break;
    case VerifierKind::kExact:
      answer = std::string(absl::StripAsciiWhitespace(completion));
      break;
    case VerifierKind::kRegex:
      answer = regex_->LastCapture(completion);
      break;
  }
  if (answer.has_value() && absl::StripAsciiWhitespace(*answer).empty()) return std::nullopt;
  return answer;
}

bool Verifier::IsCorrect(absl::string_view completion, absl::string_view expected) const {
  const std::optional<std::string> answer = Extract(completion);
  return answer.has_value() && AnswersMatch(*answer, expected);
}

double Verifier::Reward(absl::string_view completion, absl::string_view expected) const {
  const std::optional<std::string> answer = Extract(completion);
  if (!answer.has_value()) return options_.wrong_reward;
  if (AnswersMatch(*answer, expected)) return options_.correct_reward;
  return options_.wrong_reward + options_.format_reward;
}

std::optional<std::string> LastBoxed(absl::string_view text) {
  std::optional<std::string> last;
  size_t box = text.find(kBoxOpen);
  while (box != absl::string_view::npos) {
    const size_t start = box + kBoxOpen.size();
    int depth = 1;
    size_t i = start;
    for (; i < text.size(); ++i) {
      if (text[i] == '\\' && i + 1 < text.size() && (text[i + 1] == '{' || text[i + 1] == '}')) {
        ++i;  // LaTeX's \{ and \} are literal braces, not grouping.
      } else if (text[i] == '{') {
        ++depth;
      } else if (text[i] == '}' && --depth == 0) {
        break;
      }
    }
    if (depth == 0) {
      last = std::string(text.substr(start, i - start));
      box = text.find(kBoxOpen, i + 1);
    } else {
      // Never closed: look for complete boxes inside it.
      box = text.find(kBoxOpen, start);
    }
  }
  return last;
}

std::optional<std::string> LastNumber(absl::string_view text) {
  std::optional<std::string> last;
  size_t i = 0;
  while (i < text.size()) {
    if (!IsDigit(text[i])) {
      ++i;
      continue;
    }
    size_t start = i;
    if (start > 0 && text[start - 1] == '-' && (start < 2 || !IsDigit(text[start - 2]))) --start;
    size_t end = i;
    while (end < text.size() && IsDigit(text[end])) ++end;
    if (end - i <= 3) {
      while (IsCommaGroup(text, end)) end += 4;
    }
    if (end + 1 < text.size() && text[end] == '.' && IsDigit(text[end + 1])) {
      ++end;
      while (end < text.size() && IsDigit(text[end])) ++end;
    }
    last = std::string(text.substr(start, end - start));
    i = end;
  }
  return last;
}

bool AnswersMatch(absl::string_view got, absl::string_view expected) {
  const std::optional<std::string> got_number = CanonicalNumber(got);
  const std::optional<std::string> expected_number = CanonicalNumber(expected);
  if (got_number.has_value() && expected_number.has_value()) {
    return *got_number == *expected_number;
  }
  return NormalizeText(got) == NormalizeText(expected);
}

}  // namespace train
}  // namespace steerd
