// Low-rank adapters (LoRA, Hu et al. 2021) on the projections of every decoder layer:
// `y = x W^T + scaling * (x A^T) B^T` with A [r, in] and B [out, r], B zero-initialised
// so a fresh adapter changes nothing. steerd uses them as the paper's baseline against
// steering vectors (the trainer's `lora` set, `down_proj` by default); one adapter
// applies to a whole batch. Files use PEFT's tensor names
// (`base_model.model.model.layers.{i}.mlp.down_proj.lora_A.weight`), so adapters are
// readable by common tools. Not thread-safe while being trained.
#ifndef STEERD_SERVER_MODEL_LORA_H_
#define STEERD_SERVER_MODEL_LORA_H_

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/config.h"

namespace steerd {

enum class LoraTarget { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kNumLoraTargets = 7;

// "q_proj" ... "down_proj" (Hugging Face module names).
const char* LoraTargetName(LoraTarget target);
absl::StatusOr<LoraTarget> ParseLoraTarget(const std::string& name);

struct LoraPair {
  at::Tensor a;  // [r, in] float32, or undefined when the projection has no adapter
  at::Tensor b;  // [out, r] float32
};

class LoraAdapter {
 public:
  struct Options {
    std::vector<LoraTarget> targets = {LoraTarget::kDown};
    int64_t rank = 8;
    double alpha = 16.0;  // scaling = alpha / rank
    uint64_t seed = 0;    // A's initialisation
  };
  // A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with a = sqrt(5)), B = 0, on
  // `device`, float32, requiring grad.
  static absl::StatusOr<LoraAdapter> Create(const ModelConfig& config, const Options& options,
                                            const at::Device& device);

  int64_t rank() const { return rank_; }
  double scaling() const { return scaling_; }
  const LoraPair& pair(int64_t layer, LoraTarget target) const {
    return layers_[layer][static_cast<int>(target)];
  }
  // x [..., in] -> scaling * (x A^T) B^T [..., out] in x's dtype; undefined without an
  // adapter on that projection.
  at::Tensor Delta(const at::Tensor& x, int64_t layer, LoraTarget target) const;

  // Whether any adapter tensor requires grad (being trained).
  bool requires_grad() const;
  // Every trainable tensor, in a fixed order.
  std::vector<at::Tensor> Parameters() const;
  int64_t num_parameters() const;

  // PEFT-named tensors plus metadata (rank, alpha, targets).
  absl::Status Save(const std::string& path) const;
  static absl::StatusOr<LoraAdapter> Load(const std::string& path, const ModelConfig& config,
                                          const at::Device& device);

 private:
  int64_t rank_ = 0;
  double scaling_ = 1.0;
  double alpha_ = 0.0;
  std::vector<LoraTarget> targets_;
  std::vector<std::array<LoraPair, kNumLoraTargets>> layers_;  // [num_layers]
};

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_LORA_H_
