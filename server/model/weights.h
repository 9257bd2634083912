// Loads the weights of a Hugging Face model folder (model.safetensors, or shards named
// by model.safetensors.index.json) into named tensors in the compute dtype and device.
// Files are memory-mapped. On CPU there are two placements:
//  - kMapped (default): tensors point straight into the mapped file when the dtype
//    matches (zero copy, loads in a fraction of a second, pages shared with the page
//    cache and other processes).
//  - kHugePages: one anonymous arena backed by 2 MiB transparent huge pages, filled from
//    the mapping tensor by tensor (each source range is dropped from this process as
//    soon as it is copied, so the peak stays near one copy). Decode streams every weight
//    once per token, and with 4 KiB pages TLB misses cost about a fifth of that time;
//    the price is the kernel assembling huge pages at load (~2 s per GB measured here).
// Every tensor the architecture needs is checked for presence and shape, so a wrong or
// partial checkpoint fails at load with the tensor's name.
#ifndef STEERD_SERVER_MODEL_WEIGHTS_H_
#define STEERD_SERVER_MODEL_WEIGHTS_H_

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/config.h"

namespace steerd {

struct LoadedWeights {
  std::map<std::string, at::Tensor> tensors;  // Hugging Face state_dict names.
  int64_t file_bytes = 0;                     // Bytes of tensor data read from disk.
};

// The names and shapes a checkpoint with `config` must provide, in module order.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedWeightShapes(
    const ModelConfig& config);

enum class WeightPlacement { kHugePages, kMapped };

// "hugepages" or "mapped".
absl::StatusOr<WeightPlacement> ParseWeightPlacement(const std::string& name);

absl::StatusOr<LoadedWeights> LoadWeights(const std::string& model_dir,
                                          const ModelConfig& config, at::ScalarType dtype,
                                          const at::Device& device,
                                          WeightPlacement placement = WeightPlacement::kMapped);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_WEIGHTS_H_
