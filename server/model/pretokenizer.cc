#include "server/model/pretokenizer.h"

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/model/bpe_tokenizer.h"
#include "server/model/tokenizer_json.h"
#include "server/model/tokenizer_text.h"
#include "server/util/status_macros.h"

namespace steerd::tokenizer_internal {

namespace {

// PCRE2's Unicode `\s` also matches U+180E, which left White_Space in Unicode 6.3;
// Oniguruma's (and Rust's) `\s` is exactly White_Space. Naming the property keeps the
// two engines' splits identical; it works inside character classes too.
std::string SpellOutWhiteSpaceClasses(absl::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '\\' || i + 1 == pattern.size()) {
      out.push_back(pattern[i]);
      continue;
    }
    const char escaped = pattern[++i];
    if (escaped == 's') {
      out += "\\p{White_Space}";
    } else if (escaped == 'S') {
      out += "\\P{White_Space}";
    } else if (escaped == 'Q') {
      // \Q...\E quotes its text literally: copy it untouched.
      const size_t close = pattern.find("\\E", i + 1);
      const size_t stop = close == absl::string_view::npos ? pattern.size() : close + 2;
      out.append(pattern.data() + i - 1, stop - (i - 1));
      i = stop - 1;
    } else {
      out.push_back('\\');
      out.push_back(escaped);
    }
  }
  return out;
}

}  // namespace

std::string Pcre2ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

absl::StatusOr<std::unique_ptr<SplitRegex>> SplitRegex::Compile(absl::string_view pattern,
                                                               bool literal,
                                                               const JsonFile& file,
                                                               absl::string_view field) {
  // PCRE2_LITERAL admits PCRE2_UTF but not PCRE2_UCP.
  const std::string source = literal ? std::string(pattern) : SpellOutWhiteSpaceClasses(pattern);
  const uint32_t options = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  std::unique_ptr<pcre2_code, CodeDeleter> code(
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), options,
                    &error_code, &error_offset, /*ccontext=*/nullptr));
  if (code == nullptr) {
    return file.Error(field, absl::StrCat("regex does not compile at offset ", error_offset, ": ",
                                          Pcre2ErrorMessage(error_code)));
  }
  // Where JIT is unavailable pcre2_match interprets the pattern: slower, same result.
  pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> context(
      pcre2_match_context_create(/*gcontext=*/nullptr));
  if (context == nullptr) return absl::ResourceExhaustedError("out of memory for PCRE2");
  // The default limit (10M backtracking steps) fails a 10 MB run of spaces, which
  // `\s*[\r\n]+` scans in linear time; the patterns tokenizers use never blow up.
  pcre2_set_match_limit(context.get(), std::numeric_limits<uint32_t>::max());
  return std::unique_ptr<SplitRegex>(new SplitRegex(std::move(code), std::move(context)));
}


absl::StatusOr<std::vector<std::string>> BpeTokenizer::PreTokenize(absl::string_view text) const {
  RETURN_IF_ERROR(tokenizer_text::ValidateUtf8(text));
  MatchData match_data(pcre2_match_data_create(/*ovecsize=*/1, /*gcontext=*/nullptr));
  if (match_data == nullptr) return absl::ResourceExhaustedError("out of memory");
  std::vector<std::string> words;
  RETURN_IF_ERROR(SplitText(
      text, match_data.get(), [](const AddedToken&) {},
      [&words](absl::string_view word) { words.emplace_back(word); }));
  return words;
}

absl::Status BpeTokenizer::SplitText(absl::string_view text, pcre2_match_data* match_data,
                                     AddedTokenFn on_token, WordFn on_word) const {
  return raw_matcher_.Split(
      text, [&](const AddedToken* token, absl::string_view piece) -> absl::Status {
        if (token != nullptr) {
          on_token(*token);
          return absl::OkStatus();
        }
        return SplitBetweenAddedTokens(piece, match_data, on_token, on_word);
      });
}

absl::Status BpeTokenizer::SplitBetweenAddedTokens(absl::string_view text,
                                                   pcre2_match_data* match_data,
                                                   AddedTokenFn on_token, WordFn on_word) const {
  std::string normalized;
  if (nfc_ && !tokenizer_text::IsAscii(text)) {
    RETURN_IF_ERROR(tokenizer_text::NormalizeNfc(text, &normalized));
    text = normalized;
  }
  if (normalized_matcher_.empty()) return SplitWords(text, 0, match_data, on_word);
  return normalized_matcher_.Split(
      text, [&](const AddedToken* token, absl::string_view piece) -> absl::Status {
        if (token != nullptr) {
          on_token(*token);
          return absl::OkStatus();
        }
        return SplitWords(piece, 0, match_data, on_word);
      });
}

absl::Status BpeTokenizer::SplitWords(absl::string_view piece, size_t step,
                                      pcre2_match_data* match_data, WordFn on_word) const {
  // Hugging Face drops empty pieces before any later step sees them.
  if (piece.empty()) return absl::OkStatus();
  if (step == pre_tokenizer_.size()) {
    on_word(piece);
    return absl::OkStatus();
  }
  const PreTokenizerStep& stage = pre_tokenizer_[step];
  std::string prefixed;
  if (stage.add_prefix_space && piece[0] != ' ') {
    prefixed = absl::StrCat(" ", piece);
    piece = prefixed;
  }
  if (stage.regex == nullptr) return SplitWords(piece, step + 1, match_data, on_word);
  // Behavior "Isolated": every match and every gap between matches is a piece.
  size_t emitted = 0;
  size_t offset = 0;
  while (offset < piece.size()) {
    size_t start = 0;
    size_t end = 0;
    ASSIGN_OR_RETURN(const bool found, stage.regex->Find(piece, offset, match_data, &start, &end));
    if (!found) break;
    if (start == end) {
      // An empty match splits nothing; search again one character later, as
      // Oniguruma's iterator does.
      offset = start;
      if (offset < piece.size()) tokenizer_text::NextCodePoint(piece, &offset);
      continue;
    }
    if (emitted < start) {
      RETURN_IF_ERROR(
          SplitWords(piece.substr(emitted, start - emitted), step + 1, match_data, on_word));
    }
    RETURN_IF_ERROR(SplitWords(piece.substr(start, end - start), step + 1, match_data, on_word));
    emitted = offset = end;
  }
  return SplitWords(piece.substr(emitted), step + 1, match_data, on_word);
}

}  // namespace steerd::tokenizer_internal
