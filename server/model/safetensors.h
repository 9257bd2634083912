// Reader and writer for the safetensors format (8-byte little-endian header length,
// a JSON header, then raw little-endian tensor data). Files are memory-mapped so
// weights can be wrapped without copying; every offset, shape and dtype in the header
// is validated against the file before any byte of data is exposed, so a truncated or
// hostile file is an error naming the file and tensor, never an out-of-bounds read.
// This module does not depend on libtorch.
#ifndef STEERD_SERVER_MODEL_SAFETENSORS_H_
#define STEERD_SERVER_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace steerd {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ... as written in safetensors headers.
absl::string_view DTypeName(DType dtype);
absl::StatusOr<DType> ParseDType(absl::string_view name);
size_t DTypeSize(DType dtype);

// A tensor inside a mapped file or buffer. `data` stays valid while the owning
// SafetensorsFile lives. It need not be aligned for the dtype (a header need not be
// padded to 8 bytes), so read elements with memcpy, not through a typed pointer.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps `path` read-only and validates its header.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates bytes held in memory (an upload). `source` names it in errors.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBuffer(std::string bytes,
                                                                     std::string source);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // NOT_FOUND naming the tensor and the file when absent.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  // The header's "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& source() const { return source_; }

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader();

  std::string source_;
  std::string owned_bytes_;       // FromBuffer only.
  void* mapping_ = nullptr;       // Open only.
  size_t mapping_size_ = 0;
  const uint8_t* bytes_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write; `data` must hold numel * DTypeSize(dtype) bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// The serialized file: header sorted by name, padded to 8 bytes, data in the same order.
absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata);

// Writes atomically: a temporary file in the same folder, fsync, then rename.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_SAFETENSORS_H_
