// Loads the weights of a Hugging Face model folder (model.safetensors, or shards named
// by model.safetensors.index.json) into named tensors in the compute dtype and device.
// When the file's dtype already matches on CPU, tensors point straight into the
// memory-mapped file (no copy, and pages are shared with the OS page cache); otherwise
// they are converted once. Every tensor the architecture needs is checked for presence
// and shape, so a wrong or partial checkpoint fails at load with the tensor's name.
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

absl::StatusOr<LoadedWeights> LoadWeights(const std::string& model_dir,
                                          const ModelConfig& config, at::ScalarType dtype,
                                          const at::Device& device);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_WEIGHTS_H_
