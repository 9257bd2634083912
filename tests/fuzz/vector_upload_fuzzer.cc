// Fuzzes ValidateVectorUpload (Vectors.CreateVector's validation of an uploaded
// safetensors file) and ReadVectorValues of what it accepts, against a small model.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/engine/vector_upload.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  steerd::VectorTarget target;
  target.model = "tiny";
  target.fingerprint = "fp-tiny";
  target.num_layers = 2;
  target.hidden_size = 4;
  auto validated = steerd::ValidateVectorUpload(
      std::string(reinterpret_cast<const char*>(data), size), target);
  if (!validated.ok()) return 0;
  // What the server stores must read back as the model's shape.
  auto values = steerd::ReadVectorValues(validated->safetensors, "stored vector");
  if (!values.ok() || values->size() != 8 || validated->layer_norms.size() != 2) {
    __builtin_trap();
  }
  return 0;
}
