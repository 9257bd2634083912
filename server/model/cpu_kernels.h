// Hand-written CPU kernels for the one case libtorch's libraries serve poorly: bf16
// products at decode time (up to a few dozen token rows against a large weight), where
// oneDNN reaches about two thirds of the machine's memory bandwidth at one row and
// two thirds of this kernel's speed at sixteen. The kernel uses AVX512-BF16 dot products, reads each weight row once for
// all token rows, and sums every output in a fixed order, so a row's result does not
// depend on which other rows share the call. Used only when the CPU supports it.
#ifndef STEERD_SERVER_MODEL_CPU_KERNELS_H_
#define STEERD_SERVER_MODEL_CPU_KERNELS_H_

#include <ATen/ATen.h>

namespace steerd {

// Token rows up to which the kernel beats oneDNN (measured; see BENCHMARKS.md).
inline constexpr int64_t kSmallBatchLinearMaxRows = 32;

// True when SmallBatchBf16Linear can compute linear(x, weight, bias): CPU with
// AVX512-BF16, bf16 contiguous tensors, at most kSmallBatchLinearMaxRows rows, no grad.
bool CanUseSmallBatchBf16Linear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias);

// y = x * weight^T + bias. x: [..., K] bf16, weight: [N, K] bf16, bias: [N] bf16 or
// undefined. Returns [..., N] bf16, each value rounded once from a float32 sum.
at::Tensor SmallBatchBf16Linear(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias);

}  // namespace steerd

#endif  // STEERD_SERVER_MODEL_CPU_KERNELS_H_
