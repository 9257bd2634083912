// Steering vector files (API.md "Vector file format") as tensors: loading them (with the
// rules of steering_format.h, the same an upload is held to), matching them against a
// model (its shape and fingerprint, so a vector for another model is a
// FAILED_PRECONDITION rather than silently wrong output) and writing them.
#ifndef STEERD_SERVER_MODEL_STEERING_FILE_H_
#define STEERD_SERVER_MODEL_STEERING_FILE_H_

#include <ATen/ATen.h>

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "server/model/config.h"
#include "server/model/steering_format.h"

namespace steerd {

struct SteeringFile {
  at::Tensor vector;  // [num_layers, hidden_size] float32, CPU
  std::map<std::string, std::string> metadata;
  double scale = 1.0;  // metadata "scale", when present
};

// What a vector must match to be applied to a model: architecture, layers, width.
std::string ModelFingerprint(const ModelConfig& config);

absl::StatusOr<SteeringFile> LoadSteeringFile(const std::string& path);
// The same over bytes held in memory (an upload); `source` names them in errors.
absl::StatusOr<SteeringFile> ParseSteeringFile(std::string bytes, std::string source);

// FAILED_PRECONDITION when the vector's shape, or a fingerprint in its metadata,
// does not match `config`.
absl::Status CheckSteeringMatchesModel(const SteeringFile& file, const ModelConfig& config);

// Serialises `vector` ([L, d], any float dtype; stored as F32) with the standard
// metadata plus `extra_metadata`.
absl::StatusOr<std::string> SerializeSteeringFile(
    const at::Tensor& vector, const ModelConfig& config, const std::string& model_name,
    const std::map<std::string, std::string>& extra_metadata);
absl::Status SaveSteeringFile(const std::string& path, const at::Tensor& vector,
                              const ModelConfig& config, const std::string& model_name,
                              const std::map<std::string, std::string>& extra_metadata);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_STEERING_FILE_H_
