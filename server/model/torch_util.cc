#include "server/model/torch_util.h"

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/util/status_macros.h"

namespace steerd {

absl::StatusOr<at::ScalarType> ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF64: return at::kDouble;
    case DType::kF32: return at::kFloat;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kI64: return at::kLong;
    case DType::kI32: return at::kInt;
    case DType::kI16: return at::kShort;
    case DType::kI8: return at::kChar;
    case DType::kU8: return at::kByte;
    case DType::kBool: return at::kBool;
  }
  return absl::InvalidArgumentError("unknown dtype");
}

absl::StatusOr<DType> FromScalarType(at::ScalarType type) {
  switch (type) {
    case at::kDouble: return DType::kF64;
    case at::kFloat: return DType::kF32;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    case at::kLong: return DType::kI64;
    case at::kInt: return DType::kI32;
    case at::kShort: return DType::kI16;
    case at::kChar: return DType::kI8;
    case at::kByte: return DType::kU8;
    case at::kBool: return DType::kBool;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor dtype ", c10::toString(type), " has no safetensors name"));
  }
}

absl::StatusOr<at::Tensor> TensorFromView(const TensorView& view,
                                          std::shared_ptr<const void> owner) {
  ASSIGN_OR_RETURN(at::ScalarType type, ToScalarType(view.dtype));
  return CatchTorchErrors("wrapping tensor", [&]() -> absl::StatusOr<at::Tensor> {
    // The mapping is read-only; steerd never writes to weights, and the deleter only
    // drops the reference that keeps the mapping alive.
    return at::from_blob(const_cast<void*>(view.data), view.shape,
                         [owner](void*) mutable { owner.reset(); },
                         at::TensorOptions().dtype(type));
  });
}

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return at::Device(at::kCPU);
  if (name == "cuda") {
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(
          "--device cuda: this build of libtorch or this machine has no CUDA device");
    }
    return at::Device(at::kCUDA, 0);
  }
  if (name == "auto") return at::hasCUDA() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  return absl::InvalidArgumentError(
      absl::StrCat("--device '", name, "' is not one of auto, cpu, cuda"));
}

absl::StatusOr<at::ScalarType> ParseComputeDType(const std::string& name,
                                                 const std::string& checkpoint_dtype,
                                                 const at::Device& device) {
  if (name == "f32" || name == "float32") return at::kFloat;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  if (name == "f16" || name == "float16") {
    if (device.is_cpu()) {
      return absl::InvalidArgumentError(
          "--dtype f16 is not supported on CPU (libtorch has no CPU float16 matmul); use "
          "f32 or bf16");
    }
    return at::kHalf;
  }
  if (name == "auto") {
    if (checkpoint_dtype == "bfloat16") return at::kBFloat16;
    if (checkpoint_dtype == "float16") return device.is_cpu() ? at::kFloat : at::kHalf;
    return at::kFloat;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype '", name, "' is not one of auto, f32, bf16, f16"));
}

std::string ScalarTypeName(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "f32";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "f16";
    default: return c10::toString(type);
  }
}

int DefaultComputeThreads(int spare_cores) {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  int threads = 0;
  if (omp != nullptr && absl::SimpleAtoi(omp, &threads) && threads > 0) return threads;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - spare_cores);
}

}  // namespace steerd
