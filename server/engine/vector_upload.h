// Validation of an uploaded steering vector (Vectors.CreateVector) against the model it
// is for, and the canonical file the server stores: the upload's tensor unchanged
// (same dtype and bytes) with the metadata completed (`format`, `num_layers`,
// `hidden_size`, `model`, `model_fingerprint`). Every rejection names what is wrong,
// with the status code vectors.proto documents: INVALID_ARGUMENT for a malformed file
// or non-finite values, FAILED_PRECONDITION for a file made for another model. Torch-free:
// it runs on the RPC thread before anything reaches the engine.
#ifndef STEERD_SERVER_ENGINE_VECTOR_UPLOAD_H_
#define STEERD_SERVER_ENGINE_VECTOR_UPLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace steerd {

// What a vector must match: the model's name, fingerprint and shape.
struct VectorTarget {
  std::string model;
  std::string fingerprint;
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
};

struct ValidatedVector {
  std::string safetensors;         // The canonical file to store.
  std::string dtype;               // "F32" or "BF16".
  std::string sha256;              // Lowercase hex of `safetensors`.
  std::vector<float> layer_norms;  // L2 norm of each row, in float32.
};

absl::StatusOr<ValidatedVector> ValidateVectorUpload(std::string bytes,
                                                     const VectorTarget& target);

// The tensor of a stored (already validated) vector file as float32, row-major
// [num_layers * hidden_size].
absl::StatusOr<std::vector<float>> ReadVectorValues(std::string bytes, const std::string& source);

}  // namespace steerd

#endif  // STEERD_SERVER_ENGINE_VECTOR_UPLOAD_H_
