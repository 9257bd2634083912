#include "server/model/bpe_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "server/model/pretokenizer.h"
#include "server/model/tokenizer_text.h"
#include "server/util/status_macros.h"

namespace steerd::tokenizer_internal {

using tokenizer_text::AppendUtf8Lossy;

std::optional<int32_t> BpeTokenizer::VocabId(absl::string_view token) const {
  if (std::optional<std::string> bytes = tokenizer_text::ByteLevelToBytes(token)) {
    auto it = vocab_.find(*bytes);
    if (it != vocab_.end()) return it->second;
    return std::nullopt;
  }
  auto it = unmapped_vocab_.find(token);
  if (it != unmapped_vocab_.end()) return it->second;
  return std::nullopt;
}

std::optional<int32_t> BpeTokenizer::TokenToId(absl::string_view token) const {
  auto it = added_ids_.find(token);
  if (it != added_ids_.end()) return it->second;
  return VocabId(token);
}

absl::Status BpeTokenizer::CheckId(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", id, " is out of range [0, ", vocab_size(), ")"));
  }
  if (token_kinds_[id] == TokenKind::kUnassigned) {
    return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is not assigned"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(absl::string_view text,
                                                          bool add_special_tokens) const {
  RETURN_IF_ERROR(tokenizer_text::ValidateUtf8(text));
  EncodeScratch scratch;
  scratch.match_data.reset(pcre2_match_data_create(/*ovecsize=*/1, /*gcontext=*/nullptr));
  if (scratch.match_data == nullptr) return absl::ResourceExhaustedError("out of memory");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + prefix_ids_.size() + suffix_ids_.size() + 1);
  if (add_special_tokens) ids = prefix_ids_;
  RETURN_IF_ERROR(SplitText(
      text, scratch.match_data.get(), [&](const AddedToken& token) { ids.push_back(token.id); },
      [&](absl::string_view word) { EncodeWord(word, scratch, &ids); }));
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

void BpeTokenizer::EncodeWord(absl::string_view word, EncodeScratch& scratch,
                              std::vector<int32_t>* ids) const {
  if (word.size() == 1) {
    const int32_t id = byte_ids_[static_cast<unsigned char>(word[0])];
    if (id >= 0) {
      ids->push_back(id);
      return;
    }
  }
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  MergeWord(word, scratch);
  ids->insert(ids->end(), scratch.word_ids.begin(), scratch.word_ids.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() >= kMaxCachedWords) cache_.clear();
    cache_.emplace(word, scratch.word_ids);
  }
}

// Hugging Face's Word::merge_all: repeatedly apply the lowest-ranked merge (leftmost
// first on ties) through a heap of candidates over a linked list of symbols; stale
// candidates are recognised and skipped when popped.
void BpeTokenizer::MergeWord(absl::string_view word, EncodeScratch& scratch) const {
  using Candidate = EncodeScratch::Candidate;
  auto& symbols = scratch.symbols;
  symbols.clear();
  auto add_symbol = [&symbols](int32_t id) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1, false});
  };
  // A byte missing from the vocabulary becomes the unknown token (consecutive ones
  // fused when fuse_unk) or, without one, is dropped: Hugging Face's BPE::merge_word.
  bool unk_pending = false;
  for (char c : word) {
    const int32_t id = byte_ids_[static_cast<unsigned char>(c)];
    if (id >= 0) {
      if (unk_pending) add_symbol(*unk_id_);
      unk_pending = false;
      add_symbol(id);
    } else if (unk_id_.has_value()) {
      if (unk_pending && !fuse_unk_) add_symbol(*unk_id_);
      unk_pending = true;
    }
  }
  if (unk_pending) add_symbol(*unk_id_);
  if (!symbols.empty()) symbols.back().next = -1;

  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto& heap = scratch.heap;
  heap.clear();
  auto push_candidate = [&](int32_t pos, int32_t left, int32_t right) {
    auto it = merges_.find(PairKey(left, right));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, it->second.merged_id});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    push_candidate(static_cast<int32_t>(i), symbols[i].id, symbols[i + 1].id);
  }
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    EncodeScratch::Symbol& current = symbols[top.pos];
    if (current.removed || current.next < 0) continue;
    EncodeScratch::Symbol& right = symbols[current.next];
    auto it = merges_.find(PairKey(current.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    current.id = top.merged_id;
    right.removed = true;
    current.next = right.next;
    if (current.next >= 0) symbols[current.next].prev = top.pos;
    if (current.prev >= 0) push_candidate(current.prev, symbols[current.prev].id, current.id);
    if (current.next >= 0) push_candidate(top.pos, current.id, symbols[current.next].id);
  }
  scratch.word_ids.clear();
  for (const EncodeScratch::Symbol& symbol : symbols) {
    if (!symbol.removed) scratch.word_ids.push_back(symbol.id);
  }
}

absl::StatusOr<std::string> BpeTokenizer::Decode(absl::Span<const int32_t> ids,
                                                 bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    RETURN_IF_ERROR(CheckId(id));
    if (skip_special_tokens && token_kinds_[id] == TokenKind::kSpecial) continue;
    bytes += token_bytes_[id];
  }
  std::string text;
  text.reserve(bytes.size());
  AppendUtf8Lossy(bytes, /*hold_incomplete_tail=*/false, &text);
  return text;
}

}  // namespace steerd::tokenizer_internal
