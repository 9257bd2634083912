// Internal to the tokenizer (server/model/tokenizer.h): what splits text before BPE.
// First the added tokens: AddedTokenMatcher finds them in raw text as Hugging Face's
// AddedVocabulary does. Then the pre-tokenizer's regexes: SplitRegex wraps a PCRE2
// pattern (Hugging Face's Oniguruma patterns use the `(?!\S)` lookahead, which RE2
// cannot express), JIT-compiled and matched with PCRE2_NO_UTF_CHECK over text validated
// once per call (checking on every match makes splitting quadratic). BpeTokenizer's
// SplitText and PreTokenize, which drive both, are defined in pretokenizer.cc.
// Thread-safe after construction: matching only reads the compiled pattern and its match
// context; each caller brings its own pcre2_match_data.
#ifndef STEERD_SERVER_MODEL_PRETOKENIZER_H_
#define STEERD_SERVER_MODEL_PRETOKENIZER_H_

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/model/tokenizer_json.h"
#include "server/model/tokenizer_text.h"
#include "server/util/status_macros.h"

namespace steerd::tokenizer_internal {

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchContextDeleter {
  void operator()(pcre2_match_context* context) const { pcre2_match_context_free(context); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
using MatchData = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

// PCRE2's message for an error code.
std::string Pcre2ErrorMessage(int code);

class SplitRegex {
 public:
  // `literal` treats `pattern` as plain text (a Split pattern given as {"String": ...}).
  static absl::StatusOr<std::unique_ptr<SplitRegex>> Compile(absl::string_view pattern,
                                                             bool literal, const JsonFile& file,
                                                             absl::string_view field);

  // Finds the first match at or after `offset` in `subject`, which must be valid UTF-8
  // (checked once per Encode or PreTokenize: checking on every call makes splitting
  // quadratic).
  absl::StatusOr<bool> Find(absl::string_view subject, size_t offset, pcre2_match_data* data,
                            size_t* start, size_t* end) const {
    const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(subject.data()),
                               subject.size(), offset, PCRE2_NO_UTF_CHECK, data, context_.get());
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    // rc == 0 means the match has more groups than `data` holds; only group 0 is used.
    if (rc < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("pre-tokenizer regex failed: ", Pcre2ErrorMessage(rc)));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    *start = ovector[0];
    *end = std::max(ovector[0], ovector[1]);
    return true;
  }

 private:
  SplitRegex(std::unique_ptr<pcre2_code, CodeDeleter> code,
             std::unique_ptr<pcre2_match_context, MatchContextDeleter> context)
      : code_(std::move(code)), context_(std::move(context)) {}

  std::unique_ptr<pcre2_code, CodeDeleter> code_;
  // Read-only during matching, so shared by all threads.
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> context_;
};

// GPT-2's pattern, which a ByteLevel pre-tokenizer with use_regex applies.
inline constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// Splits text on added tokens the way Hugging Face's AddedVocabulary::find_matches
// does: leftmost-longest matches (its Aho-Corasick automaton's MatchKind), a
// single_word token skipped where a word character touches it, lstrip/rstrip
// swallowing the whitespace beside a match. A byte trie finds the same matches.
class AddedTokenMatcher {
 public:
  using EmitFn = absl::FunctionRef<absl::Status(const AddedToken* token, absl::string_view piece)>;

  // The first token added for a pattern keeps it.
  void Add(absl::string_view pattern, const AddedToken* token) {
    int32_t node = 0;
    for (char c : pattern) {
      const unsigned char byte = static_cast<unsigned char>(c);
      int32_t next = Child(node, byte);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(byte, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    if (nodes_[node].token == nullptr) nodes_[node].token = token;
    first_bytes_[static_cast<unsigned char>(pattern[0])] = true;
  }

  bool empty() const { return nodes_.size() == 1; }

  // Calls `emit` for each piece of `text` in order: an added token (with the
  // whitespace it strips) or the text between tokens (token == nullptr).
  absl::Status Split(absl::string_view text, EmitFn emit) const {
    size_t emitted = 0;  // Everything before this offset has been emitted.
    size_t search = 0;
    Match match;
    while (Find(text, search, &match)) {
      search = match.end;
      const AddedToken& token = *match.token;
      if (token.single_word && !IsSingleWord(text, match.start, match.end)) continue;
      size_t start = match.start;
      size_t stop = match.end;
      if (token.lstrip) start = std::max(WhiteSpaceBefore(text, start), emitted);
      if (token.rstrip) {
        stop = WhiteSpaceAfter(text, stop);
        // Hugging Face resumes at the match end, so a token that starts with
        // whitespace could then overlap what was stripped; resuming after it keeps
        // the pieces disjoint.
        search = stop;
      }
      if (emitted < start) RETURN_IF_ERROR(emit(nullptr, text.substr(emitted, start - emitted)));
      RETURN_IF_ERROR(emit(&token, text.substr(start, stop - start)));
      emitted = stop;
    }
    if (emitted < text.size()) RETURN_IF_ERROR(emit(nullptr, text.substr(emitted)));
    return absl::OkStatus();
  }

 private:
  struct Node {
    const AddedToken* token = nullptr;
    std::vector<std::pair<unsigned char, int32_t>> children;
  };
  struct Match {
    size_t start = 0;
    size_t end = 0;
    const AddedToken* token = nullptr;
  };

  int32_t Child(int32_t node, unsigned char byte) const {
    for (const auto& [b, child] : nodes_[node].children) {
      if (b == byte) return child;
    }
    return -1;
  }

  bool Find(absl::string_view text, size_t from, Match* match) const {
    for (size_t i = from; i < text.size(); ++i) {
      if (!first_bytes_[static_cast<unsigned char>(text[i])]) continue;
      Match longest;
      int32_t node = 0;
      for (size_t j = i; j < text.size(); ++j) {
        node = Child(node, static_cast<unsigned char>(text[j]));
        if (node < 0) break;
        if (nodes_[node].token != nullptr) longest = {i, j + 1, nodes_[node].token};
      }
      if (longest.token != nullptr) {
        *match = longest;
        return true;
      }
    }
    return false;
  }

  // Hugging Face tests `\w$` before the match and `^\w` after it.
  static bool IsSingleWord(absl::string_view text, size_t start, size_t end) {
    size_t before = start;
    if (start > 0 && tokenizer_text::IsWordChar(tokenizer_text::PreviousCodePoint(text, &before))) {
      return false;
    }
    size_t after = end;
    return end == text.size() ||
           !tokenizer_text::IsWordChar(tokenizer_text::NextCodePoint(text, &after));
  }

  static size_t WhiteSpaceBefore(absl::string_view text, size_t end) {
    while (end > 0) {
      size_t previous = end;
      if (!tokenizer_text::IsWhiteSpace(tokenizer_text::PreviousCodePoint(text, &previous))) break;
      end = previous;
    }
    return end;
  }

  static size_t WhiteSpaceAfter(absl::string_view text, size_t start) {
    while (start < text.size()) {
      size_t next = start;
      if (!tokenizer_text::IsWhiteSpace(tokenizer_text::NextCodePoint(text, &next))) break;
      start = next;
    }
    return start;
  }

  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<bool, 256> first_bytes_{};
};

// One stage of pre-tokenization: an optional prefix space, then an optional split.
struct PreTokenizerStep {
  bool add_prefix_space = false;
  std::unique_ptr<SplitRegex> regex;  // Splits with behavior "Isolated" when set.
};

}  // namespace steerd::tokenizer_internal

#endif  // STEERD_SERVER_MODEL_PRETOKENIZER_H_
