#include "server/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/model/cpu_kernels.h"
#include "server/model/torch_util.h"

namespace steerd {

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0 || p.temperature > 100.0 ||
      (p.temperature > 0.0 && p.temperature < kMinTemperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature ", p.temperature,
                                                   " must be 0 (greedy) or in [",
                                                   kMinTemperature, ", 100]"));
  }
  if (!std::isfinite(p.top_p) || p.top_p <= 0.0 || p.top_p > 1.0) {
    return absl::InvalidArgumentError(absl::StrCat("top_p ", p.top_p, " must be in (0, 1]"));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k ", p.top_k, " must be >= 0 (0 = off)"));
  }
  return absl::OkStatus();
}

SequenceSampler::SequenceSampler(const SamplingParams& params)
    : params_(params), rng_(params.seed) {}

int32_t SequenceSampler::Draw(const float* probs, int64_t vocab) {
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const double u = uniform(rng_);
  const bool use_top_k = params_.top_k > 0 && params_.top_k < vocab;
  const bool use_top_p = params_.top_p < 1.0;
  if (!use_top_k && !use_top_p) {
    // Inverse CDF over the whole vocabulary.
    double total = 0.0;
    for (int64_t i = 0; i < vocab; ++i) total += probs[i];
    if (!std::isfinite(total) || total <= 0.0) return -1;  // A NaN, or no mass.
    const double target = u * total;
    double cumulative = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      cumulative += probs[i];
      if (cumulative > target) return static_cast<int32_t>(i);
    }
    return static_cast<int32_t>(vocab - 1);
  }

  auto by_prob = [probs](int32_t a, int32_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  };
  // Candidates: every token above a threshold, lowering it until the candidates hold
  // the nucleus (their mass reaches top_p) and at least top_k tokens. The nucleus is a
  // prefix of the tokens sorted by probability, so it lies inside such a set.
  const int64_t want_k = use_top_k ? params_.top_k : 1;
  for (double threshold : {1e-3, 1e-6, -1.0}) {
    candidates_.clear();
    double mass = 0.0;
    float all_mass = 0.0f;  // Over every token: a NaN anywhere makes it NaN.
    for (int64_t i = 0; i < vocab; ++i) {
      all_mass += probs[i];
      if (probs[i] > threshold) {
        candidates_.push_back(static_cast<int32_t>(i));
        mass += probs[i];
      }
    }
    // Comparisons with NaN are false, so a NaN row would leave no candidate at all.
    if (!std::isfinite(all_mass) || !(all_mass > 0.0f)) return -1;
    if (threshold < 0 ||
        (static_cast<int64_t>(candidates_.size()) >= want_k && mass >= params_.top_p)) {
      break;
    }
  }
  std::sort(candidates_.begin(), candidates_.end(), by_prob);
  if (use_top_k && static_cast<int64_t>(candidates_.size()) > params_.top_k) {
    candidates_.resize(params_.top_k);
  }
  if (use_top_p) {
    // Keep the smallest prefix whose mass reaches top_p (of the top-k mass when both
    // are set, as Hugging Face applies top-k before renormalising for top-p).
    double kept_total = 0.0;
    for (int32_t id : candidates_) kept_total += probs[id];
    double cumulative = 0.0;
    size_t keep = 0;
    while (keep < candidates_.size()) {
      cumulative += probs[candidates_[keep++]];
      if (cumulative >= params_.top_p * kept_total) break;
    }
    candidates_.resize(std::max<size_t>(keep, 1));
  }
  double total = 0.0;
  for (int32_t id : candidates_) total += probs[id];
  const double target = u * total;
  double cumulative = 0.0;
  for (int32_t id : candidates_) {
    cumulative += probs[id];
    if (cumulative > target) return id;
  }
  return candidates_.empty() ? -1 : candidates_.back();
}

absl::StatusOr<std::vector<SampledToken>> SampleBatch(
    const at::Tensor& logits, const std::vector<SequenceSampler*>& samplers,
    bool with_logprobs) {
  if (!logits.defined() || logits.dim() != 2 ||
      logits.size(0) != static_cast<int64_t>(samplers.size())) {
    return absl::InvalidArgumentError("SampleBatch: logits must be [batch, vocab] with one "
                                      "sampler per row");
  }
  return CatchTorchErrors("sampling", [&]() -> absl::StatusOr<std::vector<SampledToken>> {
    const int64_t B = logits.size(0), V = logits.size(1);
    std::vector<SampledToken> out(B);
    std::vector<int64_t> sampled_rows;
    std::vector<double> inverse_temperatures;
    for (int64_t b = 0; b < B; ++b) {
      if (!samplers[b]->greedy()) {
        sampled_rows.push_back(b);
        inverse_temperatures.push_back(1.0 / samplers[b]->params().temperature);
      }
    }
    if (static_cast<int64_t>(sampled_rows.size()) < B) {
      // The argmax finds the first NaN when there is one and +inf when there is one,
      // so the logit it picks is finite exactly when the row is.
      if (CanUseF32ArgmaxRows(logits)) {
        const std::vector<int64_t> ids = F32ArgmaxRows(logits);
        const float* data = logits.data_ptr<float>();
        for (int64_t b = 0; b < B; ++b) {
          out[b].id = static_cast<int32_t>(ids[b]);
          out[b].finite = std::isfinite(data[b * V + ids[b]]);
        }
      } else {
        const at::Tensor argmax = logits.argmax(-1, /*keepdim=*/true);  // [B, 1]
        const at::Tensor best =
            logits.gather(1, argmax).squeeze(1).to(at::kCPU, at::kFloat);  // [B]
        const at::Tensor ids_cpu = argmax.squeeze(1).to(at::kCPU);         // [B]
        const int64_t* ids = ids_cpu.data_ptr<int64_t>();
        const float* values = best.data_ptr<float>();
        for (int64_t b = 0; b < B; ++b) {
          out[b].id = static_cast<int32_t>(ids[b]);
          out[b].finite = std::isfinite(values[b]);
        }
      }
    }
    if (!sampled_rows.empty()) {
      const auto long_opts = at::TensorOptions().dtype(at::kLong);
      at::Tensor rows = at::tensor(sampled_rows, long_opts).to(logits.device());
      at::Tensor scale = at::tensor(inverse_temperatures, at::TensorOptions().dtype(at::kDouble))
                             .to(logits.device(), at::kFloat)
                             .unsqueeze(1);
      at::Tensor probs =
          at::softmax(logits.index_select(0, rows) * scale, -1).to(at::kCPU).contiguous();
      const float* data = probs.data_ptr<float>();
      for (size_t i = 0; i < sampled_rows.size(); ++i) {
        const int64_t b = sampled_rows[i];
        const int32_t id = samplers[b]->Draw(data + i * V, V);
        out[b].id = std::max(id, 0);
        out[b].finite = id >= 0;
      }
    }
    if (with_logprobs) {
      std::vector<int64_t> chosen(B);
      for (int64_t b = 0; b < B; ++b) chosen[b] = out[b].id;
      at::Tensor index = at::tensor(chosen, at::TensorOptions().dtype(at::kLong))
                             .to(logits.device())
                             .unsqueeze(1);
      at::Tensor logprobs =
          at::log_softmax(logits, -1).gather(1, index).squeeze(1).to(at::kCPU).contiguous();
      const float* lp = logprobs.data_ptr<float>();
      for (int64_t b = 0; b < B; ++b) {
        out[b].logprob = lp[b];
        // A finite row can still give -inf for a token of zero probability, never NaN.
        if (std::isnan(lp[b])) out[b].finite = false;
      }
    }
    return out;
  });
}

}  // namespace steerd
