// Small bridges between steerd's torch-free types and libtorch: safetensors dtypes to
// ScalarTypes, zero-copy tensors over mapped file data, run-time device and dtype
// selection from flags ("auto|cpu|cuda", "auto|f32|bf16"), the default thread count, and
// the one place where
// c10::Error is turned into an absl::Status. Included only by torch translation units.
#ifndef STEERD_SERVER_MODEL_TORCH_UTIL_H_
#define STEERD_SERVER_MODEL_TORCH_UTIL_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/model/safetensors.h"

namespace steerd {

absl::StatusOr<at::ScalarType> ToScalarType(DType dtype);
absl::StatusOr<DType> FromScalarType(at::ScalarType type);

// Wraps a mapped tensor without copying; `owner` keeps the mapping alive for as long
// as the returned tensor (or any view of it) lives.
absl::StatusOr<at::Tensor> TensorFromView(const TensorView& view,
                                          std::shared_ptr<const void> owner);

// "auto" picks CUDA when this libtorch build and machine have it.
absl::StatusOr<at::Device> ParseDevice(const std::string& name);

// Chooses the compute dtype. "auto" follows the checkpoint's torch_dtype where the
// device computes it natively (float16 on CPU falls back to float32, which libtorch
// 1.13 cannot multiply on CPU).
absl::StatusOr<at::ScalarType> ParseComputeDType(const std::string& name,
                                                 const std::string& checkpoint_dtype,
                                                 const at::Device& device);

std::string ScalarTypeName(at::ScalarType type);  // "f32", "bf16", "f16"

// The CPU compute threads of a model whose --threads is 0: OMP_NUM_THREADS when it is a
// positive number (libtorch's own convention; scripts/sanitize.sh thread sets 1, since
// TSan cannot see libgomp's barriers), else every core less `spare_cores`, at least one.
int DefaultComputeThreads(int spare_cores);

// Runs `fn`, turning a libtorch exception into INTERNAL with `context` in the message.
template <typename Fn>
auto CatchTorchErrors(const char* context, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return absl::InternalError(std::string(context) + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return absl::InternalError(std::string(context) + ": " + e.what());
  }
}

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_TORCH_UTIL_H_
