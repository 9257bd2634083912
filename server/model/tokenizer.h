// Byte-level BPE tokenizer compatible with Hugging Face `tokenizers` for the Llama 3
// and Qwen2 families, loaded from tokenizer.json + tokenizer_config.json: NFC
// normalizer, split pre-tokenizer regex (PCRE2, which handles the `(?!\S)` lookahead),
// BPE merges (with `ignore_merges`), added and special tokens matched in raw text, and
// byte-level decoding. IncrementalDetokenizer turns a token stream into text that never
// ends in the middle of a UTF-8 character, for streaming. Thread-safe after Load():
// all methods are const. Does not depend on libtorch.
#ifndef STEERD_SERVER_MODEL_TOKENIZER_H_
#define STEERD_SERVER_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace steerd {

class Tokenizer {
 public:
  // Reads `<dir>/tokenizer.json` and `<dir>/tokenizer_config.json` (the latter optional).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir);
  // The same from file contents; `config_json` may be empty. `source` names them in errors.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(absl::string_view tokenizer_json,
                                                             absl::string_view config_json,
                                                             absl::string_view source);
  virtual ~Tokenizer() = default;

  // Encodes UTF-8 text. Invalid UTF-8 is INVALID_ARGUMENT naming the byte offset.
  // `add_special_tokens` applies the post-processor (e.g. a BOS token) when the
  // tokenizer defines one.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                                      bool add_special_tokens = false) const = 0;
  // Decodes ids to text; bytes that do not form valid UTF-8 become U+FFFD. Ids out of
  // range are INVALID_ARGUMENT. Lossless like Hugging Face `tokenizers`: transformers'
  // clean_up_tokenization_spaces (" ." -> ".") is never applied.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                             bool skip_special_tokens = false) const = 0;
  // The raw bytes a token stands for (after byte-level decoding), for streaming.
  virtual absl::StatusOr<std::string> TokenBytes(int32_t id) const = 0;
  // The words BPE merges when encoding `text`, in order, as raw bytes: the text
  // between added tokens after normalization and pre-tokenization (added tokens are
  // left out). A BPE trainer counts these (see bpe_trainer.h), so training splits text
  // exactly as encoding will. Invalid UTF-8 is INVALID_ARGUMENT as for Encode.
  virtual absl::StatusOr<std::vector<std::string>> PreTokenize(absl::string_view text) const = 0;

  // Number of ids (base vocabulary plus added tokens; the largest id + 1).
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> TokenToId(absl::string_view token) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;

  // From tokenizer_config.json, when present.
  virtual std::optional<int32_t> bos_token_id() const = 0;
  virtual std::optional<int32_t> eos_token_id() const = 0;
  virtual const std::string& chat_template() const = 0;
  // tokenizer_config.json's clean_up_tokenization_spaces: whether transformers'
  // `decode` tidies spaces before punctuation. Decode() itself stays lossless; text
  // shown as transformers would show it goes through CleanUpTokenizationSpaces.
  virtual bool clean_up_tokenization_spaces() const = 0;
};

// transformers' clean_up_tokenization: " ." -> ".", " n't" -> "n't", and the like.
std::string CleanUpTokenizationSpaces(absl::string_view text);

// Streams text out of a sequence of ids: Push() returns the text completed by the new
// token (possibly empty while a multi-byte character is still incomplete); Finish()
// returns what is left, with an incomplete trailing character as U+FFFD. The
// concatenation of all returned pieces equals Tokenizer::Decode of all ids. One per
// stream; not thread-safe.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer* tokenizer, bool skip_special_tokens = false);
  absl::StatusOr<std::string> Push(int32_t id);
  std::string Finish();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // Bytes of an incomplete UTF-8 character.
};

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_TOKENIZER_H_
