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

namespace steerd {

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy; otherwise in (0, 100].
  double top_p = 1.0;        // Nucleus mass in (0, 1]; 1 = off.
  int64_t top_k = 0;         // Keep the k most likely tokens; 0 = off.
  uint64_t seed = 0;         // Seeds this sequence's generator.
};

// INVALID_ARGUMENT naming the parameter that is out of range.
absl::Status ValidateSamplingParams(const SamplingParams& params);

// One sequence's sampling state. Not thread-safe; owned by whoever runs the sequence.
class SequenceSampler {
 public:
  explicit SequenceSampler(const SamplingParams& params);
  const SamplingParams& params() const { return params_; }
  bool greedy() const { return params_.temperature == 0.0; }
  // Draws a token from `probs` ([vocab] temperature-scaled probabilities).
  int32_t Draw(const float* probs, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> candidates_;  // Reused across steps.
};

struct SampledToken {
  int32_t id = 0;
  float logprob = 0.0f;  // log p(id) under the model's unscaled distribution.
};

// Picks one token per row of `logits` ([B, V] float32, any device) with `samplers[b]`.
// Log-probabilities are computed only when `with_logprobs` is set.
absl::StatusOr<std::vector<SampledToken>> SampleBatch(
    const at::Tensor& logits, const std::vector<SequenceSampler*>& samplers,
    bool with_logprobs);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_SAMPLER_H_
