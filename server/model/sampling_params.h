// A sequence's sampling parameters and the bounds every validator of them shares (the
// offline CLI, the serving API and training job specs). Torch-free, so torch-free
// validation uses the same rule as the sampler.
#ifndef STEERD_SERVER_MODEL_SAMPLING_PARAMS_H_
#define STEERD_SERVER_MODEL_SAMPLING_PARAMS_H_

#include <cstdint>

namespace steerd {

// The smallest sampling temperature other than 0 (greedy). Far below it 1/temperature
// scales logits past what float32 holds, and near it sampling is greedy in all but
// name; requests and training jobs below it are refused (their errors point to 0).
inline constexpr double kMinTemperature = 1e-3;

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy; otherwise in [kMinTemperature, 100].
  double top_p = 1.0;        // Nucleus mass in (0, 1]; 1 = off.
  int64_t top_k = 0;         // Keep the k most likely tokens; 0 = off.
  uint64_t seed = 0;         // Seeds this sequence's generator.
};

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_SAMPLING_PARAMS_H_
