// Validation of an uploaded steering vector (Vectors.CreateVector) against the model it
// is for, and the canonical file the server stores: the upload's tensor unchanged (same
// dtype and bytes) with the metadata completed (`format`, `num_layers`, `hidden_size`,
// `model`, `model_fingerprint`). The file rules are server/model/steering_format.h's,
// shared with the offline CLI; this adds the model's: its shape and fingerprint, and
// rows no larger than kMaxSteeringToResidualRms times its residual stream. Every
// rejection names what is wrong, with the status code vectors.proto documents:
// INVALID_ARGUMENT for a malformed file, non-finite or oversized values or oversized
// metadata, FAILED_PRECONDITION for a file made for another model. Torch-free: it runs
// on the RPC thread before anything reaches the engine.
#ifndef STEERD_SERVER_ENGINE_VECTOR_UPLOAD_H_
#define STEERD_SERVER_ENGINE_VECTOR_UPLOAD_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace steerd {

// How far a vector row's RMS may exceed the residual stream it is added to. Trained
// vectors stay near the residual scale (the paper's are well below it); a thousand
// times it, even at steering.scale 100, keeps activations far from float overflow,
// while values like 3e38 would turn every logit into NaN.
inline constexpr double kMaxSteeringToResidualRms = 1000.0;

// What a vector must match: the model's name, fingerprint and shape, and the scale of
// its residual stream.
struct VectorTarget {
  std::string model;
  std::string fingerprint;
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  // [num_layers]: the model's residual RMS per layer (ResidualRms in transformer.h).
  // A row whose RMS exceeds kMaxSteeringToResidualRms times its layer's is refused.
  // Empty: no bound (tests of the file checks alone).
  std::vector<float> residual_rms;
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
