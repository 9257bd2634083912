#include "server/model/tokenizer.h"

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "server/model/tokenizer_text.h"
#include "server/util/status_macros.h"

namespace steerd {

using tokenizer_text::AppendUtf8Lossy;

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

absl::StatusOr<std::string> IncrementalDetokenizer::Push(int32_t id) {
  ASSIGN_OR_RETURN(const std::string bytes, tokenizer_->TokenBytes(id));
  if (skip_special_tokens_ && tokenizer_->IsSpecial(id)) return std::string();
  pending_ += bytes;
  std::string text;
  const size_t consumed = AppendUtf8Lossy(pending_, /*hold_incomplete_tail=*/true, &text);
  pending_.erase(0, consumed);
  return text;
}

std::string IncrementalDetokenizer::Finish() {
  std::string text;
  AppendUtf8Lossy(pending_, /*hold_incomplete_tail=*/false, &text);
  pending_.clear();
  return text;
}

std::string CleanUpTokenizationSpaces(absl::string_view text) {
  return absl::StrReplaceAll(text, {{" .", "."},
                                    {" ?", "?"},
                                    {" !", "!"},
                                    {" ,", ","},
                                    {" ' ", "'"},
                                    {" n't", "n't"},
                                    {" 'm", "'m"},
                                    {" 's", "'s"},
                                    {" 've", "'ve"},
                                    {" 're", "'re"}});
}

}  // namespace steerd
