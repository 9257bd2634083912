// Internal to the tokenizer (server/model/tokenizer.h): BpeTokenizer, the one
// Tokenizer implementation (byte-level BPE as Hugging Face `tokenizers` runs it for the
// Llama 3 and Qwen2 families), and the BPE working types (merge rules, per-Encode
// scratch, the word cache's bounds). Its methods live in three files along the
// pipeline's seams: tokenizer_json.cc builds it from tokenizer.json and
// tokenizer_config.json (Build, Parse*), pretokenizer.cc splits text into added tokens
// and words (SplitText, PreTokenize), and bpe_tokenizer.cc merges words into ids and
// decodes (Encode, MergeWord, Decode). Thread-safe after Build: every method is const;
// the word cache is guarded by cache_mu_.
#ifndef STEERD_SERVER_MODEL_BPE_TOKENIZER_H_
#define STEERD_SERVER_MODEL_BPE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "server/model/pretokenizer.h"
#include "server/model/tokenizer.h"
#include "server/model/tokenizer_json.h"
#include "server/util/status_macros.h"

namespace steerd::tokenizer_internal {

enum class TokenKind : uint8_t { kUnassigned, kVocab, kAdded, kSpecial };

struct MergeRule {
  uint32_t rank;
  int32_t merged_id;
};

inline uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Per-Encode working memory, so concurrent Encode calls share nothing mutable but the
// word cache.
struct EncodeScratch {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool removed;
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t merged_id;
  };
  MatchData match_data;
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::vector<int32_t> word_ids;
};

// Words longer than this skip the cache: they are rare and would pin memory.
inline constexpr size_t kMaxCachedWordBytes = 256;
// The cache starts over when full, so it tracks what the recent text uses.
inline constexpr size_t kMaxCachedWords = 1 << 16;

class BpeTokenizer : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Build(absl::string_view tokenizer_json,
                                                             absl::string_view config_json,
                                                             absl::string_view source);

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const override;
  absl::StatusOr<std::string> TokenBytes(int32_t id) const override {
    RETURN_IF_ERROR(CheckId(id));
    return token_bytes_[id];
  }
  absl::StatusOr<std::vector<std::string>> PreTokenize(absl::string_view text) const override;

  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }
  std::optional<int32_t> TokenToId(absl::string_view token) const override;
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && token_kinds_[id] == TokenKind::kSpecial;
  }

  std::optional<int32_t> bos_token_id() const override { return bos_token_id_; }
  std::optional<int32_t> eos_token_id() const override { return eos_token_id_; }
  const std::string& chat_template() const override { return chat_template_; }
  bool clean_up_tokenization_spaces() const override { return clean_up_tokenization_spaces_; }
  void set_chat_template(std::string chat_template) { chat_template_ = std::move(chat_template); }

 private:
  BpeTokenizer() = default;

  absl::Status ParseModel(const JsonFile& file, const Json& root);
  absl::Status ParseAddedTokens(const JsonFile& file, const Json& root);
  absl::Status ParseNormalizer(const JsonFile& file, const Json& normalizer,
                               absl::string_view path);
  absl::Status BuildAddedTokenMatchers();
  absl::Status ParsePreTokenizer(const JsonFile& file, const Json& root);
  absl::Status ParseByteLevel(const JsonFile& file, const Json& byte_level, absl::string_view path);
  absl::Status ParsePostProcessor(const JsonFile& file, const Json& processor,
                                  absl::string_view path);
  absl::Status ParseTemplate(const JsonFile& file, const Json& processor, absl::string_view path);
  absl::Status ParseDecoder(const JsonFile& file, const Json& root);
  absl::Status ParseConfig(const JsonFile& file, const Json& config);
  absl::StatusOr<std::optional<int32_t>> ConfigTokenId(const JsonFile& file, const Json& config,
                                                       absl::string_view key) const;

  std::optional<int32_t> VocabId(absl::string_view token) const;
  absl::Status CheckId(int32_t id) const;

  using AddedTokenFn = absl::FunctionRef<void(const AddedToken& token)>;
  using WordFn = absl::FunctionRef<void(absl::string_view word)>;
  // Splits valid UTF-8 `text` as encoding does, in order: each added token goes to
  // `on_token` and each pre-tokenized word (raw bytes, before BPE) to `on_word`.
  // Encode and PreTokenize share it, so a trainer sees exactly the words Encode merges.
  absl::Status SplitText(absl::string_view text, pcre2_match_data* match_data,
                         AddedTokenFn on_token, WordFn on_word) const;
  absl::Status SplitBetweenAddedTokens(absl::string_view text, pcre2_match_data* match_data,
                                       AddedTokenFn on_token, WordFn on_word) const;
  absl::Status SplitWords(absl::string_view piece, size_t step, pcre2_match_data* match_data,
                          WordFn on_word) const;
  void EncodeWord(absl::string_view word, EncodeScratch& scratch, std::vector<int32_t>* ids) const;
  void MergeWord(absl::string_view word, EncodeScratch& scratch) const;

  // Model: byte-level BPE.
  absl::flat_hash_map<std::string, int32_t> vocab_;  // Raw bytes of a token -> id.
  // Vocabulary strings outside the byte-level alphabet: no text encodes to them, but
  // TokenToId and merges still name them.
  absl::flat_hash_map<std::string, int32_t> unmapped_vocab_;
  std::array<int32_t, 256> byte_ids_{};  // -1 where the vocabulary lacks the byte.
  absl::flat_hash_map<uint64_t, MergeRule> merges_;
  bool ignore_merges_ = false;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;

  // Ids: the bytes each one decodes to and what kind of token it is.
  std::vector<std::string> token_bytes_;
  std::vector<TokenKind> token_kinds_;

  std::vector<AddedToken> added_tokens_;  // Not resized after the matchers point into it.
  absl::flat_hash_map<std::string, int32_t> added_ids_;
  AddedTokenMatcher raw_matcher_;         // Tokens with normalized = false.
  AddedTokenMatcher normalized_matcher_;  // Tokens with normalized = true.

  bool nfc_ = false;
  std::vector<PreTokenizerStep> pre_tokenizer_;

  // add_special_tokens wraps the ids in these.
  std::vector<int32_t> prefix_ids_;
  std::vector<int32_t> suffix_ids_;

  std::optional<int32_t> bos_token_id_;
  std::optional<int32_t> eos_token_id_;
  std::string chat_template_;
  bool clean_up_tokenization_spaces_ = false;

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace steerd::tokenizer_internal

#endif  // STEERD_SERVER_MODEL_BPE_TOKENIZER_H_
