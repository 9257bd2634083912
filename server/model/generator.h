// Autoregressive generation on top of Transformer: the per-sequence state machine
// (sampling, stop on eos ids or stop strings, max new tokens, streaming text that never
// splits a character or leaks the start of a stop string) and an offline batched
// generator that runs a set of requests, each with its own steering vector and
// sampling parameters, to completion in one batch. The serving engine reuses
// SequenceState for its continuous batches; the CLI, benchmarks and the trainer's
// rollouts use Generator directly.
#ifndef STEERD_SERVER_MODEL_GENERATOR_H_
#define STEERD_SERVER_MODEL_GENERATOR_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/finish_reason.h"
#include "server/model/sampler.h"
#include "server/model/tokenizer.h"
#include "server/model/transformer.h"

namespace steerd {

struct GenerationRequest {
  std::vector<int32_t> prompt;  // Token ids; at least one.
  SamplingParams sampling;
  int64_t max_new_tokens = 16;
  std::vector<std::string> stop_strings;  // Need a tokenizer.
  bool ignore_eos = false;
  bool return_logprobs = false;
  at::Tensor steering;  // [num_layers, hidden_size] or undefined for none.
  double steering_scale = 1.0;
};


struct GenerationResult {
  std::vector<int32_t> tokens;   // New tokens (an eos that ended the sequence included).
  std::vector<float> logprobs;   // One per token when requested.
  std::string text;              // Decoded new tokens, special tokens skipped, cut
                                 // before a matched stop string.
  FinishReason finish_reason = FinishReason::kNone;
};

// The ids that end a sequence: the config's eos ids and the tokenizer's eos token.
std::vector<int64_t> EosIds(const ModelConfig& config, const Tokenizer* tokenizer);

// Checks a request against a model before it is admitted: INVALID_ARGUMENT or
// OUT_OF_RANGE naming the field.
absl::Status ValidateGenerationRequest(const GenerationRequest& request,
                                       const ModelConfig& config, const Tokenizer* tokenizer);

// The error that ends a sequence whose logits were not finite at its `token_index`-th
// generated token (SampledToken::finite is false). With a steering vector it is the
// request's doing (INVALID_ARGUMENT: the vector or its scale is too large for the
// model); without one the model itself overflowed (INTERNAL).
absl::Status NonFiniteLogitsError(bool steered, int64_t token_index);

// Keeps rows `keep` (ascending batch indices) of a running batch, in that order: the
// cache's rows and the steering's ([L, B, 1, d] -> [L, |keep|, 1, d]). `steering`
// becomes undefined when no kept row is steered (`any_kept_steered` false), so an
// unsteered batch skips the additions. The one row-shrinking step of the offline
// generator and the serving engine.
absl::Status KeepBatchRows(const std::vector<int64_t>& keep, bool any_kept_steered,
                           KvCache* cache, at::Tensor* steering);
// KeepBatchRows for the steering alone (the paged cache keeps no per-row tensors).
absl::Status SelectSteeringRows(const std::vector<int64_t>& keep, bool any_kept_steered,
                                at::Tensor* steering);

// One running sequence. Not thread-safe.
class SequenceState {
 public:
  // `tokenizer` may be null (ids only: no text, no stop strings).
  SequenceState(const GenerationRequest& request, const Tokenizer* tokenizer,
                std::vector<int64_t> eos_ids);

  SequenceSampler* sampler() { return &sampler_; }
  bool finished() const { return result_.finish_reason != FinishReason::kNone; }
  const GenerationResult& result() const { return result_; }
  int64_t num_tokens() const { return prompt_tokens_ + result_.tokens.size(); }

  // Records a sampled token and returns the text that is now final (empty while a
  // character or a possible stop string is incomplete). After the last token, the
  // returned text includes everything held back.
  absl::StatusOr<std::string> Accept(const SampledToken& token);
  // Ends the sequence early (client cancel or deadline); returns held-back text.
  std::string Cancel();

 private:
  std::string Finish(FinishReason reason);
  std::string Release(bool final);

  GenerationRequest request_;
  const Tokenizer* tokenizer_;
  std::vector<int64_t> eos_ids_;
  SequenceSampler sampler_;
  int64_t prompt_tokens_;
  std::optional<IncrementalDetokenizer> detokenizer_;
  size_t max_stop_length_ = 0;
  size_t emitted_ = 0;  // Bytes of result_.text already returned.
  GenerationResult result_;
};

// Timings of one Generate() call.
struct GenerationStats {
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;   // Every step after the prefill, sampling included.
  int64_t decode_steps = 0;
  int64_t generated_tokens = 0;  // Summed over requests.
};

// Called with (request index, new text) as text becomes final.
using TextCallback = std::function<void(size_t, const std::string&)>;

class Generator {
 public:
  // `tokenizer` may be null; `lora` (may be null) applies to every row. All must
  // outlive the generator.
  Generator(const Transformer* model, const Tokenizer* tokenizer,
            const LoraAdapter* lora = nullptr);

  // Runs every request to completion in one batch (rows leave the batch as they finish).
  absl::StatusOr<std::vector<GenerationResult>> Generate(
      const std::vector<GenerationRequest>& requests, const TextCallback& on_text = nullptr,
      GenerationStats* stats = nullptr);

 private:
  const Transformer* model_;
  const Tokenizer* tokenizer_;
  const LoraAdapter* lora_;
};

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_GENERATOR_H_
