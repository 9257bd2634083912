// Fuzzes SafetensorsFile::FromBuffer, the validation every model file and uploaded
// vector goes through: any bytes must give an error or tensors whose every byte lies
// inside the buffer (ASan checks the reads below).
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = steerd::SafetensorsFile::FromBuffer(
      std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
  if (!file.ok()) return 0;
  // Touch the first and last byte of every tensor so an out-of-bounds view is caught.
  uint8_t sum = 0;
  for (const auto& [name, view] : (*file)->tensors()) {
    if (view.nbytes == 0) continue;
    const auto* bytes = static_cast<const uint8_t*>(view.data);
    sum ^= bytes[0] ^ bytes[view.nbytes - 1];
    if (static_cast<size_t>(view.numel()) * steerd::DTypeSize(view.dtype) != view.nbytes) {
      __builtin_trap();  // The view's size disagrees with its shape and dtype.
    }
  }
  for (const auto& [key, value] : (*file)->metadata()) sum ^= key.size() ^ value.size();
  (void)(*file)->Get("steering");
  // A volatile store keeps the reads from being optimised away.
  volatile uint8_t sink = sum;
  (void)sink;
  return 0;
}
