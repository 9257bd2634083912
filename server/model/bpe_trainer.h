// Trains a byte-level BPE tokenizer on a text corpus, so `steerd init-model` can give a
// small model a vocabulary fitted to its task instead of one token per byte. Texts are
// split into words exactly as Tokenizer::Encode will split them (Llama 3's pre-tokenizer:
// its split regex, with numbers in chunks of 1-3 digits, then GPT-2's byte-to-character
// mapping), and the result is a complete Hugging Face tokenizer.json in Llama 3's layout
// that Tokenizer and Hugging Face `tokenizers` both load. Deterministic: the same texts
// and options give the same bytes. Stateless and thread-safe.
#ifndef STEERD_SERVER_MODEL_BPE_TRAINER_H_
#define STEERD_SERVER_MODEL_BPE_TRAINER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace steerd {

struct BpeTrainerOptions {
  // Total ids: the 256 byte tokens, one per merge, and the special tokens.
  int32_t vocab_size = 512;
  // Added tokens, marked special, with the ids after the BPE vocabulary. Text that
  // contains one is split around it, in training as in encoding.
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  // A pair seen fewer times is never merged: training stops early, and the tokenizer
  // has fewer than vocab_size ids, rather than learn merges from noise.
  int64_t min_frequency = 2;
};

// Learns merges on `texts` by repeatedly merging the most frequent adjacent pair of
// tokens within words (ties go to the lexicographically smallest pair of token strings)
// and returns the tokenizer.json text. INVALID_ARGUMENT for no texts, invalid UTF-8
// (naming the text's index), empty or repeated special tokens, or a vocab_size below
// 256 plus the special tokens.
absl::StatusOr<std::string> TrainByteLevelBpe(const std::vector<std::string>& texts,
                                              const BpeTrainerOptions& options);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_BPE_TRAINER_H_
