// The rules of a steering vector file (API.md "Vector file format"), written once for
// every reader: the offline CLI and the trainer (steering_file.h) and uploads
// (server/engine/vector_upload.h). A file is safetensors holding exactly one tensor,
// `steering`, F32 or BF16, of shape [num_layers, hidden_size] with finite values;
// `__metadata__`, when present, is at most kMaxSteeringMetadataBytes, its `format` is
// "steerd.steering.v1" (or "pt", which safetensors' torch writer puts in every file:
// vectors from other tools come in that way), and its `num_layers`, `hidden_size` and
// `scale` agree with the tensor and are numbers. What the file must match (a model's
// shape and fingerprint, an upload's magnitude bound) is the caller's to check.
// Torch-free; every rejection is INVALID_ARGUMENT naming what is wrong.
#ifndef STEERD_SERVER_MODEL_STEERING_FORMAT_H_
#define STEERD_SERVER_MODEL_STEERING_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/safetensors.h"

namespace steerd {

inline constexpr char kSteeringFormat[] = "steerd.steering.v1";
inline constexpr char kSteeringTensorName[] = "steering";
// Bytes of `__metadata__` keys and values together: a stored vector keeps them, so
// they are bounded like any stored field.
inline constexpr size_t kMaxSteeringMetadataBytes = 16384;

struct SteeringContents {
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  TensorView tensor;            // The stored tensor; valid while its file lives.
  std::vector<float> values;    // [num_layers * hidden_size] float32, row-major.
  std::map<std::string, std::string> metadata;
  double scale = 1.0;           // metadata "scale", when present.
};

// Checks `file` against the rules above and reads its values.
absl::StatusOr<SteeringContents> ReadSteeringContents(const SafetensorsFile& file);

// The same over bytes held in memory (an upload): an empty buffer or bytes that are
// not safetensors are INVALID_ARGUMENT too. `source` names them in errors. The returned
// file owns the bytes `contents->tensor` points into.
absl::StatusOr<std::unique_ptr<SafetensorsFile>> ParseSteeringBytes(
    std::string bytes, const std::string& source, SteeringContents* contents);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_STEERING_FORMAT_H_
