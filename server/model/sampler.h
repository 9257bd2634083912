// Token selection for a batch of sequences: greedy (temperature 0) or sampling with
// temperature, top-k and top-p. Every sequence has its own random generator seeded by
// its request, so its tokens do not depend on what else shares the batch. The batch's
// softmax runs as one tensor op; the per-row nucleus selection runs on the host over a
// candidate set, without sorting the whole vocabulary.
#ifndef STEERD_SERVER_MODEL_SAMPLER_H_
#define STEERD_SERVER_MODEL_SAMPLER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/sampling_params.h"

namespace steerd {

// INVALID_ARGUMENT naming the parameter that is out of range.
absl::Status ValidateSamplingParams(const SamplingParams& params);

// One sequence's sampling state. Not thread-safe; owned by whoever runs the sequence.
class SequenceSampler {
 public:
  explicit SequenceSampler(const SamplingParams& params);
  const SamplingParams& params() const { return params_; }
  bool greedy() const { return params_.temperature == 0.0; }
  // Draws a token from `probs` ([vocab] temperature-scaled probabilities), or -1 when
  // they are not a distribution (a NaN, or no mass at all): the caller fails the row.
  int32_t Draw(const float* probs, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> candidates_;  // Reused across steps.
};

struct SampledToken {
  int32_t id = 0;
  float logprob = 0.0f;  // log p(id) under the model's unscaled distribution.
  // False when the row's logits held a NaN or an infinity (a steering vector at a huge
  // scale, or a model that overflows): `id` and `logprob` mean nothing, and the row's
  // request must fail rather than emit them. Other rows are unaffected.
  bool finite = true;
};

// Picks one token per row of `logits` ([B, V] float32, any device) with `samplers[b]`.
// Log-probabilities are computed only when `with_logprobs` is set. A row whose logits
// are not finite comes back with `finite == false`; the call itself fails only for
// malformed arguments or a torch error.
absl::StatusOr<std::vector<SampledToken>> SampleBatch(
    const at::Tensor& logits, const std::vector<SequenceSampler*>& samplers,
    bool with_logprobs);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_SAMPLER_H_
